"""benchmarks/tail_trace.py's attribution, on a hand-written scheduler trace.

The tool itself needs root and ftrace (``make bench-tail``); what it concludes from a trace
is pure parsing and arithmetic, checked here on a trace whose answer is known: one start
in which the postmaster waits 2 ms in the run queue behind kdamond, then 0.25 ms inside
fork() for a kernel lock (with the stack the tracer's trigger records), then the
registrant waits 1 ms behind the worker just forked onto its CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))
tail_trace = pytest.importorskip("tail_trace")
sys.path.remove(str(BENCH))

R, P, W, K = 100, 200, 300, 77  # registrant, postmaster, new worker, kdamond
TRACE = """\
# tracer: nop
           <idle>-0       [001] d..2.     0.999000: sched_switch: prev_comm=swapper/1 prev_pid=0 prev_prio=120 prev_state=R ==> next_comm=kdamond.0 next_pid=77 next_prio=120
           python-100     [000] d..2.     1.000100: sched_wakeup: comm=python pid=200 prio=120 target_cpu=001
           python-100     [000] d..2.     1.000200: sched_switch: prev_comm=python prev_pid=100 prev_prio=120 prev_state=S ==> next_comm=swapper/0 next_pid=0 next_prio=120
        kdamond.0-77      [001] d..2.     1.002100: sched_switch: prev_comm=kdamond.0 prev_pid=77 prev_prio=120 prev_state=R+ ==> next_comm=python next_pid=200 next_prio=120
           python-200     [001] d..2.     1.002150: sched_switch: prev_comm=python prev_pid=200 prev_prio=120 prev_state=D ==> next_comm=kdamond.0 next_pid=77 next_prio=120
           python-200     [001] d..2.     1.002160: <stack trace>
 => trace_event_raw_event_sched_switch
 => __schedule
 => schedule
 => rwsem_down_write_slowpath
 => down_write
 => dup_mmap
 => copy_process
        kdamond.0-77      [001] d..2.     1.002400: sched_wakeup: comm=python pid=200 prio=120 target_cpu=001
        kdamond.0-77      [001] d..2.     1.002450: sched_switch: prev_comm=kdamond.0 prev_pid=77 prev_prio=120 prev_state=R+ ==> next_comm=python next_pid=200 next_prio=120
           python-200     [001] d..2.     1.002500: sched_wakeup_new: comm=python pid=300 prio=120 target_cpu=000
           <idle>-0       [000] d..2.     1.002520: sched_switch: prev_comm=swapper/0 prev_pid=0 prev_prio=120 prev_state=R ==> next_comm=python next_pid=300 next_prio=120
           python-200     [001] d..2.     1.002700: sched_wakeup: comm=python pid=100 prio=120 target_cpu=000
           python-200     [001] d..2.     1.002900: sched_switch: prev_comm=python prev_pid=200 prev_prio=120 prev_state=S ==> next_comm=swapper/1 next_pid=0 next_prio=120
           python-300     [000] d..2.     1.003700: sched_switch: prev_comm=python prev_pid=300 prev_prio=120 prev_state=S ==> next_comm=python next_pid=100 next_prio=120
"""
TRIAL = {"t0": 1_000_000_000, "t1": 1_003_800_000, "pid": W}


@pytest.fixture
def rows(tmp_path):
    path = tmp_path / "trace.txt"
    path.write_text(TRACE)
    switches, wakeups, lost = tail_trace.parse(path)
    assert (len(switches), len(wakeups), lost) == (8, 4, 0)
    assert [sw[-1] for sw in switches if sw[4] == "D"] == ["dup_mmap/down_write"]
    waits = tail_trace.wait_intervals(switches, wakeups, {R, P})
    return tail_trace.attribute([TRIAL], waits, tail_trace.CpuTimeline(switches), R, P, {R})


def test_waits_are_charged_to_whoever_held_the_cpu(rows):
    (row,) = rows
    assert row["total_ms"] == pytest.approx(3.8)
    assert row["kernel thread"] == pytest.approx(2.05)  # postmaster behind kdamond on cpu 1, twice
    assert row["blocked in the kernel"] == pytest.approx(0.25)  # fork() waiting for a lock
    assert row["new worker"] == pytest.approx(1.0)  # registrant behind the forked worker on cpu 0
    assert sum(row[c] for c in tail_trace.CATEGORIES) == pytest.approx(3.3)  # sleeps (S) are not waits
    assert dict(row["culprits"]) == pytest.approx({
        "postmaster queued behind kdamond.0": 2.05,
        "postmaster blocked in dup_mmap/down_write (woken by kdamond.0)": 0.25,
        "registrant queued behind new worker": 1.0})


def test_summary_and_kernel_thread_share(rows, tmp_path):
    table = tail_trace.summarize(rows)
    slow = {r["category"]: r for r in table if r["set"] == "slowest 1%"}
    assert slow["kernel thread"]["share_of_time"] == pytest.approx(2.05 / 3.8)
    path = tmp_path / "trace.txt"
    path.write_text(TRACE)
    switches, _, _ = tail_trace.parse(path)
    share = tail_trace.kernel_thread_share(switches, 999_000_000, 1_004_000_000, 2)
    assert list(share) == ["kdamond"]
    # kdamond ran 0.999-1.0021 and 1.00215-1.00245 on cpu 1: 3.4 ms of 2 CPUs x 5 ms
    assert share["kdamond"]["cpu_share_pct"] == pytest.approx(100 * 3.4 / 10)
