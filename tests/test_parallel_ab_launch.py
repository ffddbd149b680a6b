"""benchmarks/ab_launch.py keeps working: both sides launch, attach and report (two rounds)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from parallel_support import no_segment_left  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


def test_ab_launch_runs_both_sides_and_prints_their_ratio():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ab_launch.py"), "--n", "2",
                          "--kinds", "attach,first_message"],
                         capture_output=True, text=True, timeout=120, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("ab_launch: n=2 per case")
    for kind in ("attach", "first_message"):
        assert any(line.split()[:2] == [kind, "B/A"] for line in lines), out.stdout
        for side in "AB":
            assert any(line.split()[:3] == [kind, side, "median"] for line in lines), out.stdout


def test_ab_launch_s7_runs_the_frozen_worker_side_and_counts_both_sides_faults():
    """--a s7: A's workers run pl_worker_s7 (both leaders the tree); --faults reports both
    sides' workers (pl_faults_s7 wraps the frozen main); --prepatch-a is preloaded first."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ab_launch.py"), "--n", "2",
                          "--kinds", "attach", "--a", "s7", "--faults", "--prepatch-a",
                          str(ROOT / "benchmarks" / "ab_patches" / "pl_norehearsal_s7.py")],
                         capture_output=True, text=True, timeout=120, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert "(workers: pl_worker_s7)" in lines[0] and "pl_norehearsal_s7.py (first)" in lines[0]
    for side in "AB":
        [line] = [ln for ln in lines if ln.split()[:3] == ["attach", side, "median"]]
        assert "w_faults" in line and "w_cpu_ms" in line, out.stdout
