"""The class kit (issue 28): python -m tools.handout --kit DIR writes a folder where students write
the paper's stages and a grader checks them. The grader runs in the kit as a student runs it, one
exercise at a time, in a subprocess; so do the kit's train.py and the project's."""

from __future__ import annotations

import ast
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

import numpy as np
import pytest
import torch

from tools import handout

from conftest import ROOT, TINY_FLAGS, write_scene

EXERCISES = handout.EXERCISES
GRADER = (ROOT / "tools" / "kit_grader.py").read_text(encoding="utf-8")
TESTS = re.findall(r"^def (test_\w+)", GRADER, re.MULTILINE)
# The easy wrong answers of issue 28, each patched into the teacher's file in a kit:
# (exercise, the teacher's code, the mistake, what the grader says).
MISTAKES = {
    "transposed rotation": ("projection", "cam = (flat - t[:, None, :]) @ R ",
                            "cam = (flat - t[:, None, :]) @ R.transpose(1, 2) ",
                            "world_to_camera: point"),
    "u and v swapped": ("projection", "return xy * K.diagonal()[:2] + K[:2, 2], z",
                        "return (xy * K.diagonal()[:2] + K[:2, 2]).flip(-1), z",
                        "u and v are exchanged"),
    "softmax over the wrong axis": ("occlusion", "torch.softmax(logits[:, 0].float(), dim=1)",
                                    "torch.softmax(logits[:, 0].float(), dim=2)",
                                    "not 1: the softmax runs over the depth planes"),
    "Z and 1 − Z exchanged": ("gru", "return (1 - Z) * H + Z * S, Z",
                              "return Z * H + (1 - Z) * S, Z", "Z and 1 − Z are exchanged"),
}


def make_kit(folder: Path, *flags: str) -> Path:
    handout.main(["--kit", str(folder), *flags])
    return folder


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> Path:
    """A kit as the teacher writes it: every exercise a stub."""
    return make_kit(tmp_path_factory.mktemp("class") / "kit")


@pytest.fixture(scope="module")
def some_stages(tmp_path_factory) -> Path:
    """A kit of exercises 3 and 5 only: the others keep the teacher's bodies."""
    return make_kit(tmp_path_factory.mktemp("class") / "kit", "--stages", "gru,occlusion")


@pytest.fixture(scope="module")
def teacher_kit(kit, tmp_path_factory) -> Path:
    """The kit with the project's deepvoxels.py copied back in."""
    folder = tmp_path_factory.mktemp("class") / "teacher-kit"
    shutil.copytree(kit, folder)
    shutil.copy(ROOT / "deepvoxels.py", folder)
    return folder


def run(folder: Path, *command: str) -> subprocess.CompletedProcess:
    """A command run in `folder` as a student runs it there: only that folder on the path, no
    bytecode written into it, one thread (the sizes are tiny; a busy machine stalls more)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {
        "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *command], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=120)


def grade(folder: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    """pytest in the kit, and each selected test's outcome (PASSED or FAILED) by name."""
    done = run(folder, "-m", "pytest", "-p", "no:cacheprovider", "-rA", *args)
    outcomes = {name: outcome for outcome, name in re.findall(
        r"^(PASSED|FAILED|ERROR) test_exercises\.py::(\w+)", done.stdout, re.MULTILINE)}
    return done, outcomes


def exercise_tests(name: str) -> list[str]:
    """The grader's tests of one exercise: those `pytest -k <name>` must select."""
    return [test for test in TESTS if test.startswith(f"test_{name}_")]


def body(tree: ast.Module, lines: list[str], qualname: str) -> tuple[int, int]:
    """Line range [first, end) of a function's body below its docstring, or below its signature
    with the comment lines before the first statement (written out here, not taken from handout:
    this is what the kit is checked against)."""
    *owner, name = qualname.split(".")
    scope = (next(n for n in tree.body if getattr(n, "name", None) == owner[0]).body if owner
             else tree.body)
    function = next(n for n in scope if isinstance(n, ast.FunctionDef) and n.name == name)
    top = function.body[0]
    first = top.end_lineno + 1 if ast.get_docstring(function) is not None else top.lineno
    while lines[first - 2].lstrip().startswith("#"):
        first -= 1
    return first, function.end_lineno + 1


