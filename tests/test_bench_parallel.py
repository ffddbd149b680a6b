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
import os
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
        samples = list(csv.DictReader(f))
    assert len(samples) >= len(rows)
    # every trial says how the leader's thread was scheduled over it: shares of its wall time
    for smp in samples:
        on_cpu, waited = float(smp["leader_on_cpu"]), float(smp["leader_waited"])
        assert 0 <= on_cpu <= 1.05 and 0 <= waited <= 1.05 and on_cpu + waited <= 1.1, smp
    assert any(float(smp["leader_on_cpu"]) > 0 for smp in samples)  # schedstat was read
    for r in rows:
        assert 0 <= float(r["leader_on_cpu"]) <= 1.05, r
    meta = json.loads((out / "parallel_quick.meta.json").read_text())
    for key in ("machine", "cpu_model", "cpu_count", "python", "commit", "date", "plan", "targets"):
        assert meta.get(key) not in (None, ""), key
    waited = meta["throughput_trials_leader_waited_over_20pct"]
    assert waited["of"] == sum(r["metric"] == "throughput" for r in samples) and 0 <= waited["trials"] <= waited["of"]
    assert "throughput trials in which the leader waited for a CPU over 20 % of the time" in proc.stdout
    assert (out / "parallel_quick.txt").read_text().startswith("metric")
    assert not our_segments(set(dsm.list_segments()) - before), "a segment was left in /dev/shm"


def test_waiting_trials_counts_the_throughput_trials_over_the_share():
    sys.path.insert(0, str(SCRIPT.parent))
    import bench_parallel

    samples = [dict(metric="throughput", round=0, leader_waited=0.01),
               dict(metric="throughput", round=1, leader_waited=0.45),
               dict(metric="throughput", round=1, leader_waited=0.3),
               dict(metric="round_trip", round=2, leader_waited=0.9)]  # not a throughput trial
    assert bench_parallel.waiting_trials(samples) == (2, 3, [1])
    assert bench_parallel.waiting_trials(samples, share=0.5) == (0, 3, [])


def test_a_run_confined_to_one_cpu_is_flagged(tmp_path):
    """The slow state's signature, made on purpose: with the whole run on one CPU the leader
    waits for its counterpart's CPU, and the report counts those trials."""
    cpu = min(os.sched_getaffinity(0))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--rounds", "1", "--no-progress",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600,
                          preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    waited = json.loads((tmp_path / "parallel_quick.meta.json").read_text())[
        "throughput_trials_leader_waited_over_20pct"]
    assert waited["trials"] >= waited["of"] / 2, waited
