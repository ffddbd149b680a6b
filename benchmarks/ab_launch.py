"""A/B of launch + attach of 4 parallel workers: the frozen old code (A) against the tree (B).

    .venv/bin/python benchmarks/ab_launch.py [--n 150] [--kinds attach,first_message] [--pool]

Issue 13 item 7 times ``bench_parallel.py``'s ``launch4`` row: from before
``ParallelContext(...)`` to ``wait_for_attach()`` returning with 4 workers attached
(``attach``), or to the first message from a worker (``first_message``).  This script
times exactly that on two clusters, in one run, interleaved (every round runs each
(side, kind) once, in a shuffled order), so that the machine's drift hits both alike:

* **A** ("old"): the parallel modules as they were before the launch work, frozen in
  ``ab_patches/parallel_old_{context,worker,dsm,layout,toc}.py`` (imports made absolute;
  queue and latch are the tree's own).  A's postmaster preloads
  ``bgwlab.parallel.examples`` and ``parallel_old_worker`` -- which, as the old package's
  ``__init__`` did, loads the leader's side too -- so its image is the old one.
* **B** ("new"): ``bgwlab.parallel`` as it is, its postmaster preloading what
  ``bench_parallel.py`` preloads (``bgwlab.parallel.examples``, ``bgwlab.parallel.worker``).

Per trial it also records the postmaster's CPU time over the whole trial (launch to the
end of the ``with`` block, from ``/proc/PID/schedstat``) and this leader's CPU time from
the constructor to the end instant.  ``--pool`` adds ``multiprocessing.Pool(4)`` start-up
to first result (``bench_parallel``'s ``mp_pool``) to the same rounds, so that each
side's ratio to it can be read from one run.

Before the measured clusters start, each side's cluster is started and stopped once: the
postmaster keeps its bytecode in a private cache (``Cluster.start``), so neither side's
image carries the compiler's garbage.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE / "ab_patches"))

PRELOAD = {"A": ("bgwlab.parallel.examples", "parallel_old_worker"),
           "B": ("bgwlab.parallel.examples", "bgwlab.parallel.worker")}
ENTRIES = {"attach": "bgwlab.parallel.examples:do_nothing",
           "first_message": "bgwlab.parallel.examples:first_message"}
CTX = mp.get_context("fork")


def _cpu_ns(pid) -> int:
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def _extra(patch: str) -> tuple:
    """A patch given as a path: its directory joins sys.path (the postmaster inherits it)."""
    if not patch:
        return ()
    path = Path(patch)
    if path.suffix == ".py":
        sys.path.insert(0, str(path.resolve().parent))
        return (path.stem,)
    return (patch,)


def _task():
    return 1


def trial(context_class, backend, kind: str, pm_pid: int) -> dict:
    """One launch of 4 workers; the times of bench_parallel's launch4 row."""
    pm0 = _cpu_ns(pm_pid)
    me0 = _cpu_ns("self")
    t0 = time.monotonic_ns()
    with context_class(backend, ENTRIES[kind], nworkers=4) as pcxt:
        if pcxt.launch() != 4:
            raise RuntimeError("fewer than 4 worker slots")
        if kind == "attach":
            pcxt.wait_for_attach()
        else:
            next(iter(pcxt.messages()))
        t1 = time.monotonic_ns()
        me1 = _cpu_ns("self")
        if kind == "attach":
            pcxt.wait_for_finish()
    return dict(ms=(t1 - t0) / 1e6, leader_cpu_ms=(me1 - me0) / 1e6,
                pm_cpu_ms=(_cpu_ns(pm_pid) - pm0) / 1e6)


def pool_trial() -> dict:
    t0 = time.monotonic_ns()
    pool = CTX.Pool(4)
    pool.apply_async(_task).get()
    t1 = time.monotonic_ns()
    pool.terminate()
    pool.join()
    return dict(ms=(t1 - t0) / 1e6)


