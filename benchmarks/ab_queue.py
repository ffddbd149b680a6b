"""A/B of the queue and latch (issue 13 item 6): frozen old code (A) against the tree (B),
per CPU placement, with the pipe peers in the same rounds.

    flock /tmp/bgwlab-bench.lock .venv/bin/python benchmarks/ab_queue.py [--rounds 10]
        [--placements same,diff,free] [--cases tp1m,tp8k,rt] [--peers os_pipe,mp_pipe]
        [--a s6|tree] [--env-a BGWLAB_AB_FROZEN=latch] [--env-b K=V] [--hog N]
        [--slow-wake-us N] [--seed S] [--csv FILE]

Two leader processes, one per side, each with its own cluster: **A** imports
``ab_patches/queue_s6.py`` first (and its postmaster preloads it first), which loads
``bgwlab.parallel.mq`` and ``bgwlab.parallel.latch`` from the frozen copies
``ab_patches/mq_s6.py`` / ``latch_s6.py``; **B** runs the tree.  This process sends
each side one trial at a time, every round in a shuffled order of (side, case,
placement) and (peer, case, placement), so that the machine's drift hits all alike.

Cases (the instants of ``bench_parallel.py``):

* ``tp1m`` / ``tp8k``: throughput, 32 x 1 MiB / 4096 x 8 KiB messages, a
  ``ParallelContext`` worker (``pinned_blast``: ``examples.blast`` that pins itself
  first) sending on its 64 KiB data queue, flush per message, the leader reading
  ``messages()``; from the worker's first ``send()`` call to the leader holding the last
  message.  MB/s.
* ``rt``: 64 B round trip through ``examples.MqEcho`` (two 64 KiB queues, an echoing
  bgwlab worker, pinned from outside after a first round trip); median of 2000, us.

Placements: ``same`` -- leader and counterpart pinned (``os.sched_setaffinity``) to one
CPU, ``diff`` -- to two different CPUs, ``free`` -- unpinned.  The CPU is drawn per
trial.  Note: a leader's latch decides whether it may spin from its affinity at its
first wait (``latch.spin_ns``); the sides' first wait is an unpinned warm-up, so in
``same`` only the worker knows it is pinned (unless the code under test looks again).

Peers (run by this process, children by ``fork``): ``os_pipe`` (8-byte length prefix,
``writev`` / ``readv``) and ``mp_pipe`` (``Pipe(duplex=False)``, ``send_bytes`` /
``recv_bytes``) for tp1m / tp8k, ``mp_pipe`` (duplex) for rt; the child pins itself.

Which frozen modules A loads: ``--env-a BGWLAB_AB_FROZEN=...`` -- ``mq``, ``latch`` (the
default is both), or ``mq=mq_s6b`` for another frozen step (ab_patches/queue_s6.py);
``--a tree`` runs the tree on both sides (an A/A run, or an ``--env-*`` alone).  Machine
states: ``--hog N`` runs N busy loops during the rounds (other work on the CPUs);
``--slow-wake-us N`` makes every latch sleep return N us late on both sides
(ab_patches/slow_wake.py: a halted vCPU's wakeup on a busy host; the pipe peers are not
slowed, so compare them only without it).

Prints per (case, placement): each side's median, n, B/A of the medians and the median
of the per-round B/A ratios, the leader's minor faults per trial, and bgwlab (B) / each
peer.  ``--csv FILE`` keeps samples.
"""

from __future__ import annotations

import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PLAN = struct.Struct("<QQQq")  # messages, size, flush, cpu (-1: unpinned)
STAMP = struct.Struct("<Q")
RING = 65536
MESSAGES = {"tp1m": (1 << 20, 32), "tp8k": (8192, 4096)}
RT_N = 2000


def _all_cpus() -> set:
    return set(range(os.cpu_count() or 1))


def _pin(cpu: int) -> None:
    os.sched_setaffinity(0, {cpu} if cpu >= 0 else _all_cpus())


