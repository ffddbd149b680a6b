"""scripts/student_copy.py: the notebooks as a student gets them.

Solutions (cells tagged ``solution``), key-claim checks (cells tagged ``check``) and the
folded answers (``<details>`` in markdown) are gone; the student's exercise cells and the
check cells that grade them stay; no outputs; the sources are untouched.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "student_copy.py"
NOTEBOOKS = ROOT / "notebooks"


def _digest(paths):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def test_student_copy_drops_solutions_checks_and_answers(tmp_path):
    sources = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    before = _digest(sources)
    out = tmp_path / "student"
    run = subprocess.run([sys.executable, str(SCRIPT), str(out)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    written = sorted(out.glob("*.ipynb"))
    assert [p.name for p in written] == [p.name for p in sources]
    assert run.stdout.split() == [str(p) for p in written]
    assert _digest(sources) == before, "the sources must not change"
    lessons = 0
    for src, dst in zip(sources, written):
        orig = nbformat.read(src, as_version=4)
        copy = nbformat.read(dst, as_version=4)
        nbformat.validate(copy)
        tagged = [c for c in orig.cells if {"solution", "check"} & set(c.metadata.get("tags", []))]
        assert len(copy.cells) <= len(orig.cells) - len(tagged)
        for c in copy.cells:
            tags = set(c.metadata.get("tags", []))
            assert not tags & {"solution", "check"}, (dst.name, c.source[:60])
            if c.cell_type == "markdown":
                assert "<details>" not in c.source and "</details>" not in c.source, dst.name
            else:
                assert c.outputs == [] and c.execution_count is None
        if src.name[:2] < "10":
            lessons += 1
            # what the student works with stays: the exercise (with its ...) and its check
            code = [c.source for c in copy.cells if c.cell_type == "code"]
            assert any("= ...   # your code here" in s or "= ..., ...   # your code here" in s for s in code), dst.name
            assert any("check_value(" in s or "check(" in s for s in code), dst.name
            assert not any("claim(" in s for s in code), dst.name
            # every original question is still there, only its folded answer is gone
            questions = sum(c.source.count("<summary>") for c in orig.cells if c.cell_type == "markdown")
            remaining = "\n".join(c.source for c in copy.cells if c.cell_type == "markdown")
            assert questions == 0 or "Exercises" in remaining
    assert lessons == 10


def test_strip_answers_keeps_the_question():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import student_copy
    finally:
        sys.path.remove(str(SCRIPT.parent))
    md = ("## Exercises\n\n1. Why?\n\n<details><summary>Answer</summary>\n\nBecause.\n"
          "</details>\n\n2. How?\n\n<details><summary>Answer</summary>\nLike so.\n</details>")
    out = student_copy.strip_answers(md)
    assert "1. Why?" in out and "2. How?" in out
    assert "Because" not in out and "Like so" not in out and "details" not in out
