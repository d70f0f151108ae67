"""The notebook runs in a real kernel, the handout keeps its exercises, and the README, notebook and
docs agree with the code and with each other."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

import deepvoxels as dv
import train

from conftest import ROOT


# ── Notebook, handout, README and docs ──────────────────────────────────────────────────────

TUTORIAL_WRONG_ANSWERS = '''
wrong_answers = [(check_projection, (np.array([32.0, 32.0]),)),
                 (check_mask, (np.ones((cfg.grid_size,) * 3, bool),)),
                 (check_spacing, (0.5,)), (check_grid, (2, 0)), (check_grid, (8, 100)),
                 (check_broken_softmax, (2.0,))]
if "check_scaling" in globals():
    wrong_answers += [(check_scaling, (2.0, 1.0)), (check_scaling, (4.0, 2.0))]
for check, wrong in wrong_answers:
    try:
        check(*wrong)
    except AssertionError:
        continue
    raise RuntimeError(f"{check.__name__} accepted the wrong answer {wrong}")
import sys
print(sys.prefix)
'''


def test_tutorial_notebook_runs_in_a_real_kernel_and_its_checks_can_fail(monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "tutorial.ipynb", as_version=4)
    # the last cell removes its temporary folder
    assert nb.cells[-1].source.startswith("work.cleanup()")
    nb.cells.insert(len(nb.cells) - 1, nbformat.v4.new_code_cell(TUTORIAL_WRONG_ANSWERS))
    # the notebook's two training runs, shortened
    monkeypatch.setenv("TUTORIAL_TRAIN_STEPS", "4")
    before = set(os.listdir(ROOT))
    # A failing cell raises CellExecutionError here;
    # each check cell asserts its exercise's solution.
    NotebookClient(nb, kernel_name="python3", timeout=600,
                   resources={"metadata": {"path": str(ROOT)}}).execute()
    # nothing written into the repository
    assert set(os.listdir(ROOT)) - before <= {"__pycache__"}
    kernel_prefix = nb.cells[-2].outputs[-1]["text"].split()[-1]
    # the kernel ran in this environment
    assert Path(kernel_prefix).resolve() == Path(sys.prefix).resolve()


def test_handout_keeps_the_todo_cells_and_checks_and_runs_with_every_exercise_unanswered(
        monkeypatch, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    from tools import handout

    full = json.loads((ROOT / "tutorial.ipynb").read_text())
    made = handout.make_handout(full)
    code = "\n".join(c["source"] for c in made["cells"] if c["cell_type"] == "code")
    assert len(made["cells"]) == len(full["cells"])
    assert "### BEGIN SOLUTION" in json.dumps(full)
    assert "SOLUTION" not in code
    assert "x_cam = pose[:3, :3].T" not in code
    assert "my_depth = 2.5" not in code
    answers = [c["source"] for c in made["cells"]
               if c["cell_type"] == "code" and "# TODO" in c["source"]]
    todo = [line for a in answers for line in a.splitlines() if "# TODO" in line]
    assert len(answers) == 6
    assert len(todo) == 8
    assert all(line.split("#")[0].rstrip().endswith("= None") for line in todo)
    assert not any(c.get("outputs") for c in made["cells"])
    with pytest.raises(ValueError, match="cell 1: '### BEGIN SOLUTION' without"):
        handout.make_handout({"cells": [
            full["cells"][0], {**full["cells"][1], "source": "### BEGIN SOLUTION\nx = 1\n"}]})
    # the handout runs top to bottom, and every check says "not answered yet" instead of failing
    handout.main([str(ROOT / "tutorial.ipynb"), "--out", str(tmp_path / "handout.ipynb")])
    nb = nbformat.read(tmp_path / "handout.ipynb", as_version=4)
    monkeypatch.setenv("TUTORIAL_TRAIN_STEPS", "4")
    NotebookClient(nb, kernel_name="python3", timeout=600,
                   resources={"metadata": {"path": str(ROOT)}}).execute()
    checks = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith("def check_")]
    assert len(checks) == 6
    for cell in checks:
        assert "not answered yet" in "".join(o.get("text", "") for o in cell.outputs), (
            cell.source.splitlines()[0])


def test_readme_equation_table_points_at_lines_that_exist():
    import inspect

    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The architecture in one picture")[1].split("\n## ")[0]
    rows = [line.split(" | ") for line in section.splitlines()
            if line.startswith("| ") and "`" in line]
    # the GRU's four, projection, softmax and depth, loss
    assert len(rows) >= 11
    for _, _, function, text in rows:
        module, name = ((train, function.strip("`")[6:]) if function.startswith("`train.")
                        else (dv, function.strip("`")))
        obj = module
        for part in name.split("."):
            obj = getattr(obj, part)
        code = text.rstrip(" |").strip("`")
        assert code in inspect.getsource(obj), f"README: {function} no longer holds {code!r}"


def test_readme_notebook_and_docs_quote_the_same_headline():
    """The default 10-minute cube run is measured in one place, docs/measurements.md (its headline
    line and the per-scene table); README.md and the notebook's prose repeat its dB figures
    exactly."""
    import nbformat

    measurements = (ROOT / "docs" / "measurements.md").read_text()
    headline = next(line for line in measurements.splitlines()
                    if line.endswith("<!-- headline -->"))
    figures = re.findall(r"(\d+\.\d+) dB", headline)
    # no bf16 units, bf16 units, the nearest view
    assert len(figures) == 3, headline
    no_bf16, bf16, nearest = figures
    cells = lambda line: [cell.strip().strip("*") for cell in line.strip().strip("|").split("|")]
    header = next(cells(line) for line in measurements.splitlines()
                  if line.startswith("| scene |") and "10 min" in line)
    rows = {cells(line)[header.index("CPU")]: cells(line) for line in measurements.splitlines()
            if line.startswith("| `cube` |")
            and cells(line)[header.index("settings")] == "defaults"}
    # the table the headline sums up
    for cpu, figure in (("no bf16 units", no_bf16), ("bf16 units", bf16)):
        row = rows[cpu]
        assert ((row[header.index("10 min")], row[header.index("nearest view")])
                == (figure, nearest)), row

    notebook = nbformat.read(ROOT / "tutorial.ipynb", as_version=4)
    prose = "\n\n".join(cell.source for cell in notebook.cells if cell.cell_type == "markdown")
    for name, text in (("README.md", (ROOT / "README.md").read_text()), ("tutorial.ipynb", prose)):
        for figure in figures:
            assert f"{figure} dB" in text, f"{name} does not quote {figure} dB"
            # a rounded copy is a second figure
            rounded = f"{float(figure):.1f}"
            assert not re.search(rf"(?<![\d.]){re.escape(rounded)} dB", text), (
                f"{name} quotes {rounded} dB")
        # no other 10-minute cube figure
        for line in text.splitlines():
            if re.search(r"10 minutes|10-minute|10\.0 min", line) and "cube" in line:
                quoted = set(re.findall(r"(\d+\.\d+) dB", line))
                assert quoted <= set(figures), (
                    f"{name}: a 10-minute cube run quoted as {quoted - set(figures)}: {line!r}")