def comments(lines: list[str]) -> list[str]:
    """The comments of some lines of code, in order (tokenize: a # inside a string is none)."""
    text = "".join(line + "\n" for line in lines)
    return [t.string for t in tokenize.generate_tokens(io.StringIO(text).readline)
            if t.type == tokenize.COMMENT]


# ── What the kit holds ──────────────────────────────────────────────────────────────────────

def test_the_kit_holds_what_a_student_needs_and_nothing_that_gives_an_answer_away(kit):
    files = {str(p.relative_to(kit)) for p in kit.rglob("*") if p.is_file()}
    assert files == {"deepvoxels.py", "train.py", "render.py", "tutorial-handout.ipynb",
                     "test_exercises.py", "reference.npz", "EXERCISES.md", "pytest.ini",
                     *(f"scenes/{p.name}" for p in (ROOT / "scenes").iterdir()
                       if p.is_file() and p.suffix != ".pyc")}
    notebook = json.loads((kit / "tutorial-handout.ipynb").read_text())
    code = "".join(cell["source"] for cell in notebook["cells"] if cell["cell_type"] == "code")
    assert "SOLUTION" not in code
    assert "x_cam = pose[:3, :3].T" not in code
    assert not any(cell.get("outputs") for cell in notebook["cells"])
    # no line of code of the teacher's exercise bodies anywhere in the kit
    teacher = ROOT / "deepvoxels.py"
    tree, lines = ast.parse(teacher.read_text()), teacher.read_text().splitlines()
    bodies = {n for exercise in EXERCISES for name in exercise.functions
              for n in range(*body(tree, lines, name))}
    code_of = lambda numbers: {lines[n - 1].split("#")[0].strip() for n in numbers}
    answers = code_of(bodies) - code_of(set(range(1, len(lines) + 1)) - bodies) - {""}
    assert len(answers) > 30
    for path in kit.rglob("*"):
        if path.suffix in (".py", ".md", ".ini", ".ipynb"):
            text = path.read_text()
            assert not [line for line in answers if line in text], path
    # the reference holds numbers only (and the sizes, as JSON)
    reference = np.load(kit / "reference.npz", allow_pickle=False)
    assert all(reference[k].dtype.kind in "fiub" for k in reference.files if k != "config")
    assert json.loads(str(reference["config"]))["grid_size"] == 8
    # EXERCISES.md: the grading commands in the order of the exercises, then how to train
    text = (kit / "EXERCISES.md").read_text()
    where = [text.index(f"- Grade: `pytest -k {e.name}`") for e in EXERCISES]
    assert where == sorted(where)
    assert text.index("python train.py --data ./cube --minutes 3") > where[-1]
    assert "Sec. 3.3" in text.split("## 5.")[1]
    assert "Read first: `IntegrationGRU.__init__`" in text


def test_the_kits_deepvoxels_is_the_projects_with_stubs_that_keep_every_comment(kit):
    teacher_text = (ROOT / "deepvoxels.py").read_text()
    kit_text = (kit / "deepvoxels.py").read_text()
    teacher, mine = ast.parse(teacher_text), ast.parse(kit_text)
    teacher_lines, kit_lines = teacher_text.splitlines(), kit_text.splitlines()
    assert max(len(line) for line in kit_lines) <= 100
    cut_teacher, cut_kit = set(), set()
    for exercise in EXERCISES:
        for name in exercise.functions:
            (a, b) = body(teacher, teacher_lines, name)
            (c, d) = body(mine, kit_lines, name)
            cut_teacher |= set(range(a, b))
            cut_kit |= set(range(c, d))
            stub = kit_lines[c - 1:d - 1]
            # the comments of the body, in order (those after code too), then one raise
            assert comments(stub) == comments(teacher_lines[a - 1:b - 1]), name
            assert stub[-1].strip().startswith(
                f'raise Unfinished("exercise {exercise.number} ({exercise.name}): {name} ')
            assert all(line.strip().startswith("#") for line in stub[:-1])
    equations = comments(kit_lines)
    assert "# H' = (1 − Z)∘H + Z∘S" in equations
    assert "# u = fx x/z + cx, v = fy y/z + cy" in equations
    unfinished = next(n for n in mine.body if getattr(n, "name", None) == "Unfinished")
    cut_kit |= set(range(unfinished.lineno - 2, unfinished.end_lineno + 1))   # with 2 blank lines
    # everything else, signatures and docstrings included, exactly as the project has it
    assert ([line for n, line in enumerate(teacher_lines, 1) if n not in cut_teacher]
            == [line for n, line in enumerate(kit_lines, 1) if n not in cut_kit])


