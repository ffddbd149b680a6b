"""Where the start tail comes from: the benchmark's start trials under the kernel's scheduler trace.

    sudo .venv/bin/python benchmarks/tail_trace.py [--rounds 60] [--busy-workers N] [--out DIR]
    make bench-tail          # 300 rounds, saves data/bench/bench_tail*

The event log says *which stage* of a slow start took long (``run.py``'s decomposition);
it cannot say *why*.  Almost always the answer is "the process that had to act next was
runnable but not running": it had been woken and sat in a CPU's run queue behind
something else.  This tool records that directly.  It runs a shortened benchmark
(``run.Bench``, every trial, the same processes) with three scheduler tracepoints on
(``sched_wakeup``, ``sched_wakeup_new``, ``sched_switch``; ftrace, ``trace_clock=mono``
so that its timestamps are the event log's CLOCK_MONOTONIC), then, for every start on
the base cluster, adds up the time the registrant and the postmaster spent *queued*
inside the trial, and charges each wait to whoever held the CPU until they got it:

* ``new worker``   -- the worker being started (it took the CPU at fork);
* ``postmaster`` / ``registrant`` -- the other side of the same start;
* ``kernel thread`` -- kdamond, kworker, ksoftirqd, rcu... (named in the detail table);
* ``idle vCPU``    -- nobody: the CPU was idle, yet the task waited -- a virtual CPU that
  was halted or not scheduled by the host;
* ``blocked in the kernel`` -- asleep in state D (a kernel lock, I/O); the kernel stack
  says where (e.g. ``dup_mmap/down_write``: fork() waiting for a shared library's
  mapping lock);
* ``other benchmark process`` and ``other``.

Output: the table for the slowest 1 % of starts and for all of them, the kernel threads'
CPU share during the run, and (``--out``) ``bench_tail.csv`` + ``bench_tail.meta.json``.

Needs root and tracefs (mounted here if it is not).  Tracing costs a few microseconds per
context switch, so the run's own latencies are a little higher than ``make bench``'s;
the attribution, not the absolute values, is the result.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import report  # noqa: E402
import run  # noqa: E402

TRACEFS = Path("/sys/kernel/tracing")
EVENTS = ("sched:sched_wakeup", "sched:sched_wakeup_new", "sched:sched_switch")
KERNEL_THREADS = re.compile(r"^(kdamond|kworker|ksoftirqd|rcu_|migration|kswapd|khugepaged|"
                            r"kcompactd|watchdog|cpuhp|irq/)")
LINE = re.compile(r"^\s*(?P<comm>.+?)-(?P<pid>\d+)\s+\[(?P<cpu>\d+)\]\s+\S+\s+(?P<t>\d+\.\d+):\s+"
                  r"(?P<ev>sched_\w+):\s+(?P<rest>.*)$")
SWITCH = re.compile(r"prev_comm=(?P<pc>.*?) prev_pid=(?P<pp>\d+) .*?prev_state=(?P<ps>\S+) ==> "
                    r"next_comm=(?P<nc>.*?) next_pid=(?P<np>\d+)")
WAKE = re.compile(r"comm=(?P<c>.*?) pid=(?P<p>\d+) .*?target_cpu=(?P<cpu>\d+)")


# -- tracing ---------------------------------------------------------------------------------------
class Tracer:
    """ftrace's scheduler events into a file.  Root only; restores what it changed."""

    def __init__(self, buffer_kb: int = 150_000):
        self.buffer_kb = buffer_kb
        self.saved = {}

    def available(self) -> str | None:
        """None if we can trace, else why not."""
        if os.geteuid() != 0:
            return "needs root (ftrace)"
        if not (TRACEFS / "trace").exists():
            subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)], capture_output=True)
        if not (TRACEFS / "trace").exists():
            return f"no tracefs at {TRACEFS}"
        if "mono" not in (TRACEFS / "trace_clock").read_text():
            return "ftrace has no 'mono' clock"
        return None

    def _write(self, name: str, value: str) -> None:
        (TRACEFS / name).write_text(value)

    def start(self, stack_pids=()) -> None:
        """Trace from now on; with `stack_pids`, record the kernel stack of their D-state sleeps."""
        for name in ("trace_clock", "buffer_size_kb", "set_event"):
            self.saved[name] = (TRACEFS / name).read_text()
        self._write("tracing_on", "0")
        self._write("trace", "")
        self._write("trace_clock", "mono")
        self._write("buffer_size_kb", str(self.buffer_kb))
        self._write("set_event", "\n".join(EVENTS) + "\n")
        self.trigger = None
        if stack_pids:
            pids = " || ".join(f"prev_pid == {p}" for p in stack_pids)
            self.trigger = f"stacktrace if prev_state & 2 && ({pids})"
            self._write("events/sched/sched_switch/trigger", self.trigger)
        self._write("tracing_on", "1")

    def stop(self, path: Path) -> None:
        self._write("tracing_on", "0")
        with open(TRACEFS / "trace", "rb") as src, open(path, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        if self.trigger:
            self._write("events/sched/sched_switch/trigger", "!" + self.trigger)
        self._write("trace", "")
        self._write("set_event", self.saved.get("set_event", ""))
        clock = re.search(r"\[(\w+)\]", self.saved.get("trace_clock", "[local]")).group(1)
        self._write("trace_clock", clock)
        self._write("buffer_size_kb", self.saved.get("buffer_size_kb", "1408").split()[0])


# -- parsing ---------------------------------------------------------------------------------------
STACK_LINE = re.compile(r"^\s*.+?-(?P<pid>\d+)\s+\[\d+\]\s+\S+\s+[\d.]+:\s+<stack trace>")
GENERIC_FRAMES = re.compile(r"^(trace_|__traceiter|__schedule|schedule|preempt_schedule|io_schedule|"
                            r"rwsem_down|down_|up_|__mutex_lock|mutex_lock|folio_wait|__folio_lock|"
                            r"__wait_for_common|wait_for_completion|out_of_line_wait|__wait_on_bit|"
                            r"bit_wait|__cond_resched|__rt_mutex|rt_mutex)")


def where_blocked(frames: list[str]) -> str:
    """'dup_mmap/down_write': the first non-generic caller and the primitive it waits in."""
    prim = next((f for f in frames if f.startswith(("down_", "__mutex_lock", "mutex_lock", "io_schedule",
                                                      "folio_wait", "wait_for_completion"))), "")
    site = next((f for f in frames if not GENERIC_FRAMES.match(f)), "?")
    return f"{site}/{prim}" if prim else site


def parse(path: Path):
    """(switches, wakeups, lost): sched_switch and wakeup records, time-sorted, in ns.

    A switch record is (t, cpu, prev_pid, prev_comm, prev_state, next_pid, next_comm,
    where): `where` is ``where_blocked()`` of the kernel stack recorded for a D-state
    sleep (the tracer's stacktrace trigger), else "".
    """
    switches, wakeups, lost = [], [], 0
    last_d_switch = {}  # pid -> index in switches of its latest D-state switch-out
    frames, owner = None, None

    def end_of_stack():  # the stack's frames are complete: name the owner's call site
        if frames is not None and owner is not None:
            switches[owner] = (*switches[owner][:-1], where_blocked(frames))

    with open(path, errors="replace") as f:
        for line in f:
            if frames is not None:
                if line.startswith(" => "):
                    frames.append(line[4:].strip())
                    continue
                end_of_stack()
                frames, owner = None, None
            if line.startswith("#"):
                if "LOST" in line:
                    lost += 1
                continue
            st = STACK_LINE.match(line)
            if st:
                frames, owner = [], last_d_switch.pop(int(st["pid"]), None)
                continue
            m = LINE.match(line)
            if not m:
                continue
            t = round(float(m["t"]) * 1e9)
            if m["ev"] == "sched_switch":
                s = SWITCH.search(m["rest"])
                if s:
                    if s["ps"].startswith("D"):
                        last_d_switch[int(s["pp"])] = len(switches)
                    switches.append((t, int(m["cpu"]), int(s["pp"]), s["pc"], s["ps"],
                                     int(s["np"]), s["nc"], ""))
            elif m["ev"] in ("sched_wakeup", "sched_wakeup_new"):
                w = WAKE.search(m["rest"])
                if w:  # the line's own task is the waker
                    wakeups.append((t, int(w["p"]), int(w["cpu"]), m["comm"], int(m["pid"])))
    end_of_stack()
    switches.sort()
    wakeups.sort()
    return switches, wakeups, lost


class CpuTimeline:
    """Who ran on each CPU when, from the sched_switch records."""

    def __init__(self, switches):
        self.t = defaultdict(list)
        self.who = defaultdict(list)
        for t, cpu, pp, pc, ps, np_, nc, _ in switches:
            self.t[cpu].append(t)
            self.who[cpu].append((np_, nc))

    def occupants(self, cpu: int, a: int, b: int) -> dict[tuple[int, str], int]:
        """ns each task ran on `cpu` within [a, b] (pid 0 = idle)."""
        ts, who = self.t[cpu], self.who[cpu]
        i = max(0, bisect.bisect_right(ts, a) - 1)
        out = defaultdict(int)
        while i < len(ts) and ts[i] < b:
            end = ts[i + 1] if i + 1 < len(ts) else b
            overlap = min(end, b) - max(ts[i], a)
            if overlap > 0:
                out[who[i]] += overlap
            i += 1
        return out


def wait_intervals(switches, wakeups, pids: set[int]):
    """For each pid: the intervals it waited on others, as (from_ns, to_ns, kind, cpu, waker).

    kind ``queued``: runnable, not running, then switched in on ``cpu`` -- charged to
    whoever ran on that CPU meanwhile (the last field is None); kind ``blocked``: asleep
    in the kernel in state D (a lock, I/O) -- the last field is (where, waker comm).
    Ordinary sleeps (state S: poll(), read()) are the protocol's own waits and are not
    counted.
    """
    queued_since, blocked_since, blocked_where = {}, {}, {}
    out = defaultdict(list)
    events = [(w[0], 1, w) for w in wakeups] + [(s[0], 0, s) for s in switches]
    events.sort(key=lambda e: (e[0], e[1]))
    for t, kind, rec in events:
        if kind == 1:  # wakeup
            _, pid, cpu, wcomm, wpid = rec
            if pid in pids:
                if pid in blocked_since:
                    out[pid].append((blocked_since.pop(pid), t, "blocked", cpu,
                                     (blocked_where.pop(pid, ""), wcomm)))
                queued_since.setdefault(pid, t)
        else:
            _, cpu, pp, pc, ps, np_, nc, where = rec
            if np_ in pids and np_ in queued_since:
                out[np_].append((queued_since.pop(np_), t, "queued", cpu, None))
            if pp in pids:
                if ps.startswith("R"):
                    queued_since[pp] = t  # preempted: queued from now on
                elif ps.startswith("D"):
                    blocked_since[pp] = t
                    blocked_where[pp] = where
    for ivs in out.values():
        ivs.sort()
    return out


def categorize(comm: str, pid: int, trial: dict, roles: dict[int, str], runner_pids: set[int]) -> str:
    if pid == 0 or comm.startswith("swapper"):
        return "idle vCPU"
    if pid == trial["pid"]:
        return "new worker"
    if pid in roles:
        return roles[pid]
    if KERNEL_THREADS.match(comm):
        return "kernel thread"
    if pid in runner_pids:
        return "other benchmark process"
    return "other"


CATEGORIES = ("new worker", "postmaster", "registrant", "kernel thread", "idle vCPU",
              "blocked in the kernel", "other benchmark process", "other")


def attribute(trials, waits, timeline: CpuTimeline, registrant: int, postmaster: int,
              runner_pids: set[int]):
    """Per trial: total ms, ms waited per category (registrant + postmaster), culprits."""
    roles = {registrant: "registrant", postmaster: "postmaster"}
    index = {pid: ([iv[0] for iv in ivs], ivs) for pid, ivs in waits.items()}
    rows = []
    for tr in trials:
        t0, t1 = tr["t0"], tr["t1"]
        row = {"total_ms": (t1 - t0) / 1e6, **{c: 0.0 for c in CATEGORIES}, "culprits": defaultdict(float)}
        for pid in (registrant, postmaster):
            starts, ivs = index.get(pid, ([], []))
            i = bisect.bisect_left(starts, t0 - 50_000_000)
            for since, until, kind, cpu, extra in ivs[i:]:
                if since >= t1:
                    break
                a, b = max(since, t0), min(until, t1)
                if b <= a:
                    continue
                if kind == "blocked":
                    where, waker = extra
                    row["blocked in the kernel"] += (b - a) / 1e6
                    row["culprits"][f"{roles[pid]} blocked in {where or '?'} (woken by {waker})"] += (b - a) / 1e6
                    continue
                for (cpid, comm), ns in timeline.occupants(cpu, a, b).items():
                    who = categorize(comm, cpid, tr, roles, runner_pids)
                    if cpid == pid or who == roles[pid]:
                        continue  # itself, or its own other thread
                    row[who] += ns / 1e6
                    name = comm if who in ("kernel thread", "other") else who
                    row["culprits"][f"{roles[pid]} queued behind {name}"] += ns / 1e6
        rows.append(row)
    return rows


def kernel_thread_share(switches, t_begin: int, t_end: int, ncpu: int) -> dict:
    """CPU time of each kernel-thread family in [t_begin, t_end], and its longest runs."""
    on = {}
    runs = defaultdict(list)
    for t, cpu, pp, pc, ps, np_, nc, _ in switches:
        if not t_begin <= t <= t_end:
            continue
        if cpu in on:
            comm, t_on = on.pop(cpu)
            runs[comm].append(t - t_on)
        if KERNEL_THREADS.match(nc):
            on[cpu] = (re.sub(r"[/:].*$|\.\d+$", "", nc), t)
    span = (t_end - t_begin) * ncpu
    return {comm: {"cpu_share_pct": 100 * sum(xs) / span, "runs": len(xs),
                   "run_p50_us": report.percentile(xs, 0.5) / 1e3,
                   "run_p99_us": report.percentile(xs, 0.99) / 1e3,
                   "run_max_us": max(xs) / 1e3,
                   "runs_over_1ms_per_s": sum(x > 1e6 for x in xs) / ((t_end - t_begin) / 1e9)}
            for comm, xs in sorted(runs.items(), key=lambda kv: -sum(kv[1]))}


def summarize(rows: list[dict]) -> list[dict]:
    totals = sorted(r["total_ms"] for r in rows)
    cut = report.percentile(totals, 0.99)
    out = []
    for label, sel in (("slowest 1%", [r for r in rows if r["total_ms"] >= cut]), ("all", rows)):
        total = sum(r["total_ms"] for r in sel)
        for c in CATEGORIES:
            q = sum(r[c] for r in sel)
            out.append({"set": label, "n": len(sel), "median_total_ms": report.percentile(
                [r["total_ms"] for r in sel], 0.5), "category": c, "queued_ms_per_start": q / len(sel),
                "share_of_time": q / total if total else 0.0})
    return out


def print_phase(phase, rows, table, slow, kthreads, stat, lost) -> None:
    print(f"\n== {phase}: {len(rows)} starts on the base cluster (lean registrant); median "
          f"{stat['median']:.3f} ms, p99 {stat['p99']:.3f} ms{'; LOST TRACE EVENTS' if lost else ''}")
    print("Time the registrant and the postmaster waited on others inside a start, per start (queued"
          " for a CPU: charged to whoever held it; asleep in state D: 'blocked in the kernel')")
    print(f"{'set':12s} {'n':>5s} {'median':>8s}  " + "  ".join(f"{c:>14s}" for c in CATEGORIES))
    for label in ("slowest 1%", "all"):
        sel = [r for r in table if r["set"] == label]
        print(f"{label:12s} {sel[0]['n']:5d} {sel[0]['median_total_ms']:7.3f}ms  "
              + "  ".join(f"{r['queued_ms_per_start']:8.3f}ms {100 * r['share_of_time']:3.0f}%"
                          .rjust(14) for r in sel))
    print("The slowest starts, one by one (ms waited, by culprit; blocked: the kernel stack's call site):")
    for r in slow:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["culprits"].items(), key=lambda kv: -kv[1])
                          if v >= 0.05)
        print(f"  {r['total_ms']:6.2f} ms: {parts or 'no waiting on others: running, or asleep on the protocol'}")
    print("Kernel threads in this phase (share of all CPUs; runs = times on a CPU):")
    for comm, k in list(kthreads.items())[:4]:
        print(f"  {comm:12s} {k['cpu_share_pct']:5.2f}%  runs {k['runs']:6d}  p50 {k['run_p50_us']:7.0f} us"
              f"  p99 {k['run_p99_us']:7.0f} us  max {k['run_max_us']:7.0f} us"
              f"  runs > 1 ms: {k['runs_over_1ms_per_s']:.1f}/s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--busy-workers", type=int, default=run.FULL.busy_workers,
                    help="sleeping workers in the mw1024 'busy' cluster (default: as make bench)")
    ap.add_argument("--out", help="directory for bench_tail.csv and bench_tail.meta.json")
    ap.add_argument("--trace-file", default="/tmp/bgwlab-tail-trace.txt")
    ap.add_argument("--keep-trace", action="store_true", help="keep the raw trace file")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    tracer = Tracer()
    why = tracer.available()
    if why:
        print(f"tail_trace: cannot trace: {why}", file=sys.stderr)
        return 2
    plan = run.Plan(**{**asdict(run.FULL), "rounds": args.rounds, "mode": "tail",
                       "busy_workers": args.busy_workers})
    bench = run.Bench(plan, progress=not args.no_progress)
    orig_setup = bench.setup
    pids = {}

    import time

    def setup():  # trace from the end of the setup on (the clusters' imports are not the subject)
        orig_setup()
        pids["postmaster"] = bench.clusters["base"].postmaster_pid
        pids["t_begin"] = time.monotonic_ns()
        tracer.start(stack_pids=(pids["postmaster"], bench.runner_pids["lean"]))

    bench.setup = setup
    trace_path = Path(args.trace_file)
    try:
        result = bench.run()
    finally:
        if "t_begin" in pids:
            tracer.stop(trace_path)
    t_begin = pids["t_begin"]
    switches, wakeups, lost = parse(trace_path)
    registrant = bench.runner_pids["lean"]
    postmaster = pids["postmaster"]
    waits = wait_intervals(switches, wakeups, {registrant, postmaster})
    timeline = CpuTimeline(switches)
    runner_pids = set(bench.runner_pids.values())
    busy_begin = result["metadata"]["busy_phase"]["t_begin_ns"]  # windows for the kernel-thread share
    phases = {
        "main rounds": (bench.trials["start"], "bgwlab.start", t_begin, busy_begin),
        f"busy phase ({plan.busy_workers} sleepers alive)": (
            bench.trials["busy_phase"], "bgwlab.start.busy_phase",
            *result["metadata"]["busy_phase"]["window_ns"]),
    }
    saved_rows, meta_phases = [], {}
    for phase, (trials, metric, a, b) in phases.items():
        rows = attribute(trials, waits, timeline, registrant, postmaster, runner_pids)
        table = summarize(rows)
        kthreads = kernel_thread_share(switches, a, b, os.cpu_count() or 1)
        stat = next(r for r in result["summary"] if r["metric"] == metric)
        slow = sorted(rows, key=lambda r: -r["total_ms"])[:max(1, len(rows) // 100)]
        print_phase(phase, rows, table, slow, kthreads, stat, lost)
        saved_rows += [{"phase": phase, **r} for r in table]
        meta_phases[phase] = {"metric": metric, "median_ms": stat["median"], "p99_ms": stat["p99"],
                              "n": stat["n"], "kernel_threads": kthreads,
                              "slowest": [{"total_ms": r["total_ms"], "culprits_ms": dict(r["culprits"])}
                                          for r in slow]}
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "bench_tail.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(saved_rows[0]))
            w.writeheader()
            for r in saved_rows:
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        meta = {**result["metadata"], "lost_trace_events": lost, "phases": meta_phases}
        (out / "bench_tail.meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        print(f"\nsaved {out / 'bench_tail.csv'} (+ .meta.json)")
    if not args.keep_trace:
        trace_path.unlink(missing_ok=True)
    else:
        print(f"raw trace kept in {trace_path}; registrant pid {registrant}, postmaster pid {postmaster}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
