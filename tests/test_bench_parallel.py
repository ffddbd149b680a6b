"""Smoke test of benchmarks/bench_parallel.py (issue 13's performance table), quick mode.

No timing is asserted: the numbers belong to the benchmark's own output.  The test checks
that a quick run completes, leaves nothing behind (no_leaks; no segment in /dev/shm),
prints a row for every (metric, size, peer) with its ratios and the targets, names the
two instants of every row, and writes the CSVs and the metadata.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bgwlab.parallel import dsm

from conftest import our_segments

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_parallel.py"
TP_PEERS = ["bgwlab", "bgwlab.batched", "bgwlab.mq", "mp_pipe", "mp_queue", "os_pipe"]
RT_PEERS = ["bgwlab", "mp_pipe", "mp_queue", "os_pipe"]
LAUNCH_PEERS = ["bgwlab.attach", "bgwlab.first_message", "mp_pool", "process_pool_executor",
                "mp_pool.all4", "process_pool_executor.all4"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_parallel")
    before = set(dsm.list_segments())
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--rounds", "1", "--no-progress",
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    return proc, out, before


def test_it_runs_and_prints_every_row_with_ratios(quick):
    proc, _out, _ = quick
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    expected = ([("throughput", s, p) for s in ("64 B", "8 KiB", "1 MiB") for p in TP_PEERS]
                + [("round_trip", "64 B", p) for p in RT_PEERS]
                + [("launch4", "", p) for p in LAUNCH_PEERS])
    table = {}
    for ln in lines:
        tok = ln.split() if not ln.startswith(" ") else []
        if tok[:1] == ["launch4"]:
            table[("launch4", "", tok[1])] = ln
        elif tok[:1] in (["throughput"], ["round_trip"]) and len(tok) > 3:
            table[(tok[0], f"{tok[1]} {tok[2]}", tok[3])] = ln
    for key in expected:
        assert key in table, f"no row for {key}:\n{proc.stdout}"
        if not key[2].startswith("bgwlab"):
            assert "x;" in table[key], f"no ratio in {table[key]!r}"
    assert "instants:" in proc.stdout and "targets (issue 13, medians):" in proc.stdout
    for what in ("sender's first send() call -> receiver holds the last message",
                 "leader calls send -> leader holds the echo",
                 "before multiprocessing.Pool(4) -> first result",
                 "before multiprocessing.Pool(4, initializer) -> all 4 workers ran their initializer"):
        assert what in proc.stdout
    # each launch ratio is to the peers of its own pair of instants
    assert "bgwlab.first_message / the first-result peers, bgwlab.attach / the .all4 peers" in proc.stdout
    targets = [ln for ln in lines if ln.rstrip().endswith(("met", "MISSED"))]
    assert len(targets) == 9


def test_it_writes_csv_samples_and_metadata(quick):
    proc, out, before = quick
    assert proc.returncode == 0
    with open(out / "parallel_quick.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(r["metric"], r["peer"]) for r in rows} >= {("throughput", p) for p in TP_PEERS}
    for r in rows:
        assert r["from_instant"] and r["to_instant"]
        assert int(r["n"]) >= 1 and float(r["median"]) > 0 and not math.isnan(float(r["p99"]))
    with open(out / "parallel_quick_samples.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) >= len(rows)
    meta = json.loads((out / "parallel_quick.meta.json").read_text())
    for key in ("machine", "cpu_model", "cpu_count", "python", "commit", "date", "plan", "targets"):
        assert meta.get(key) not in (None, ""), key
    assert (out / "parallel_quick.txt").read_text().startswith("metric")
    assert not our_segments(set(dsm.list_segments()) - before), "a segment was left in /dev/shm"