# -- worker entries (run in bgwlab workers: imports stay light) ----------------------------------
def pinned_blast(worker) -> None:
    """``examples.blast``, pinned first to the CPU in the payload (-1: not pinned)."""
    import time

    n, size, flush, cpu = PLAN.unpack_from(worker.payload)
    if cpu >= 0:
        os.sched_setaffinity(0, {cpu})
    flush = bool(flush)
    body = bytes(size)
    t0 = time.monotonic_ns()
    if n:
        worker.send(STAMP.pack(t0) + body[STAMP.size:], flush=flush)
    send = worker.send
    for _ in range(n - 1):
        send(body, flush=flush)


# -- one side (a leader process with its own cluster) ----------------------------------------------
def _rusage():
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_minflt, r.ru_nvcsw, r.ru_nivcsw


def tp_trial(backend, case: str, cpus) -> dict:
    import time

    from bgwlab.parallel import ParallelContext

    size, n = MESSAGES[case]
    lcpu, wcpu = cpus
    _pin(lcpu)
    try:
        f0 = _rusage()
        with ParallelContext(backend, "ab_queue:pinned_blast", nworkers=1,
                             payload=PLAN.pack(n, size, 1, wcpu), queue_size=RING) as pcxt:
            if pcxt.launch() != 1:
                raise RuntimeError("no worker slot")
            total, first = 0, None
            for _number, msg in pcxt.messages():
                if first is None:
                    first = msg
                total += len(msg)
            t1 = time.monotonic_ns()
            f1 = _rusage()
            pcxt.wait_for_finish()
    finally:
        _pin(-1)
    if total != n * size:
        raise RuntimeError(f"got {total} bytes, not {n * size}")
    t0 = STAMP.unpack_from(first)[0]
    return dict(value=total / ((t1 - t0) / 1e9) / 1e6, unit="MB/s",
                minflt=f1[0] - f0[0], nvcsw=f1[1] - f0[1], nivcsw=f1[2] - f0[2])


def rt_trial(backend, cpus) -> dict:
    import statistics
    import time

    from bgwlab.backend import STARTED
    from bgwlab.parallel.examples import MqEcho

    lcpu, wcpu = cpus
    _pin(lcpu)
    msg = bytes(64)
    out = []
    try:
        with MqEcho(backend, RING) as echo:
            echo.round_trip(msg)  # attached
            status, pid = echo.handle.get_pid()
            if status is not STARTED:
                raise RuntimeError("echo worker not running")
            if wcpu >= 0:
                os.sched_setaffinity(pid, {wcpu})
            rt = echo.round_trip
            rt(msg)
            now = time.monotonic_ns
            for _ in range(RT_N):
                t0 = now()
                rt(msg)
                out.append(now() - t0)
    finally:
        _pin(-1)
    return dict(value=statistics.median(out) / 1e3, unit="us")


def side_main(name: str) -> int:
    import json

    sys.path.insert(0, HERE)
    sys.path.insert(0, os.path.join(HERE, "ab_patches"))
    sys.path.insert(0, os.path.dirname(HERE))
    first = ()
    if name == "A":
        import queue_s6  # noqa: F401  (before anything imports bgwlab.parallel)

        first = ("queue_s6",)
    if os.environ.get("BGWLAB_AB_SLOW_WAKE_US"):
        import slow_wake  # noqa: F401

        first += ("slow_wake",)
    from bgwlab import Cluster

    preload = first + ("bgwlab.parallel.examples", "bgwlab.parallel.worker", "ab_queue")
    Cluster.start(max_workers=4, preload=preload).stop()  # warm the bytecode cache
    c = Cluster.start(max_workers=4, preload=preload)
    b = c.connect()
    try:
        import bgwlab.parallel.mq as mq

        import bgwlab.parallel.latch as latch

        print(json.dumps(dict(ready=name, mq=mq.__file__, latch=latch.__file__)), flush=True)
        tp_trial(b, "tp8k", (-1, -1))  # warm-ups, unpinned (the latch's first wait)
        rt_trial(b, (-1, -1))
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd["case"] == "rt":
                r = rt_trial(b, tuple(cmd["cpus"]))
            else:
                r = tp_trial(b, cmd["case"], tuple(cmd["cpus"]))
            print(json.dumps(r), flush=True)
    finally:
        b.detach()
        c.stop()
    return 0


# -- peers (this process) ---------------------------------------------------------------------------
from bench_parallel import _read_exact, _write_all  # noqa: E402  (the same peers as the bench)


