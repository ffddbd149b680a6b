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
``fail_injected``.  Prints median, p99 and B / A for each, and from the postmasters' event
logs ``fork_to_signal_us`` (fork() called -> registrant signalled, successful starts),
``seen_to_signal_us`` (request seen -> registrant signalled, successful starts) and
``fail_seen_to_signal_us`` (request seen -> registrant signalled, failed forks).

``--log-off`` adds a cluster per side with ``log_events=False`` (and a registrant that does
not log there either), timed in the same rounds: it prints each side's event-logging
overhead on the start median (on / off - 1), the figure of issue 6's 5 % target.

Before the clusters start, the modules their postmasters load (``bgwlab``, the benchmark
entries, the patch) are compiled to ``__pycache__``.  The project's environment
sets ``PYTHONDONTWRITEBYTECODE``, so after an edit a postmaster would otherwise compile
from source at every start -- and the compiler's garbage stays in its heap, about 1 MB
more that every ``fork()`` copies (and A would compile its patch module, B nothing).

``--slice-ab`` (no patch): A's clusters start with ``scheduler_slice_us=None`` (the kernel's
default slice for the postmaster), B's with ``Cluster.start``'s default (a 100 us slice,
``bgwlab/sched.py``); the code is the same on both sides.  ``--wait-slice-ab`` (no patch): the same
postmasters on both sides; A's backends wait with ``wait_slice_us=None`` (the registrant
sleeps on its default slice), B's with ``Backend``'s default (100 us while a wait sleeps).
``--fork-path-ab`` (no patch): A's clusters start with ``fork_path="python"`` (the
reference fork path), B's with ``fork_path="c"`` (``bgwlab/forkpath.py``).

