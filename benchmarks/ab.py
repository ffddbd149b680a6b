"""A/B of one engine change: the same trials on two clusters, interleaved, in one run.

    .venv/bin/python benchmarks/ab.py --patch ab_patches/NAME.py [--n 300] [--kinds start,running,crash]

Cluster A's postmaster preloads the patch module (``ab_patches/NAME.py``), which puts the
*previous* code back in the postmaster before its first fork (a function of
``bgwlab.worker`` or a method of ``bgwlab.postmaster.Postmaster``); cluster B runs the
code as it is.  One registrant (this process, ``runner.Registrant``) runs every trial
kind on both clusters in a shuffled order, ``--n`` times each, so that the machine's
drift hits both alike.  Kinds are those of the benchmark (``run.py``): ``start``,
``running`` and ``death`` from one timed trial (with two CPU times, robust to a loaded
machine: ``pm_cpu_ms``, the postmaster's CPU time over the whole start/exit cycle from
``/proc/PID/schedstat``, and ``worker_cpu_ms``, the worker's CPU time from fork to its
entry function), ``crash`` (missing entry -> STOPPED),
``fail_genuine`` (two more clusters in pids cgroups at their limit; root only) and
``fail_injected``.  Prints median, p99 and B / A for each.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "ab_patches"))

import report  # noqa: E402
from run import PRELOAD  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patch", required=True, help="ab_patches/NAME.py: the old code, for A")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--kinds", default="start,running,death,crash,pm_cpu_ms,worker_cpu_ms")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    from bgwlab import Cluster
    from runner import Registrant

    patch = Path(args.patch).stem
    kinds = args.kinds.split(",")
    genuine = "fail_genuine" in kinds
    rng = random.Random(args.seed)
    with contextlib.ExitStack() as stack:
        clusters = {
            "A": stack.enter_context(Cluster.start(max_workers=8, preload=PRELOAD + (patch,))),
            "B": stack.enter_context(Cluster.start(max_workers=8, preload=PRELOAD)),
        }
        if genuine:
            from bgwlab.pg.cgroup import pids_limit

            for v, extra in (("A", (patch,)), ("B", ())):
                c = stack.enter_context(Cluster.start(max_workers=8, preload=PRELOAD + extra))
                clusters[v + "_fail"] = c
                stack.enter_context(pids_limit(c.postmaster_pid))
        reg = Registrant()
        stack.callback(reg.close)
        reg.attach({k: [str(c.directory), True] for k, c in clusters.items()})
        samples: dict[str, list[float]] = {}
        tasks = []
        for v in ("A", "B"):
            if {"start", "running", "death", "pm_cpu_ms", "worker_cpu_ms"} & set(kinds):
                tasks.append((v, "timed"))
            for k in ("crash", "fail_genuine", "fail_injected"):
                if k in kinds:
                    tasks.append((v, k))
        for _ in range(5):  # warm-up, unrecorded
            for v, k in tasks:
                _run(reg, v, k)
        for _ in range(args.n):
            rng.shuffle(tasks)
            for v, k in tasks:
                for kind, ms in _run(reg, v, k).items():
                    samples.setdefault(f"{v}.{kind}", []).append(ms)
        for v in ("A", "B"):  # inside the postmaster, from its event log: fork() called ->
            marks: dict = {}   # registrant signalled (the start's critical section)
            for e in clusters[v].events():
                if e.kind == "fork_attempted" or (e.kind == "notified"
                                                  and e.detail.get("reason") == "forked"):
                    marks.setdefault((e.slot, e.generation), {}).setdefault(e.kind, e.t_ns)
            samples[f"{v}.fork_to_signal_us"] = [
                (m["notified"] - m["fork_attempted"]) / 1e3 for m in marks.values()
                if "notified" in m and "fork_attempted" in m]
    kinds = kinds + ["fork_to_signal_us"]
    print(f"A = {patch} (the old code), B = the code as it is; n = {args.n} each, interleaved")
    print(f"{'kind':<16} {'A median':>9} {'B median':>9} {'B/A':>6}   {'A p99':>8} {'B p99':>8} {'B/A':>6}")
    for kind in kinds:
        a, b = samples.get(f"A.{kind}"), samples.get(f"B.{kind}")
        if not a or not b:
            continue
        am, bm = report.percentile(a, 0.5), report.percentile(b, 0.5)
        ap99, bp99 = report.percentile(a, 0.99), report.percentile(b, 0.99)
        print(f"{kind:<16} {am:>9.3f} {bm:>9.3f} {bm / am:>6.2f}   {ap99:>8.3f} {bp99:>8.3f} {bp99 / ap99:>6.2f}")
    print(f"load average at end: {os.getloadavg()}")
    return 0


def _cpu_ns(pid: int) -> int:
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def _run(reg, v: str, k: str) -> dict:
    if k == "timed":
        pm = reg.backends[v].postmaster_pid
        c0 = _cpu_ns(pm)
        r = reg.timed(v)
        c1 = _cpu_ns(pm)
        return {"start": (r["t1"] - r["t0"]) / 1e6, "running": (r["t_run"] - r["t0"]) / 1e6,
                "death": (r["t3"] - r["t_last"]) / 1e6,
                "pm_cpu_ms": (c1 - c0) / 1e6, "worker_cpu_ms": r["cpu_main"] / 1e6}
    if k == "crash":
        r = reg.crash(v)
        return {"crash": (r["t1"] - r["t0"]) / 1e6}
    if k == "fail_genuine":
        r = reg.fail(v + "_fail", genuine=True)
        return {"fail_genuine": (r["t1"] - r["t0"]) / 1e6}
    r = reg.fail(v)
    return {"fail_injected": (r["t1"] - r["t0"]) / 1e6}


if __name__ == "__main__":
    sys.exit(main())
