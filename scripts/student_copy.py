#!/usr/bin/env python3
"""Write the student copy of the notebooks: no solutions, no CI checks, no outputs.

    python scripts/student_copy.py [OUT_DIR]        # default: build/student/

For every ``notebooks/NN_name.ipynb`` it writes ``OUT_DIR/NN_name.ipynb`` without

* cells tagged ``solution`` (the worked answers to the code exercises: the student's own
  cell, with its ``...``, stays, and so does the check cell that tells whether it is right);
* cells tagged ``check`` (each notebook's key claim, asserted on the run's data for CI);
* the folded answers of the written exercises (``<details>...</details>`` in markdown);
* outputs and execution counts.

The sources are read, never changed.  Exit status 0, and the paths written on stdout.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
REMOVED_TAGS = frozenset({"solution", "check"})
_DETAILS = re.compile(r"\n?<details>.*?</details>\n?", re.S)


def strip_answers(markdown: str) -> str:
    """Markdown without its folded answers (``<details>...</details>`` blocks)."""
    out = _DETAILS.sub("\n", markdown)
    out = re.sub(r"\n{3,}", "\n\n", out)
    return out.strip("\n")


def student_notebook(nb):
    """A copy of notebook `nb` (nbformat v4) as a student gets it."""
    import copy

    nb = copy.deepcopy(nb)
    cells = []
    for cell in nb.cells:
        tags = set(cell.get("metadata", {}).get("tags", []))
        if tags & REMOVED_TAGS:
            continue
        if cell.cell_type == "markdown":
            cell.source = strip_answers(cell.source)
            if not cell.source.strip():
                continue
        elif cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cells.append(cell)
    nb.cells = cells
    return nb


def write_student_copy(out_dir: Path, sources: Path = NOTEBOOKS) -> list[Path]:
    import nbformat

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for src in sorted(Path(sources).glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(src, as_version=4)
        dest = out_dir / src.name
        nbformat.write(student_notebook(nb), dest)
        written.append(dest)
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", nargs="?", default=str(ROOT / "build" / "student"),
                    help="where to write the notebooks (default: build/student/)")
    args = ap.parse_args(argv)
    for path in write_student_copy(Path(args.out_dir)):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