If the patch module has ``registrant_writer(writer)``, A's registrant writer goes through
it (a patch of the event writer changes the registrant's events too).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "ab_patches"))

import report  # noqa: E402
from run import PRELOAD  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patch", help="ab_patches/NAME.py: the old code, for A")
    ap.add_argument("--bytecode-ab", action="store_true",
                    help="no patch: A's postmasters compile bgwlab from source at start (stale or "
                         "missing __pycache__ under PYTHONDONTWRITEBYTECODE), B's load its bytecode")
    ap.add_argument("--slice-ab", action="store_true",
                    help="no patch: A's postmasters keep the kernel's default scheduler slice, "
                         "B's ask for Cluster.start's short one")
    ap.add_argument("--wait-slice-ab", action="store_true",
                    help="no patch: A's registrant waits on its default scheduler slice "
                         "(wait_slice_us=None), B's with Backend's short one; same postmasters")
    ap.add_argument("--fork-path-ab", action="store_true",
                    help="no patch: A's postmasters fork through the Python path (fork_path='python'), "
                         "B's through the C one (fork_path='c', bgwlab/forkpath.py)")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--kinds", default="start,running,death,crash,pm_cpu_ms,worker_cpu_ms")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--log-off", action="store_true",
                    help="also time starts on a log_events=False cluster per side: logging overhead")
    args = ap.parse_args(argv)
    if bool(args.patch) + args.bytecode_ab + args.slice_ab + args.wait_slice_ab + args.fork_path_ab != 1:
        ap.error("give one of --patch, --bytecode-ab, --slice-ab, --wait-slice-ab, --fork-path-ab")
    import importlib

    from bgwlab import Cluster
    from runner import Registrant

    patch = Path(args.patch).stem if args.patch else None
    kinds = args.kinds.split(",")
    genuine = "fail_genuine" in kinds
    rng = random.Random(args.seed)
    no_cache = None
    if args.bytecode_ab:
        # A's postmasters must find no bytecode and write none: an empty cache directory
        # of their own (an explicit PYTHONPYCACHEPREFIX is left alone by Cluster.start,
        # which would otherwise send them to the private cache that B's use).
        os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
        no_cache = tempfile.mkdtemp(prefix="bgwlab-ab-nocache-")
        os.environ["PYTHONPYCACHEPREFIX"] = no_cache
    else:
        compile_bytecode(patch)
    with contextlib.ExitStack() as stack:
        if no_cache is not None:
            stack.callback(shutil.rmtree, no_cache, True)
        clusters, log = {}, {}
        for v in ("A", "B"):
            if v == "B" and args.wait_slice_ab:
                # one postmaster per kind for both sides: the variable is the registrant's
                # alone, and two postmasters differ by where they run (a vCPU's steal time
                # showed as 13 % in fork() between two identical clusters)
                for k in [k for k in clusters if k.startswith("A")]:
                    clusters["B" + k[1:]], log["B" + k[1:]] = clusters[k], log[k]
                continue
            if v == "B" and args.bytecode_ab:
                os.environ.pop("PYTHONPYCACHEPREFIX")
                compile_bytecode(None)
            extra = (patch,) if v == "A" and patch else ()
            opts = {"scheduler_slice_us": None} if v == "A" and args.slice_ab else {}
            if args.fork_path_ab:
                opts["fork_path"] = "python" if v == "A" else "c"
            clusters[v] = stack.enter_context(Cluster.start(max_workers=8, preload=PRELOAD + extra, **opts))
            log[v] = True
            if args.log_off:
                clusters[v + "_off"] = stack.enter_context(
                    Cluster.start(max_workers=8, preload=PRELOAD + extra, log_events=False, **opts))
                log[v + "_off"] = False
            if genuine:
                from bgwlab.pg.cgroup import pids_limit

                c = stack.enter_context(Cluster.start(max_workers=8, preload=PRELOAD + extra, **opts))
                clusters[v + "_fail"] = c
                log[v + "_fail"] = True
                stack.enter_context(pids_limit(c.postmaster_pid))
        reg = Registrant()
        stack.callback(reg.close)
        reg.attach({k: [str(c.directory), log[k]] + ([None] if k.startswith("A") and args.wait_slice_ab else [])
                    for k, c in clusters.items()})
        hook = None
        if patch and "registrant_writer" in (HERE / "ab_patches" / f"{patch}.py").read_text():
            hook = importlib.import_module(patch).registrant_writer
        if hook is not None:
            for k in reg.backends:
                if k.startswith("A"):
                    reg.backends[k].events = hook(reg.backends[k].events)
        samples: dict[str, list[float]] = {}
        tasks = []
        for v in ("A", "B"):
            if {"start", "running", "death", "pm_cpu_ms", "worker_cpu_ms"} & set(kinds):
                tasks.append((v, "timed"))
                if args.log_off:
                    tasks.append((v + "_off", "timed"))
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
        for v in ("A", "B") if not args.wait_slice_ab else ():  # (one postmaster: no sides to tell)
            # inside the postmaster, from its event log: fork() called / request seen ->
            # registrant signalled (the critical section)
            marks: dict = {}
            for c in (clusters[v], clusters.get(v + "_fail")):
                for e in c.events() if c is not None else ():
                    if e.kind in ("fork_attempted", "request_seen", "notified"):
                        m = marks.setdefault((c.directory, e.slot, e.generation), {})
                        m.setdefault(e.kind if e.kind != "notified" else e.detail.get("reason"), e.t_ns)
            samples[f"{v}.fork_to_signal_us"] = [
                (m["forked"] - m["fork_attempted"]) / 1e3 for m in marks.values()
                if "forked" in m and "fork_attempted" in m]
            samples[f"{v}.seen_to_signal_us"] = [
                (m["forked"] - m["request_seen"]) / 1e3 for m in marks.values()
                if "forked" in m and "request_seen" in m]
            samples[f"{v}.fail_seen_to_signal_us"] = [
                (m["fork failed"] - m["request_seen"]) / 1e3 for m in marks.values()
                if "fork failed" in m and "request_seen" in m]
    kinds = kinds + ["fork_to_signal_us", "seen_to_signal_us", "fail_seen_to_signal_us"]
    what = (f"{patch} (the old code)" if patch else
            "the code as it is, postmasters with the kernel's default scheduler slice" if args.slice_ab else
            "the code as it is, a registrant that waits on its default slice (wait_slice_us=None)"
            if args.wait_slice_ab else
            "the code as it is, postmasters on the Python fork path (B: the C one)" if args.fork_path_ab else
            "the code as it is, bgwlab compiled from source by each postmaster")
    print(f"A = {what}, B = the code as it is; n = {args.n} each, interleaved")
    print(f"postmasters' scheduler slice (ns; 0 = the kernel's default): "
          f"A {clusters['A'].scheduler_slice_ns}, B {clusters['B'].scheduler_slice_ns}")
    print(f"{'kind':<16} {'A median':>9} {'B median':>9} {'B/A':>6}   {'A p99':>8} {'B p99':>8} {'B/A':>6}")
    for kind in kinds:
        a, b = samples.get(f"A.{kind}"), samples.get(f"B.{kind}")
        if not a or not b:
            continue
        am, bm = report.percentile(a, 0.5), report.percentile(b, 0.5)
        ap99, bp99 = report.percentile(a, 0.99), report.percentile(b, 0.99)
        print(f"{kind:<22} {am:>9.3f} {bm:>9.3f} {bm / am:>6.2f}   {ap99:>8.3f} {bp99:>8.3f} {bp99 / ap99:>6.2f}")
    if args.log_off:
        for v in ("A", "B"):
            on, off = samples.get(f"{v}.start"), samples.get(f"{v}_off.start")
            if on and off:
                m_on, m_off = report.percentile(on, 0.5), report.percentile(off, 0.5)
                print(f"{v}: event logging adds {(m_on / m_off - 1) * 100:+.1f} % to the start median "
                      f"({m_on:.3f} on vs {m_off:.3f} ms off; p99 {report.percentile(on, 0.99):.3f} vs "
                      f"{report.percentile(off, 0.99):.3f})")
    print(f"load average at end: {os.getloadavg()}")
    return 0


def _bytecode_sources(patch):
    files = sorted((HERE.parent / "bgwlab").glob("*.py")) + [HERE / "bench_entry.py"]
    return files + (sorted((HERE / "ab_patches").glob("*.py")) if patch else [])  # (patches import patches)


def compile_bytecode(patch) -> None:
    """Write the bytecode of what the postmasters load, where they will look for it: the
    private cache that ``Cluster.start()`` gives them under PYTHONDONTWRITEBYTECODE
    (``cluster._bytecode_to_private_cache``), else ``__pycache__`` -- as an import that may
    write bytecode would (a fresh file is rewritten with the same content).  Otherwise the
    first postmaster to start after an edit (A's) compiles from source, and the compiler's
    garbage stays in its heap."""
    import py_compile

    from bgwlab.cluster import _bytecode_to_private_cache

    env = dict(os.environ)
    _bytecode_to_private_cache(env)
    saved, sys.pycache_prefix = sys.pycache_prefix, env.get("PYTHONPYCACHEPREFIX")
    try:
        for f in _bytecode_sources(patch):
            py_compile.compile(str(f), doraise=True)
    finally:
        sys.pycache_prefix = saved


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
