"""What the students get:  python -m tools.handout  (writes tutorial-handout.ipynb)
                          python -m tools.handout --kit DIR  (writes a class kit into DIR)

The notebook: in tutorial.ipynb each exercise's answer cell sets the answer to None with a `# TODO`
comment, then holds the solution between a `### BEGIN SOLUTION` and a `### END SOLUTION` line. The
handout drops every solution block and every output (the checks' messages would give the answers
away). The check cells stay: they say "not answered yet" until the student sets an answer, then
accept or reject it. No Jupyter needed to write it: a notebook is JSON.

The kit (--kit DIR): a folder where students write the paper's stages themselves. Its deepvoxels.py
is the project's with the bodies of the exercises' functions (EXERCISES below) replaced by stubs;
beside it: train.py, render.py, scenes/, the handout notebook, the grader (test_exercises.py, from
tools/kit_grader.py), the grader's reference numbers (reference.npz, computed here by the
project's deepvoxels.py on fixed inputs) and EXERCISES.md. deepvoxels.py itself carries no
exercise markers: the kit finds its functions by name and replaces line ranges, so a function
that moved or was renamed stops the command in one line instead of leaving an empty exercise.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import dataclasses
import io
import json
import os
import shutil
import sys
import tempfile
import tokenize
from pathlib import Path

import numpy as np
import torch

import deepvoxels as dv
from scenes import views

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
ROOT = Path(__file__).parents[1]
TEACHER = Path(dv.__file__)   # the kit's deepvoxels.py is derived from the file that computes its
                              # reference numbers


def strip_solution(source: str) -> str:
    """A cell's source without the lines from BEGIN to END, markers included."""
    kept, inside = [], False
    for line in source.splitlines(keepends=True):
        if line.strip() in (BEGIN, END):
            if (line.strip() == BEGIN) == inside:
                raise ValueError(f"{line.strip()!r} out of order")
            inside = not inside
        elif not inside:
            kept.append(line)
    if inside:
        raise ValueError(f"{BEGIN!r} without {END!r}")
    return "".join(kept).rstrip("\n")


def make_handout(notebook: dict) -> dict:
    """The notebook (its JSON as a dict) without solution blocks, outputs and execution records."""
    cells = []
    for k, cell in enumerate(notebook["cells"]):
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        try:
            cell = {**cell, "source": strip_solution(source)}
        except ValueError as e:
            raise ValueError(f"cell {k}: {e}") from None
        if cell["cell_type"] == "code":
            cell.update(outputs=[], execution_count=None,
                        metadata={m: v for m, v in cell["metadata"].items() if m != "execution"})
        cells.append(cell)
    return {**notebook, "cells": cells}


# ─────────────────────────────────────────────────────────────────────────────────────────────
# The exercises, in the order a student does them (each may use the ones before it) and the order
# train.py meets them: the figure of the cameras projects, then a step lifts, fuses, projects and
# flattens. So the first stub a run meets is the first unfinished exercise.
# ─────────────────────────────────────────────────────────────────────────────────────────────

@dataclasses.dataclass(frozen=True)
class Exercise:
    """One idea of the paper that the student writes; `name` is its grading keyword."""

    number: int
    name: str                   # pytest -k <name> selects its tests (in no other test's name)
    title: str
    functions: tuple[str, ...]  # in deepvoxels.py: "lift", "IntegrationGRU.forward"
    section: str
    read_first: str


EXERCISES = (
    Exercise(1, "projection", "The pinhole camera: world to camera, camera to pixel",
             ("world_to_camera", "camera_to_pixel"),
             "Sec. 3 (lifting and projection both rest on it)",
             'the "Camera convention" at the top of deepvoxels.py, the comment above its '
             "section 1, `intrinsics_matrix`"),
    Exercise(2, "lifting", "Lifting 2D features into the grid, with the validity mask",
             ("lift",), "Sec. 3.1",
             "`voxel_centers`, `Config.intrinsics` (the camera at the feature maps' size), "
             "torch.nn.functional.grid_sample (align_corners=False, padding_mode)"),
    Exercise(3, "gru", "Integration by a 3D GRU: the paper's four equations",
             ("IntegrationGRU.forward",), "Sec. 3.1, Eq. 1-4",
             "`IntegrationGRU.__init__`: which merged convolution holds which of the paper's "
             "terms, and the coordinates appended to X and H (`normalized_coordinates`)"),
    Exercise(4, "view_volume", "The canonical view volume and its trilinear sampling",
             ("view_volume_points", "project"), "Sec. 3.2",
             "the comment above section 6, `view_depth_range`, `pixel_centers`, `pixel_to_ray`, "
             "`world_to_grid_coords`; grid_sample on a 5D input"),
    Exercise(5, "occlusion", "The occlusion softmax, its flattened features and its depth map",
             ("OcclusionNet.forward",), "Sec. 3.3",
             "the comment above section 7 (the two sums), `OcclusionNet.__init__`"),
)
BY_NAME = {exercise.name: exercise for exercise in EXERCISES}