def _os_pipe_sender(w, n, size, cpu):
    import time

    if cpu >= 0:
        os.sched_setaffinity(0, {cpu})
    body = bytes(size)
    hdr = STAMP.pack(size)
    _write_all(w, [hdr, STAMP.pack(time.monotonic_ns()) + body[8:]])
    for _ in range(n - 1):
        _write_all(w, [hdr, body])
    os.close(w)


def _mp_pipe_sender(conn, n, size, cpu):
    import time

    if cpu >= 0:
        os.sched_setaffinity(0, {cpu})
    body = bytes(size)
    conn.send_bytes(STAMP.pack(time.monotonic_ns()) + body[8:])
    for _ in range(n - 1):
        conn.send_bytes(body)
    conn.close()


def _mp_pipe_echo(conn, other, cpu):
    other.close()
    if cpu >= 0:
        os.sched_setaffinity(0, {cpu})
    try:
        while True:
            conn.send_bytes(conn.recv_bytes())
    except EOFError:
        pass


def peer_trial(peer: str, case: str, cpus) -> dict:
    import multiprocessing as mp
    import statistics
    import time

    ctx = mp.get_context("fork")
    lcpu, wcpu = cpus
    _pin(lcpu)
    try:
        if case == "rt":
            a, b = ctx.Pipe()
            p = ctx.Process(target=_mp_pipe_echo, args=(b, a, wcpu))
            p.start()
            b.close()
            msg = bytes(64)
            for _ in range(2):
                a.send_bytes(msg)
                a.recv_bytes()
            out = []
            now = time.monotonic_ns
            for _ in range(RT_N):
                t0 = now()
                a.send_bytes(msg)
                a.recv_bytes()
                out.append(now() - t0)
            a.close()
            p.join()
            return dict(value=statistics.median(out) / 1e3, unit="us")
        size, n = MESSAGES[case]
        total = 0
        if peer == "os_pipe":
            r, w = os.pipe()
            p = ctx.Process(target=_os_pipe_sender, args=(w, n, size, wcpu))
            p.start()
            os.close(w)
            first = _read_exact(r, STAMP.unpack(_read_exact(r, 8))[0])
            total += len(first)
            for _ in range(n - 1):
                total += len(_read_exact(r, STAMP.unpack(_read_exact(r, 8))[0]))
            t1 = time.monotonic_ns()
            os.close(r)
        else:
            r, w = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_mp_pipe_sender, args=(w, n, size, wcpu))
            p.start()
            w.close()
            first = r.recv_bytes()
            total += len(first)
            for _ in range(n - 1):
                total += len(r.recv_bytes())
            t1 = time.monotonic_ns()
            r.close()
        p.join()
    finally:
        _pin(-1)
    t0 = STAMP.unpack_from(first)[0]
    return dict(value=total / ((t1 - t0) / 1e9) / 1e6, unit="MB/s")


# -- the orchestrator -------------------------------------------------------------------------------
def _cpus(placement: str, rng) -> tuple:
    if placement == "free":
        return (-1, -1)
    c = rng.randrange(2)
    return (c, c) if placement == "same" else (c, 1 - c)