def _pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q / 100 * len(xs)))]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=150, help="trials per (side, kind)")
    ap.add_argument("--kinds", default="attach,first_message")
    ap.add_argument("--pool", action="store_true", help="also time multiprocessing.Pool(4)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--a", choices=("old", "new"), default="old",
                    help="new: A runs the tree too (to A/B a --patch-* alone)")
    ap.add_argument("--patch-a", default="", help="a module A's postmaster also preloads (a patch)")
    ap.add_argument("--patch-b", default="", help="a module B's postmaster also preloads (a patch)")
    ap.add_argument("--prepatch-b", default="",
                    help="a module B's postmaster preloads first, before bgwlab.parallel (a patch "
                         "that replaces modules of the image)")
    args = ap.parse_args(argv)
    from bgwlab import Cluster
    from bgwlab.parallel import ParallelContext as New
    from parallel_old_context import ParallelContext as Old

    kinds = args.kinds.split(",")
    classes = {"A": Old if args.a == "old" else New, "B": New}
    preload = {"A": (PRELOAD["A"] if args.a == "old" else PRELOAD["B"]) + _extra(args.patch_a),
               "B": _extra(args.prepatch_b) + PRELOAD["B"] + _extra(args.patch_b)}
    for v in "AB":  # warm the postmasters' bytecode cache (see the docstring)
        Cluster.start(max_workers=8, preload=preload[v]).stop()
    clusters = {v: Cluster.start(max_workers=8, preload=preload[v]) for v in "AB"}
    backends = {v: c.connect() for v, c in clusters.items()}
    load0 = os.getloadavg()
    cases = [(v, k) for v in "AB" for k in kinds] + ([("peer", "mp_pool")] if args.pool else [])
    rng = random.Random(args.seed)
    out = {c: [] for c in cases}
    try:
        for v in "AB":  # one untimed launch each: first-use costs out of the figures
            trial(classes[v], backends[v], "attach", clusters[v].postmaster_pid)
        for _ in range(args.n):
            order = list(cases)
            rng.shuffle(order)
            for v, k in order:
                if v == "peer":
                    out[(v, k)].append(pool_trial())
                else:
                    out[(v, k)].append(trial(classes[v], backends[v], k, clusters[v].postmaster_pid))
    finally:
        for b in backends.values():
            b.detach()
        for c in clusters.values():
            c.stop()
    load1 = os.getloadavg()
    print(f"ab_launch: n={args.n} per case, load {load0[0]:.2f} -> {load1[0]:.2f} "
          f"(1-min avg), A = {'frozen old modules' if args.a == 'old' else 'tree'}"
          f"{' + ' + args.patch_a if args.patch_a else ''}, B = tree"
          f"{' + ' + args.patch_b if args.patch_b else ''}"
          f"{' + ' + args.prepatch_b + ' (first)' if args.prepatch_b else ''}")
    pool_med = statistics.median(r["ms"] for r in out[("peer", "mp_pool")]) if args.pool else None
    if args.pool:
        xs = [r["ms"] for r in out[("peer", "mp_pool")]]
        print(f"  mp_pool            median {pool_med:7.2f} ms  p90 {_pct(xs, 90):7.2f}  p99 {_pct(xs, 99):7.2f}")
    for k in kinds:
        med = {}
        for v in "AB":
            rs = out[(v, k)]
            xs = [r["ms"] for r in rs]
            med[v] = statistics.median(xs)
            extra = "  ".join(f"{m} {statistics.median(r[m] for r in rs):6.2f}"
                              for m in ("leader_cpu_ms", "pm_cpu_ms"))
            vs_pool = f"  /Pool {med[v] / pool_med:5.2f}x" if pool_med else ""
            print(f"  {k:14s} {v}  median {med[v]:7.2f} ms  p90 {_pct(xs, 90):7.2f}  "
                  f"p99 {_pct(xs, 99):7.2f}  ({extra}){vs_pool}")
        print(f"  {k:14s} B/A median {med['B'] / med['A']:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