UNFINISHED = '''

class Unfinished(DataError, NotImplementedError):
    """An exercise of the class kit not written yet (EXERCISES.md). A DataError as well: train.py
    and render.py stop with one line that names it."""
'''


class KitError(Exception):
    """Why no kit was written: one line."""


# ─────────────────────────────────────────────────────────────────────────────────────────────
# The kit's deepvoxels.py: the project's, line ranges replaced (never ast.unparse: every comment,
# blank line and layout outside the exercises' bodies stays as the author wrote it)
# ─────────────────────────────────────────────────────────────────────────────────────────────

def find_function(tree: ast.Module, qualname: str) -> ast.FunctionDef | None:
    """The module-level function or the method of a module-level class named `qualname`."""
    *owner, name = qualname.split(".")
    scope = tree.body
    if owner:
        scope = next((node.body for node in tree.body
                      if isinstance(node, ast.ClassDef) and node.name == owner[0]), [])
    return next((node for node in scope
                 if isinstance(node, ast.FunctionDef) and node.name == name), None)


def body_lines(function: ast.FunctionDef, lines: list[str]) -> tuple[int, int]:
    """First and last line (1-based) of the body below the docstring, or below the signature (the
    comment lines before the first statement included): what a stub replaces."""
    top = function.body[0]
    if isinstance(top, ast.Expr) and isinstance(top.value, ast.Constant) and isinstance(
            top.value.value, str):
        return top.end_lineno + 1, function.end_lineno
    first = top.lineno
    while first - 1 > function.lineno and (lines[first - 2].strip().startswith("#")
                                           or not lines[first - 2].strip()):
        first -= 1                       # the signature's last line is code: the walk stops there
    return first, function.end_lineno


def stub(function: ast.FunctionDef, span: range, comments: dict[int, str], exercise: Exercise,
         qualname: str) -> list[str]:
    """The body's comments, each on a line of its own (those after code too: they hold shapes and
    the paper's equations), then the line that names the exercise."""
    indent = " " * function.body[-1].col_offset
    kept = [f"{indent}{comments[n]}\n" for n in span if n in comments]
    message = f"exercise {exercise.number} ({exercise.name}): {qualname} is not written yet"
    return kept + [f'{indent}raise Unfinished("{message}")\n']


def is_stub(function: ast.FunctionDef) -> bool:
    """Whether a student's function still raises its stub (or a NotImplementedError of theirs)."""
    for node in ast.walk(function):
        if isinstance(node, ast.Raise) and node.exc is not None:
            raised = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(raised, ast.Name) and raised.id in ("Unfinished", "NotImplementedError"):
                return True
    return False


def outside_names(function: ast.FunctionDef, module: ast.Module) -> set[str]:
    """Names a student's function reads that neither it nor the kit's module defines: a helper or
    an import of their own elsewhere in their file, which carrying the body alone would lose."""
    nodes = list(ast.walk(function))
    bound = {node.arg for node in nodes if isinstance(node, ast.arg)}
    bound |= {node.id for node in nodes if isinstance(node, ast.Name)
              and not isinstance(node.ctx, ast.Load)}
    for node in nodes + module.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.ExceptHandler)) and node.name:
            bound.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    bound |= {node.id for statement in module.body if isinstance(statement, ast.Assign)
              for node in ast.walk(statement) if isinstance(node, ast.Name)}
    read = {node.id for node in nodes
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}
    return read - bound - set(dir(builtins))