def main(argv=None) -> int:
    import argparse
    import json
    import random
    import statistics
    import subprocess

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--side", help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--placements", default="same,diff,free")
    ap.add_argument("--cases", default="tp1m,tp8k,rt")
    ap.add_argument("--peers", default="os_pipe,mp_pipe", help="'' for none")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--csv", default="")
    ap.add_argument("--env-a", action="append", default=[], metavar="KEY=VALUE",
                    help="an environment variable for side A only (e.g. BGWLAB_LATCH_SPIN_US=0)")
    ap.add_argument("--env-b", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--hog", type=int, default=0,
                    help="run this many busy-loop processes (unpinned) during the rounds: a "
                         "machine whose other work competes for the CPUs")
    ap.add_argument("--slow-wake-us", type=int, default=0,
                    help="both sides: a latch sleep returns this much later (ab_patches/slow_wake.py)")
    ap.add_argument("--a", choices=("s6", "tree"), default="s6",
                    help="tree: A runs the tree too (an A/A run, or to A/B an --env-* alone)")
    args = ap.parse_args(argv)
    if args.side:
        return side_main(args.side)
    placements, cases = args.placements.split(","), args.cases.split(",")
    peers = [p for p in args.peers.split(",") if p]
    rng = random.Random(args.seed)
    procs = {}
    for v in "AB":
        env = dict(os.environ)
        env.update(kv.split("=", 1) for kv in (args.env_a if v == "A" else args.env_b))
        if args.slow_wake_us:
            env["BGWLAB_AB_SLOW_WAKE_US"] = str(args.slow_wake_us)
        side = "A" if v == "A" and args.a == "s6" else "B"
        procs[v] = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--side", side],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        hello = json.loads(procs[v].stdout.readline())
        print(f"side {v}: bgwlab.parallel.mq from {hello['mq']}, .latch from {hello['latch']}",
              flush=True)
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hog)]
    load0 = os.getloadavg()
    trials = [("A", c, p) for c in cases for p in placements] + [("B", c, p) for c in cases for p in placements]
    for peer in peers:
        for c in cases:
            if c == "rt" and peer != "mp_pipe":
                continue
            trials += [(peer, c, p) for p in placements]
    samples = []
    try:
        for k in range(args.rounds):
            order = list(trials)
            rng.shuffle(order)
            for who, case, placement in order:
                cpus = _cpus(placement, rng)
                if who in procs:
                    procs[who].stdin.write(json.dumps(dict(case=case, cpus=cpus)) + "\n")
                    procs[who].stdin.flush()
                    line = procs[who].stdout.readline()
                    if not line:
                        raise RuntimeError(f"side {who} died")
                    r = json.loads(line)
                else:
                    r = peer_trial(who, case, cpus)
                samples.append(dict(round=k, who=who, case=case, placement=placement, cpus=cpus, **r))
            print(f"round {k + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
        for p in procs.values():
            p.stdin.close()
        for p in procs.values():
            p.wait(timeout=60)
    load1 = os.getloadavg()
    print(f"ab_queue: rounds={args.rounds}, load {load0[0]:.2f} -> {load1[0]:.2f} (1-min avg); "
          f"A = {'frozen (ab_patches/*_s6.py, see the side lines)' if args.a == 's6' else 'tree'}"
          f"{' ' + ' '.join(args.env_a) if args.env_a else ''}, B = tree"
          f"{' ' + ' '.join(args.env_b) if args.env_b else ''}"
          f"{f'; {args.hog} busy-loop process(es) running' if args.hog else ''}"
          f"{f'; latch sleeps return {args.slow_wake_us} us late (both sides)' if args.slow_wake_us else ''}")

    def vals(who, case, pl, key="value"):
        return [s[key] for s in samples if (s["who"], s["case"], s["placement"]) == (who, case, pl)]

    for case in cases:
        for pl in placements:
            a, b = vals("A", case, pl), vals("B", case, pl)
            if not a or not b:
                continue
            unit = "us" if case == "rt" else "MB/s"
            ma, mb = statistics.median(a), statistics.median(b)
            paired = statistics.median(
                y / x for x, y in zip(vals("A", case, pl), vals("B", case, pl)))
            line = (f"{case:5s} {pl:5s} A {ma:8.1f} B {mb:8.1f} {unit:4s} (n={len(a)}/{len(b)})  "
                    f"B/A {mb / ma:5.2f}x  paired {paired:5.2f}x  "
                    f"[A p10..p90 {sorted(a)[len(a) // 10]:.0f}..{sorted(a)[len(a) * 9 // 10]:.0f}, "
                    f"B {sorted(b)[len(b) // 10]:.0f}..{sorted(b)[len(b) * 9 // 10]:.0f}]")
            if case != "rt":
                fa = statistics.median(vals("A", case, pl, "minflt"))
                fb = statistics.median(vals("B", case, pl, "minflt"))
                line += f" minflt {fa:.0f}/{fb:.0f}"
            for peer in peers:
                ps = vals(peer, case, pl)
                if ps:
                    line += f"  | {peer} {statistics.median(ps):.1f} (B/{peer} {mb / statistics.median(ps):.2f}x)"
            print(line)
    if args.csv:
        import csv

        with open(args.csv, "w", newline="") as f:
            keys = sorted({k for s in samples for k in s})
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
