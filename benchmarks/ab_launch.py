"""A/B of launch + attach of 4 parallel workers: the frozen old code (A) against the tree (B).

    .venv/bin/python benchmarks/ab_launch.py [--n 150] [--kinds attach,first_message,floor] [--pool]

Issue 13 item 7 times ``bench_parallel.py``'s ``launch4`` row: from before
``ParallelContext(...)`` to ``wait_for_attach()`` returning with 4 workers attached
(``attach``), or to the first message from a worker (``first_message``).  This script
times exactly that on two clusters, in one run, interleaved (every round runs each
(side, kind) once, in a shuffled order), so that the machine's drift hits both alike:

* **A** ("old", the default): the parallel modules as they were before the launch work,
  frozen in ``ab_patches/parallel_old_{context,worker,dsm,layout,toc}.py`` (imports made
  absolute; queue and latch are the tree's own).  A's postmaster preloads
  ``bgwlab.parallel.examples`` and ``parallel_old_worker`` -- which, as the old package's
  ``__init__`` did, loads the leader's side too -- so its image is the old one.
  ``--a s6``: the same five modules as they were before session 6's work on the attach
  row (``ab_patches/parallel_s6_*.py``, frozen at c530d2a); ``--a new``: the tree.
  ``--a s6c`` / ``--a s7``: the worker's side alone -- both postmasters preload the tree
  and the frozen worker modules (``pl_*_s6c.py``, before session 7; ``pl_*_s7.py``:
  worker, latch, mq, layout, toc and dsm, frozen at 913c416, before session 8), the same
  image; A's workers run ``pl_worker_<a>:main``, B's the tree's; both leaders are the tree.
  (Since session 8 both postmasters also rehearse the tree's worker path at import
  (``worker._rehearse``), which warms some of what A's frozen copy uses too: an A/B of
  ``s7`` understates the rehearsal's gain.  ``--prepatch-a ab_patches/pl_norehearsal_s7.py``
  with ``--a new`` times the rehearsal alone: A's postmaster does not rehearse.)
* **B** ("new"): ``bgwlab.parallel`` as it is, its postmaster preloading what
  ``bench_parallel.py`` preloads (``bgwlab.parallel.examples``, ``bgwlab.parallel.worker``).

Per trial it also records the postmaster's CPU time over the whole trial (launch to the
end of the ``with`` block, from ``/proc/PID/schedstat``) and this leader's CPU time from
the constructor to the end instant.  ``--pool`` adds ``multiprocessing.Pool(4)`` start-up
to first result (``bench_parallel``'s ``mp_pool``) and to all four workers having run
their initializer (``mp_pool.all4``, the peer of ``attach``) to the same rounds, so that
each side's ratio to them can be read from one run.  (A pool forks *this* process: its
figures grow with this process's image, which is far smaller here than in
``bench_parallel.py``: ``--like-bench`` first imports what that process holds -- its
modules, ``tqdm.auto``, ``numpy`` -- so that the ratios compare.)

``--faults``: both postmasters also preload ``ab_patches/pl_faults.py``, and every
parallel worker reports its minor (copy-on-write) faults and CPU time from fork to the
end of its ``main``; each trial keeps the mean of its 4 workers, the summary their medians.

The kind ``floor`` is the engine alone, no parallel machinery: four workers registered
(notify=True, as ParallelContext registers them) whose entry point writes one byte into a
FIFO (``ab_patches/launch_floor.py``), timed to the fourth byte -- four workers forked and
each having run its first line.  Both postmasters preload that module.

Before the measured clusters start, each side's cluster is started and stopped once: the
postmaster keeps its bytecode in a private cache (``Cluster.start``), so neither side's
image carries the compiler's garbage.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import select
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE / "ab_patches"))
sys.path.insert(1, str(HERE))  # (bench_parallel, for --like-bench)

PRELOAD = {"A": ("bgwlab.parallel.examples", "parallel_old_worker", "launch_floor"),
           "s6": ("bgwlab.parallel.examples", "parallel_s6_worker", "launch_floor"),
           "B": ("bgwlab.parallel.examples", "bgwlab.parallel.worker", "launch_floor"),
           "s6c": ("bgwlab.parallel.examples", "bgwlab.parallel.worker", "launch_floor", "pl_worker_s6c"),
           "s7": ("bgwlab.parallel.examples", "bgwlab.parallel.worker", "launch_floor", "pl_worker_s7")}
ENTRIES = {"attach": "bgwlab.parallel.examples:do_nothing",
           "first_message": "bgwlab.parallel.examples:first_message"}
FLOOR_FIFO = f"/tmp/ab_launch_floor.{os.getpid()}"
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


def floor_trial(backend, pm_pid: int, fifo_fd: int) -> dict:
    """The engine alone: 4 workers registered, to the 4th byte their entry point writes."""
    from bgwlab import NEVER_RESTART, WorkerSpec

    pm0 = _cpu_ns(pm_pid)
    me0 = _cpu_ns("self")
    t0 = time.monotonic_ns()
    handles = [backend.register_dynamic_worker(WorkerSpec(
        name=f"floor {i}", entry="launch_floor:up", extra=FLOOR_FIFO.encode(),
        restart=NEVER_RESTART, notify=True)) for i in range(4)]
    got = 0
    while got < 4:
        select.select([fifo_fd], [], [])
        try:
            got += len(os.read(fifo_fd, 4 - got))
        except BlockingIOError:
            pass
    t1 = time.monotonic_ns()
    me1 = _cpu_ns("self")
    for h in handles:
        h.wait_for_shutdown()
    return dict(ms=(t1 - t0) / 1e6, leader_cpu_ms=(me1 - me0) / 1e6,
                pm_cpu_ms=(_cpu_ns(pm_pid) - pm0) / 1e6)


FAULTS_DIR = ""  # --faults: where the workers write their figures (ab_patches/pl_faults.py)


def _worker_costs(pm_pid: int) -> dict:
    """The mean minor faults and CPU (ms) of the workers `pm_pid` forked since the last call."""
    if not FAULTS_DIR:
        return {}
    path = f"{FAULTS_DIR}/{pm_pid}"
    try:
        with open(path) as f:
            rows = [tuple(map(int, line.split())) for line in f if line.strip()]
        os.unlink(path)
    except FileNotFoundError:
        rows = []
    if not rows:
        return {}
    return dict(w_faults=sum(r[0] for r in rows) / len(rows),
                w_cpu_ms=sum(r[1] for r in rows) / len(rows) / 1e6)


def trial(context_class, backend, kind: str, pm_pid: int, fifo_fd: int = -1,
          worker_entry: str = "") -> dict:
    """One launch of 4 workers; the times of bench_parallel's launch4 row."""
    if kind == "floor":
        return floor_trial(backend, pm_pid, fifo_fd)
    if worker_entry:
        sys.modules[context_class.__module__].WORKER_ENTRY = worker_entry  # read by launch()
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
                pm_cpu_ms=(_cpu_ns(pm_pid) - pm0) / 1e6, **_worker_costs(pm_pid))