def kit_source(teacher: str, stages: set[str], student: str | None = None,
               student_name: str = "") -> tuple[str, list[str], list[str]]:
    """The kit's deepvoxels.py from the teacher's text: the functions of the exercises in `stages`
    stubbed, the rest kept, and where a student's file is given each function they finished
    carried over from it. Returns the text, the functions stubbed and those carried."""
    tree, lines = ast.parse(teacher), teacher.splitlines(keepends=True)
    comments = {token.start[0]: token.string
                for token in tokenize.generate_tokens(io.StringIO(teacher).readline)
                if token.type == tokenize.COMMENT}
    theirs = None
    if student is not None:
        try:
            theirs = ast.parse(student)
        except SyntaxError as e:
            raise KitError(f"{student_name} line {e.lineno}: {e.msg}: fix it before carrying its "
                           f"functions over") from None
    edits, stubbed, carried = [], [], []      # edits: (first line, last line, new lines)
    for exercise in EXERCISES:
        for qualname in exercise.functions:
            where = f"{qualname} (exercise {exercise.number}, {exercise.name})"
            function = find_function(tree, qualname)
            if function is None:
                raise KitError(f"{TEACHER}: no {where}: moved or renamed? The kit finds the "
                               f"exercises' functions by name (EXERCISES in tools/handout.py)")
            first, last = body_lines(function, lines)
            if first > last:
                raise KitError(f"{TEACHER}: {where} has no code below its docstring: "
                               f"nothing to make an exercise of")
            mine = theirs and find_function(theirs, qualname)
            if theirs and mine is None:
                raise KitError(f"{student_name}: no {where}: rename it back, then carry it over")
            if mine and not is_stub(mine):
                if unknown := outside_names(mine, tree):
                    raise KitError(f"{student_name}: {qualname} uses {', '.join(sorted(unknown))}"
                                   f", defined outside it: the kit carries function bodies "
                                   f"only; move it into {qualname}")
                their_lines = student.splitlines(keepends=True)
                start, end = body_lines(mine, their_lines)
                edits.append((first, last, their_lines[start - 1:end]))
                carried.append(qualname)
            elif exercise.name in stages:
                edits.append((first, last, stub(function, range(first, last + 1), comments,
                                                exercise, qualname)))
                stubbed.append(qualname)
    if stubbed:
        error = next((node for node in tree.body
                      if isinstance(node, ast.ClassDef) and node.name == "DataError"), None)
        if error is None:
            raise KitError(f"{TEACHER}: no class DataError: the stubs' Unfinished derives from it "
                           f"so that train.py stops in one line")
        edits.append((error.end_lineno + 1, error.end_lineno, UNFINISHED.splitlines(True)))
    for first, last, new in sorted(edits, key=lambda edit: edit[0], reverse=True):
        lines[first - 1:last] = new
    source = "".join(lines)
    try:
        ast.parse(source)
    except SyntaxError as e:
        raise KitError(f"the kit's deepvoxels.py would not parse (line {e.lineno}: {e.msg}): "
                       f"are the carried functions indented as in the project?") from None
    return source, stubbed, carried


# ─────────────────────────────────────────────────────────────────────────────────────────────
# The grader's numbers: fixed inputs and what the project's deepvoxels.py makes of them
# ─────────────────────────────────────────────────────────────────────────────────────────────

# Small, so that grading takes seconds; fx != fy and cx != cy, so that swapping u and v (or rows
# and columns) changes the numbers; the grid off the origin and not of side 1.
GRADING = dv.Config(img_size=16, feat_size=16, grid_size=8, channels=4, depth_planes=8,
                    unet_width=8, occlusion_width=4, grid_center=(0.1, -0.05, 0.2),
                    grid_scale=1.5, focal=14.0, focal_y=17.0, cx=7.0, cy=9.0)
# (eye, target): one camera outside the grid, looking past its centre, so that part of the grid
# falls outside its image; one inside the grid, so that voxels lie behind it.
CAMERAS = (((1.5, -1.2, 0.9), (0.6, 0.2, 0.1)), ((-0.3, 0.0, 0.2), (1.0, 0.4, 0.5)))


