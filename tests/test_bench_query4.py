"""Smoke test of benchmarks/bench_query4.py: a parallel query of four workers on
PostgreSQL, bgwlab and the pools, request -> answer with every worker gone.

No timing is asserted.  The test checks that a quick run completes, times every system
(PostgreSQL's rows where a server can be started: as root, i.e. in CI, it must be), gives
each row its ratios, and leaves no server, process or segment behind.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from bgwlab.parallel import dsm
from bgwlab.pg import server_available

from conftest import our_segments

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_query4.py"
AVAILABLE, WHY = server_available()


def _postgres_processes() -> set[int]:
    return {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "postgres"}


def test_a_quick_run_times_every_system_and_leaves_nothing(tmp_path):
    if not AVAILABLE and os.geteuid() == 0:
        pytest.fail(f"PostgreSQL is required as root (CI): {WHY}")
    segments, servers = set(dsm.list_segments()), _postgres_processes()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--rounds", "1", "--no-progress",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "query4_quick.csv", newline="") as f:
        rows = {r["system"]: r for r in csv.DictReader(f)}
    expected = {"bgwlab.query4", "mp_pool", "process_pool_executor"}
    if AVAILABLE:
        expected |= {"postgresql.query4", "postgresql.serial"}
    assert set(rows) == expected
    for r in rows.values():
        assert int(r["n"]) == 2 and 0 < float(r["median_ms"]) <= float(r["p99_ms"]), r
    if AVAILABLE:
        assert float(rows["postgresql.query4"]["x_postgresql_query4"]) == 1.0
        assert math.isfinite(float(rows["bgwlab.query4"]["x_postgresql_parallel_part"]))
    meta = json.loads((tmp_path / "query4_quick.meta.json").read_text())
    assert meta["benchmark"] == "bench_query4" and meta["commit"]
    assert (meta["postgresql"] is not None) == AVAILABLE
    assert "every worker has exited" in proc.stdout
    assert not our_segments(set(dsm.list_segments()) - segments), "a segment was left in /dev/shm"
    assert _postgres_processes() <= servers, "a PostgreSQL server was left running"