# ── The grader ──────────────────────────────────────────────────────────────────────────────

@pytest.mark.parametrize("exercise", EXERCISES, ids=lambda e: e.name)
def test_a_stub_fails_its_grader_with_the_exercises_name(kit, exercise):
    done, outcomes = grade(kit, "-k", exercise.name)
    assert done.returncode == 1
    # the exercise's own tests, each failed
    assert outcomes == dict.fromkeys(exercise_tests(exercise.name), "FAILED")
    assert len(outcomes) >= 2
    said = re.findall(rf"^exercise {exercise.number} \({exercise.name}\): \S+ is not written yet",
                      done.stdout, re.MULTILINE)
    assert len(said) == len(outcomes)
    assert "Traceback" not in done.stdout
    assert "torch" not in done.stdout


def test_a_kit_of_some_stages_keeps_the_teachers_other_bodies_and_they_pass(some_stages):
    done, outcomes = grade(some_stages)
    assert outcomes == {test: "FAILED" if test.startswith(("test_gru_", "test_occlusion_"))
                        else "PASSED" for test in TESTS}
    assert "exercise 3 (gru): IntegrationGRU.forward is not written yet" in done.stdout
    text = (some_stages / "EXERCISES.md").read_text()
    assert [e.number for e in EXERCISES if f"## {e.number}." in text] == [3, 5]
    assert "Exercises 1 (projection), 2 (lifting), 4 (view_volume) are written" in text


def test_the_teachers_file_copied_back_passes_every_grader(teacher_kit):
    done, outcomes = grade(teacher_kit)
    assert done.returncode == 0, done.stdout
    assert outcomes == dict.fromkeys(TESTS, "PASSED")
    assert len(TESTS) == 15
    # every test belongs to one exercise, and -k <exercise> selects exactly its own
    assert sum(len(exercise_tests(e.name)) for e in EXERCISES) == len(TESTS)


@pytest.mark.parametrize("mistake", MISTAKES)
def test_an_easy_mistake_fails_its_grader(teacher_kit, tmp_path, mistake):
    exercise, right, wrong, message = MISTAKES[mistake]
    folder = shutil.copytree(teacher_kit, tmp_path / "kit")
    source = (folder / "deepvoxels.py").read_text()
    assert source.count(right) == 1
    (folder / "deepvoxels.py").write_text(source.replace(right, wrong))
    done, outcomes = grade(folder, "-k", exercise)
    assert "FAILED" in outcomes.values()
    assert message in done.stdout
    assert "Traceback" not in done.stdout


# ── Training in the kit ─────────────────────────────────────────────────────────────────────

TRAIN = [*TINY_FLAGS, "--minutes", "0", "--iters", "3", "--log_every", "0", "--precision", "fp32"]


def test_train_stops_in_one_line_naming_the_first_unfinished_exercise(kit, some_stages,
                                                                       tmp_path):
    scene = write_scene(tmp_path / "scene")
    for folder, line in ((kit, "exercise 1 (projection): world_to_camera is not written yet"),
                         (some_stages, "exercise 3 (gru): IntegrationGRU.forward is not written "
                                       "yet")):
        done = run(folder, "train.py", "--data", str(scene), "--out", str(tmp_path / "run"),
                   *TRAIN)
        assert done.returncode == 1
        assert done.stderr == f"error: {line}\n"


def test_the_teachers_file_copied_back_trains_as_the_project_at_the_same_seed(teacher_kit,
                                                                              tmp_path):
    scene = write_scene(tmp_path / "scene")
    runs = {}
    for name, folder in (("kit", teacher_kit), ("project", ROOT)):
        done = run(folder, "train.py", "--data", str(scene), "--out", str(tmp_path / name),
                   *TRAIN)
        assert done.returncode == 0, done.stderr
        runs[name] = (re.findall(r"loss (\d+\.\d+)", done.stdout),
                      torch.load(tmp_path / name / "ckpt.pt", weights_only=True))
    (kit_losses, kit_ckpt), (losses, ckpt) = runs["kit"], runs["project"]
    assert len(losses) == 3
    assert kit_losses == losses
    assert all(torch.equal(kit_ckpt["model"][k], v) for k, v in ckpt["model"].items())
    assert [row["test_psnr"] for row in kit_ckpt["history"]] == [
        row["test_psnr"] for row in ckpt["history"]]