def reference_values() -> dict[str, np.ndarray]:
    """Each exercise's fixed inputs, the networks' weights and the teacher's outputs, as arrays
    (the random inputs drawn from a fixed seed; torch's global random state is left as it was)."""
    cfg, B = GRADING, len(CAMERAS)
    C, N, D, h = cfg.channels, cfg.grid_size, cfg.depth_planes, cfg.feat_size
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(28)
        poses = torch.stack([torch.from_numpy(views.look_at(np.array(eye), np.array(target)))
                             for eye, target in CAMERAS]).float()                  # (B, 4, 4)
        K = cfg.intrinsics(h)
        world = torch.randn(B, 3, 5, 3) * 0.6 + torch.tensor(cfg.grid_center)
        in_front = torch.cat([torch.rand(B, 3, 5, 2) * 2 - 1, torch.rand(B, 3, 5, 1) * 2 + 0.5], -1)
        features = torch.randn(B, C, h, h)
        voxel_uv, voxel_depth = dv.camera_to_pixel(
            dv.world_to_camera(dv.voxel_centers(cfg).expand(B, -1, -1, -1, -1), poses), K)
        gru = dv.IntegrationGRU(cfg).eval()
        X, H = torch.randn(1, C, N, N, N), torch.randn(1, C, N, N, N) * 0.5
        H_new, Z = gru(X, H)
        # the proposal S, read back through Eq. 4 (Z lies well inside (0, 1) here)
        S = (H_new.double() - (1 - Z.double()) * H) / Z.double()
        grid = torch.randn(B, C, N, N, N)
        points, depths = dv.view_volume_points(poses, cfg)
        occlusion = dv.OcclusionNet(cfg).eval()
        occlusion.unet.out.weight *= 10      # scores far apart: weights far from uniform (1 / D)
        volume = torch.randn(B, C, D, h, h)
        flat, weights, depth = occlusion(volume, depths)
        # the same weights with occlusion_size h / 2: the U-Net reads the volume averaged to it
        averaging = dv.OcclusionNet(dataclasses.replace(cfg, occlusion_size=h // 2)).eval()
        averaging.load_state_dict(occlusion.state_dict())
        averaged_weights = averaging(volume, depths)[1]
        values = {
            "config": json.dumps(dataclasses.asdict(cfg)), "poses": poses, "K": K,
            "world_points": world, "camera_points": dv.world_to_camera(world, poses),
            "camera_points_in_front": in_front, "pixels": dv.camera_to_pixel(in_front, K)[0],
            "features": features, "voxel_uv": voxel_uv, "voxel_depth": voxel_depth,
            **dict(zip(("lifted", "mask"), dv.lift(features, poses, cfg))),
            "gru_X": X, "gru_H": H, "gru_H_new": H_new, "gru_Z": Z, "gru_S": S,
            "grid": grid, "points": points, "depths": depths,
            "view_volume": dv.project(grid, poses, cfg)[0],
            "volume": volume, "flat": flat, "weights": weights, "depth": depth,
            "averaged_weights": averaged_weights,
            **{f"gru/{k}": v for k, v in gru.state_dict().items()},
            **{f"occlusion/{k}": v for k, v in occlusion.state_dict().items()}}
    return {k: np.asarray(v) for k, v in values.items()}


# ─────────────────────────────────────────────────────────────────────────────────────────────
# EXERCISES.md and the folder
# ─────────────────────────────────────────────────────────────────────────────────────────────

def exercises_text(stubbed: list[str], carried: list[str], student_name: str) -> str:
    """EXERCISES.md: the order, and per exercise its section, what to read, its grading command."""
    todo = [e for e in EXERCISES if any(f in stubbed for f in e.functions)]
    done = [f"{e.number} ({e.name})" for e in EXERCISES if e not in todo]
    text = ["# Build DeepVoxels yourself", "",
            "deepvoxels.py in this folder is the whole model (Sitzmann et al., *DeepVoxels*, CVPR "
            "2019), but the bodies of the functions below are yours to write. Each keeps its "
            "signature, its docstring, its shape comments and the paper's equations, and raises "
            "Unfinished (a NotImplementedError) naming its exercise until you replace that line "
            "with your code. Do them in this order: an exercise may use the ones before it.", "",
            "Grade one exercise with its command, run in this folder: it takes seconds on a CPU "
            "and says what is wrong (which voxel, pixel or equation; expected and found). "
            "`pytest` alone grades them all.", ""]
    if done:
        text += [f"Exercises {', '.join(done)} are written in this kit"
                 + (f" (from {student_name}: {', '.join(carried)})" if carried else "")
                 + "; their commands grade them too.", ""]
    for e in todo:
        text += [f"## {e.number}. {e.title}", "",
                 f"- Paper: {e.section}",
                 f"- Write: {', '.join(f'`{f}`' for f in e.functions if f in stubbed)}",
                 f"- Read first: {e.read_first}",
                 f"- Grade: `pytest -k {e.name}`", ""]
    text += ["## Then train your own model", "",
             "Until every exercise is written, `python train.py --data ./cube` stops with one "
             "line naming the first unfinished one. Once they all pass, train your "
             "implementation on the synthetic cube (generated in ./cube on the first run):", "",
             "    python train.py --data ./cube --minutes 3", "",
             "then run tutorial-handout.ipynb: its figures are drawn by your deepvoxels.py, and "
             "`python render.py` renders your trained model."]
    return "\n".join(text) + "\n"


PYTEST_INI = """[pytest]
# The grader: pytest -k <exercise> grades one exercise (EXERCISES.md), pytest all of them.
testpaths = test_exercises.py
"""


def write_kit(folder: Path, notebook: Path, stages: set[str], student: Path | None) -> str:
    """Write the kit into `folder`, a new or empty one (a student's work is never written over):
    everything is made in a temporary folder beside it, then renamed, so a failure leaves nothing.
    Returns the line that says what was written."""
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise KitError(f"{folder} exists and is not empty: a kit never writes over a student's "
                       f"work; choose a new folder (a student's finished functions come along "
                       f"with --from {folder / 'deepvoxels.py'})")
    try:
        theirs = student.read_text(encoding="utf-8") if student else None
        handout = make_handout(json.loads(notebook.read_text(encoding="utf-8")))
        source, stubbed, carried = kit_source(TEACHER.read_text(encoding="utf-8"), stages,
                                              theirs, str(student))
    except (OSError, ValueError, KeyError) as e:
        raise KitError(str(e)) from None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    except OSError as e:
        raise KitError(f"{folder}: cannot write there ({e.strerror or e})") from None
    try:
        work.chmod(0o755)       # mkdtemp's folder is private; a kit is a folder like any other
        (work / "deepvoxels.py").write_text(source, encoding="utf-8")
        for script in ("train.py", "render.py"):
            shutil.copy(ROOT / script, work / script)
        shutil.copytree(ROOT / "scenes", work / "scenes",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        (work / "tutorial-handout.ipynb").write_text(
            json.dumps(handout, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        shutil.copy(ROOT / "tools" / "kit_grader.py", work / "test_exercises.py")
        np.savez_compressed(work / "reference.npz", **reference_values())
        (work / "EXERCISES.md").write_text(exercises_text(stubbed, carried, str(student)),
                                           encoding="utf-8")
        (work / "pytest.ini").write_text(PYTEST_INI, encoding="utf-8")
        os.replace(work, folder)                        # an empty folder is replaced
    except BaseException as e:  # a failure, or Ctrl-C, leaves nothing half-written behind
        shutil.rmtree(work, ignore_errors=True)
        if isinstance(e, OSError):
            raise KitError(f"{folder}: {e}") from None
        raise
    names = [f"{e.number} {e.name}" for e in EXERCISES if any(f in stubbed for f in e.functions)]
    return (f"wrote {folder}: exercises {', '.join(names) or 'none'} to write"
            + (f"; carried from {student}: {', '.join(carried)}" if carried else "")
            + f"; EXERCISES.md says the order, pytest -k <exercise> in {folder} grades one")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebook", nargs="?", default=str(ROOT / "tutorial.ipynb"),
                        help="the notebook with solutions (default: the project's "
                             "tutorial.ipynb)")
    parser.add_argument("--out",
                        help="where to write the handout (default: tutorial-handout.ipynb)")
    parser.add_argument("--kit", metavar="DIR",
                        help="write a class kit into DIR (new or empty) instead")
    parser.add_argument("--stages",
                        help="with --kit: the exercises left to write, comma-separated (default: "
                             f"all, {','.join(BY_NAME)}); the others keep the teacher's bodies")
    parser.add_argument("--from", dest="student", metavar="FILE",
                        help="with --kit: a student's deepvoxels.py (last week's kit): every "
                             "exercise function finished there comes along into the new kit")
    args = parser.parse_args(argv)
    if args.kit and args.out:
        sys.exit("error: --out names the notebook's handout; a kit holds its own, in DIR")
    if not args.kit and (args.stages or args.student):
        sys.exit("error: --stages and --from go with --kit DIR")
    if args.kit:
        stages = {name.strip() for name in (args.stages or ",".join(BY_NAME)).split(",")
                  if name.strip()}
        try:
            if not stages or stages - set(BY_NAME):
                raise KitError(f"--stages {args.stages}: name one or more of "
                               f"{', '.join(BY_NAME)}, comma-separated")
            print(write_kit(Path(args.kit), Path(args.notebook), stages,
                            Path(args.student) if args.student else None))
        except KitError as e:
            sys.exit(f"error: {e}")
        return
    try:
        notebook = json.loads(Path(args.notebook).read_text(encoding="utf-8"))
        handout = make_handout(notebook)
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"error: {args.notebook}: {e}")
    out = Path(args.out or "tutorial-handout.ipynb")
    out.write_text(json.dumps(handout, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    todo = sum("# TODO" in cell["source"] for cell in handout["cells"])
    print(f"wrote {out}: {todo} cells with # TODO, no solutions, no outputs")


if __name__ == "__main__":
    main()
