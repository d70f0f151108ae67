"""Write the students' version of the tutorial:  python -m tools.handout
(writes tutorial-handout.ipynb)

In tutorial.ipynb each exercise's answer cell sets the answer to None with a `# TODO` comment, then
holds the solution between a `### BEGIN SOLUTION` and a `### END SOLUTION` line. The handout drops
every solution block and every output (the checks' messages would give the answers away). The check
cells stay: they say "not answered yet" until the student sets an answer, then accept or reject it.
Standard library only: no Jupyter needed to write it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"


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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebook", nargs="?",
                        default=str(Path(__file__).parents[1] / "tutorial.ipynb"),
                        help="the notebook with solutions (default: the project's "
                             "tutorial.ipynb)")
    parser.add_argument("--out", default="tutorial-handout.ipynb",
                        help="where to write the handout (default: tutorial-handout.ipynb)")
    args = parser.parse_args(argv)
    try:
        notebook = json.loads(Path(args.notebook).read_text(encoding="utf-8"))
        handout = make_handout(notebook)
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"error: {args.notebook}: {e}")
    Path(args.out).write_text(json.dumps(handout, indent=1, ensure_ascii=False) + "\n",
                              encoding="utf-8")
    todo = sum("# TODO" in cell["source"] for cell in handout["cells"])
    print(f"wrote {args.out}: {todo} cells with # TODO, no solutions, no outputs")


if __name__ == "__main__":
    main()