# ── What the command refuses, and what it carries over ──────────────────────────────────────

@pytest.mark.parametrize("old, new, said", [
    ("def lift(", "def lift_features(", "no lift (exercise 2, lifting): moved or renamed?"),
    ("class IntegrationGRU(", "class ConvGRU(",
     "no IntegrationGRU.forward (exercise 3, gru): moved or renamed?")])
def test_a_moved_or_renamed_function_stops_the_kit_command_in_one_line(tmp_path, monkeypatch,
                                                                       old, new, said):
    teacher = tmp_path / "deepvoxels.py"
    teacher.write_text((ROOT / "deepvoxels.py").read_text().replace(old, new, 1))
    monkeypatch.setattr(handout, "TEACHER", teacher)
    with pytest.raises(SystemExit) as stop:
        make_kit(tmp_path / "kit")
    assert said in stop.value.code
    assert stop.value.code.startswith("error: ")
    assert "\n" not in stop.value.code
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deepvoxels.py"]   # nothing written


def test_an_existing_folder_is_refused_in_one_line_and_an_empty_one_is_used(tmp_path):
    work = tmp_path / "kit"
    work.mkdir()
    (work / "deepvoxels.py").write_text("# a student's work\n")
    with pytest.raises(SystemExit) as stop:
        make_kit(work)
    assert stop.value.code == (
        f"error: {work} exists and is not empty: a kit never writes over a student's work; "
        f"choose a new folder (a student's finished functions come along with --from "
        f"{work / 'deepvoxels.py'})")
    assert [p.name for p in work.iterdir()] == ["deepvoxels.py"]
    assert (work / "deepvoxels.py").read_text() == "# a student's work\n"
    (tmp_path / "empty").mkdir()
    make_kit(tmp_path / "empty", "--stages", "gru")
    assert (tmp_path / "empty" / "test_exercises.py").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "kit"]    # no temporary left


# A student's own projection: other code than the teacher's, the same numbers
STUDENT = {
    "world_to_camera": ["R, t = cam2world[:, :3, :3], cam2world[:, :3, 3]  # mine",
                        "flat = points.reshape(len(points), -1, 3) - t[:, None]",
                        'return torch.einsum("bij,bpi->bpj", R, flat).reshape(points.shape)'],
    "camera_to_pixel": ["z = points_cam[..., 2:]  # mine",
                        "return points_cam[..., :2] / z * K.diagonal()[:2] + K[:2, 2], z[..., 0]"],
}


def test_from_carries_a_students_finished_functions_into_the_next_kit(kit, tmp_path):
    text = (kit / "deepvoxels.py").read_text()
    for name, lines in STUDENT.items():
        stub = f'    raise Unfinished("exercise 1 (projection): {name} is not written yet")\n'
        text = text.replace(stub, "".join(f"    {line}\n" for line in lines))
    (tmp_path / "student").mkdir()
    student = tmp_path / "student" / "deepvoxels.py"
    student.write_text(text)
    week2 = make_kit(tmp_path / "week2", "--from", str(student))
    source = (week2 / "deepvoxels.py").read_text()
    assert source.count("# mine") == 2
    assert 'raise Unfinished("exercise 1' not in source
    assert 'raise Unfinished("exercise 2 (lifting)' in source
    assert "## 1." not in (week2 / "EXERCISES.md").read_text()
    done, outcomes = grade(week2, "-k", "projection or lifting")
    assert outcomes == {test: "PASSED" if test.startswith("test_projection_") else "FAILED"
                        for test in exercise_tests("projection") + exercise_tests("lifting")}
    # a helper of their own outside the function would be lost: refused, in one line
    student.write_text(text.replace("# mine\n", "# mine\n    helper()\n", 1))
    with pytest.raises(SystemExit) as stop:
        make_kit(tmp_path / "week3", "--from", str(student))
    assert stop.value.code == (f"error: {student}: world_to_camera uses helper, defined outside "
                               f"it: the kit carries function bodies only; move it into "
                               f"world_to_camera")
    assert not (tmp_path / "week3").exists()