def _report_up(fd: int) -> None:
    os.write(fd, b"u")


def pool_trial(kind: str = "mp_pool") -> dict:
    """bench_parallel's mp_pool (first result) or mp_pool.all4 (4 initializers ran)."""
    if kind == "mp_pool":
        t0 = time.monotonic_ns()
        pool = CTX.Pool(4)
        pool.apply_async(_task).get()
        t1 = time.monotonic_ns()
        pool.terminate()
        pool.join()
        return dict(ms=(t1 - t0) / 1e6)
    r, w = os.pipe()
    try:
        t0 = time.monotonic_ns()
        pool = CTX.Pool(4, initializer=_report_up, initargs=(w,))
        got = 0
        while got < 4:
            got += len(os.read(r, 4 - got))
        t1 = time.monotonic_ns()
        pool.terminate()
        pool.join()
    finally:
        os.close(r)
        os.close(w)
    return dict(ms=(t1 - t0) / 1e6)


def _pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q / 100 * len(xs)))]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=150, help="trials per (side, kind)")
    ap.add_argument("--kinds", default="attach,first_message")
    ap.add_argument("--pool", action="store_true",
                    help="also time multiprocessing.Pool(4): to the first result and to all 4 up")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--like-bench", action="store_true",
                    help="first import what bench_parallel.py's process holds (its modules, "
                         "tqdm.auto, numpy): the leader, and the pools' forks, get its image")
    ap.add_argument("--faults", action="store_true",
                    help="report each parallel worker's minor faults and CPU, fork to end of main")
    ap.add_argument("--a", choices=("old", "s6", "new", "s6c", "s7"), default="old",
                    help="old: parallel_old_*; s6: parallel_s6_* (the tree before session 6's "
                         "launch work); new: A runs the tree too (to A/B a --patch-* alone); s6c: A's "
                         "workers run pl_worker_s6c (the worker's side before session 7); s7: A's workers "
                         "run pl_worker_s7 (pl_{worker,latch,mq,layout,toc,dsm}_s7: the worker's "
                         "side before session 8)")
    ap.add_argument("--patch-a", default="", help="a module A's postmaster also preloads (a patch)")
    ap.add_argument("--patch-b", default="", help="a module B's postmaster also preloads (a patch)")
    ap.add_argument("--prepatch-a", default="",
                    help="a module A's postmaster preloads first, before bgwlab.parallel")
    ap.add_argument("--prepatch-b", default="",
                    help="a module B's postmaster preloads first, before bgwlab.parallel (a patch "
                         "that replaces modules of the image)")
    args = ap.parse_args(argv)
    if args.like_bench:
        import numpy  # noqa: F401
        from tqdm.auto import tqdm  # noqa: F401

        import bench_parallel  # noqa: F401
    from bgwlab import Cluster
    from bgwlab.parallel import ParallelContext as New
    if args.a == "old":
        from parallel_old_context import ParallelContext as Old
    elif args.a == "s6":
        from parallel_s6_context import ParallelContext as Old
    else:
        Old = New
    global FAULTS_DIR
    if args.faults:
        import tempfile

        FAULTS_DIR = tempfile.mkdtemp(prefix="ab_launch_faults.")
        os.environ["BGWLAB_AB_FAULTS_DIR"] = FAULTS_DIR  # (the postmasters inherit it)
    frozen = args.a in ("s6c", "s7")  # A's workers run a frozen worker side, the leaders the tree
    entries = {"A": f"pl_worker_{args.a}:main" if frozen else "",
               "B": "bgwlab.parallel.worker:main" if frozen else ""}
    tail = (("pl_faults", "pl_faults_s7") if args.a == "s7" else ("pl_faults",)) if args.faults else ()

    kinds = args.kinds.split(",")
    classes = {"A": Old, "B": New}
    preload = {"A": _extra(args.prepatch_a) + {"old": PRELOAD["A"], "s6": PRELOAD["s6"], "new": PRELOAD["B"],
                     "s6c": PRELOAD["s6c"], "s7": PRELOAD["s7"]}[args.a] + _extra(args.patch_a) + tail,
               "B": _extra(args.prepatch_b) + PRELOAD[args.a if frozen else "B"]
                    + _extra(args.patch_b) + tail}
    for v in "AB":  # warm the postmasters' bytecode cache (see the docstring)
        Cluster.start(max_workers=8, preload=preload[v]).stop()
    clusters = {v: Cluster.start(max_workers=8, preload=preload[v]) for v in "AB"}
    backends = {v: c.connect() for v, c in clusters.items()}
    load0 = os.getloadavg()
    pools = ("mp_pool", "mp_pool.all4")
    cases = [(v, k) for v in "AB" for k in kinds] + ([("peer", p) for p in pools] if args.pool else [])
    rng = random.Random(args.seed)
    out = {c: [] for c in cases}
    fifo_fd = -1
    if "floor" in kinds:
        os.mkfifo(FLOOR_FIFO, 0o600)
        fifo_fd = os.open(FLOOR_FIFO, os.O_RDWR | os.O_NONBLOCK)
    try:
        for v in "AB":  # one untimed launch each: first-use costs out of the figures
            trial(classes[v], backends[v], "attach", clusters[v].postmaster_pid,
                  worker_entry=entries[v])
        for _ in range(args.n):
            order = list(cases)
            rng.shuffle(order)
            for v, k in order:
                if v == "peer":
                    out[(v, k)].append(pool_trial(k))
                else:
                    out[(v, k)].append(trial(classes[v], backends[v], k, clusters[v].postmaster_pid,
                                             fifo_fd, entries[v]))
    finally:
        if fifo_fd >= 0:
            os.close(fifo_fd)
            os.unlink(FLOOR_FIFO)
        for b in backends.values():
            b.detach()
        for c in clusters.values():
            c.stop()
        if FAULTS_DIR:
            import shutil

            shutil.rmtree(FAULTS_DIR, ignore_errors=True)
    load1 = os.getloadavg()
    print(f"ab_launch: n={args.n} per case, load {load0[0]:.2f} -> {load1[0]:.2f} "
          f"(1-min avg), A = {dict(old='parallel_old_*', s6='parallel_s6_*', new='tree', s6c='tree', s7='tree')[args.a]}"
          f"{' + ' + args.patch_a if args.patch_a else ''}"
          f"{' + ' + args.prepatch_a + ' (first)' if args.prepatch_a else ''}"
          f"{f' (workers: pl_worker_{args.a})' if frozen else ''}, B = tree"
          f"{' + ' + args.patch_b if args.patch_b else ''}"
          f"{' + ' + args.prepatch_b + ' (first)' if args.prepatch_b else ''}")
    pool_med = {}
    for p in (pools if args.pool else ()):
        xs = [r["ms"] for r in out[("peer", p)]]
        pool_med[p] = statistics.median(xs)
        print(f"  {p:17s}  median {pool_med[p]:7.2f} ms  p90 {_pct(xs, 90):7.2f}  p99 {_pct(xs, 99):7.2f}")
    for k in kinds:
        med = {}
        for v in "AB":
            rs = out[(v, k)]
            xs = [r["ms"] for r in rs]
            med[v] = statistics.median(xs)
            extra = "  ".join(f"{m} {statistics.median(r[m] for r in rs):6.2f}"
                              for m in ("leader_cpu_ms", "pm_cpu_ms", "w_faults", "w_cpu_ms")
                              if all(m in r for r in rs))
            peer = "mp_pool" if k == "first_message" else "mp_pool.all4"
            vs_pool = f"  /{peer} {med[v] / pool_med[peer]:5.2f}x" if pool_med else ""
            print(f"  {k:14s} {v}  median {med[v]:7.2f} ms  p90 {_pct(xs, 90):7.2f}  "
                  f"p99 {_pct(xs, 99):7.2f}  ({extra}){vs_pool}")
        print(f"  {k:14s} B/A median {med['B'] / med['A']:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
