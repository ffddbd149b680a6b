"""bgwlab.parallel against the standard library's IPC: queue throughput, round trip, launch.

    .venv/bin/python benchmarks/bench_parallel.py [--quick] [--rounds N] [--out DIR] [--no-save]

Every peer runs in the same run, interleaved: each round runs every (peer, case) once in
a shuffled order, so a disturbance of the machine hits all of them alike.  Every row
names its two instants:

* **throughput** (64 B, 8 KiB, 1 MiB messages, one sender, one receiver): from the
  sender's first ``send()`` call (its ``time.monotonic_ns()``, carried in the first
  message; CLOCK_MONOTONIC is one clock for all processes) to the receiver holding the
  last message as a ``bytes`` object.  bgwlab: a ``ParallelContext`` worker sending on its
  64 KiB data queue (PostgreSQL's tuple-queue size), the leader reading ``messages()``;
  ``bgwlab`` publishes (and wakes the leader) after every message, ``bgwlab.batched``
  once a quarter of the ring is pending, as PostgreSQL's tuple queues do
  (``shm_mq_send(..., force_flush=false)``, PG 15+); ``bgwlab.mq`` is the bare queue: a
  bgwlab worker (``examples.mq_echo``) sends on one shm_mq and the leader calls
  ``receive()`` (blocking), with no ParallelContext around it; ``bgwlab.mq.fork`` is the
  same queue and code with a plain ``os.fork()`` child of the leader as the sender instead
  of a bgwlab worker (the two senders, side by side).
  Peers, each in a ``multiprocessing`` fork child: ``Pipe(duplex=False)``
  (``send_bytes``/``recv_bytes``; the kernel's pipe buffer is also 64 KiB), ``Queue``
  (``put``/``get``), and a raw ``os.pipe`` with an 8-byte length prefix.
* **round trip** (64 B): from the leader's call to send to its holding the echo.  bgwlab:
  two shm_mq queues (64 KiB rings) and an echoing bgwlab worker (``examples.mq_echo``);
  peers: a duplex ``Pipe``, two ``Queue``s, two ``os.pipe``s, each with a fork child.
* **launch 4**, two pairs of instants, each peer measured on both:
  *to the first result* -- bgwlab from before ``ParallelContext(...)`` (segment created)
  to the first message from a worker (``bgwlab.first_message``); ``multiprocessing.Pool(4)``
  and ``ProcessPoolExecutor(4)`` from before the constructor to the first result of a
  task that returns at once -- and *to all four workers running* -- bgwlab to
  ``wait_for_attach()`` returning with 4 attached (``bgwlab.attach``); the pools (``.all4``)
  to the fourth byte their workers' initializer writes into a pipe (the executor starts
  its workers at the first ``submit()``).  Each bgwlab row's ratio is to the peers of its pair.

The table prints median and p99 per row, and bgwlab's ratio to each peer (throughput:
bgwlab / peer, higher is better; times: bgwlab / peer, lower is better), then the targets
of issue 13.  Under ``--out`` (default data/bench): ``parallel_<mode>.csv`` (summary),
``parallel_<mode>_samples.csv``, ``parallel_<mode>.txt`` (the printed report) and
``parallel_<mode>.meta.json`` (machine, CPUs, Python, commit, date, load, plan).

Every trial also records how the leader's thread was scheduled over it
(``/proc/thread-self/schedstat``): its share of the trial on a CPU and its share runnable
but waiting for one (``leader_on_cpu``, ``leader_waited`` in the samples and the summary).
On this 2-CPU VM the leader waited for ~0-2 % of a throughput trial; runs that met the
machine's slow state -- a ``Pipe`` round trip at ~15 us instead of ~35, 8 KiB through the
ring at ~1.5 GB/s instead of ~6 -- look like the whole run pinned to one CPU
(``taskset -c 0``), where the leader waits 30-50 % of the time.  The report counts the
throughput trials in which it waited over 20 %.

The latch's spin (``BGWLAB_LATCH_SPIN_US``, default 100 us; see ``bgwlab.parallel.latch``)
is in force for bgwlab's rows and is recorded in the metadata: on this kind of VM a
wakeup across CPUs costs ~50 us, so whether the two processes share a CPU or spin on
two decides most rows (compare a run with ``BGWLAB_LATCH_SPIN_US=0``).

Left out on purpose: a ``multiprocessing.shared_memory`` ring with a lock.  A fair one
needs the same blocking and wakeup semantics (a Condition in shared memory, i.e. a
semaphore per side) and would measure ``multiprocessing.synchronize`` more than a ring.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import datetime
import json
import multiprocessing as mp
import os
import platform
import random
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STAMP = struct.Struct("<Q")
HDR = struct.Struct("<Q")
SIZES = (64, 8192, 1 << 20)
RING = 65536
PEERS_TP = ("bgwlab", "bgwlab.batched", "bgwlab.mq", "bgwlab.mq.fork", "mp_pipe", "mp_queue", "os_pipe")
PEERS_LAUNCH = ("bgwlab.attach", "bgwlab.first_message", "mp_pool", "process_pool_executor",
                "mp_pool.all4", "process_pool_executor.all4")
# Each launch row is one of two pairs of instants, and each bgwlab row is set against the
# peers on the same pair: to the first result (a worker's first message; Pool's first
# result), and to all four workers running (4 attached; 4 pool workers ran their initializer).
LAUNCH_MINE = {"mp_pool": "bgwlab.first_message", "process_pool_executor": "bgwlab.first_message",
               "mp_pool.all4": "bgwlab.attach", "process_pool_executor.all4": "bgwlab.attach"}
CTX = mp.get_context("fork")

INSTANTS = {
    "throughput": ("sender's first send() call", "receiver holds the last message"),
    "round_trip": ("leader calls send", "leader holds the echo"),
    "launch4": ("before the constructor", "first result / all 4 workers running"),
}
LAUNCH_INSTANTS = {
    "bgwlab.attach": ("before ParallelContext(...)", "wait_for_attach() returned, 4 attached"),
    "bgwlab.first_message": ("before ParallelContext(...)", "first message from a worker received"),
    "mp_pool": ("before multiprocessing.Pool(4)", "first result of apply_async().get()"),
    "process_pool_executor": ("before ProcessPoolExecutor(4)", "first result of submit().result()"),
    "mp_pool.all4": ("before multiprocessing.Pool(4, initializer)", "all 4 workers ran their initializer"),
    "process_pool_executor.all4": ("before ProcessPoolExecutor(4, initializer)",
                                   "all 4 workers ran their initializer (the first submit() starts them)"),
}


def sched_ns() -> tuple[int, int]:
    """This thread's (time on a CPU, time runnable but waiting for one), in ns, from
    /proc/thread-self/schedstat; (0, 0) where the kernel has no schedstat."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            on_cpu, waited, _slices = f.read().split()
        return int(on_cpu), int(waited)
    except (OSError, ValueError):
        return 0, 0


def _ns() -> int:
    return time.monotonic_ns()


# -- peers: throughput senders (run in fork children) ----------------------------------------------
def _first(size: int, body: bytes) -> bytes:
    return STAMP.pack(_ns()) + body[STAMP.size:]


def _pipe_sender(conn, n, size):
    body = bytes(size)
    conn.send_bytes(_first(size, body))
    for _ in range(n - 1):
        conn.send_bytes(body)
    conn.close()


def _queue_sender(q, n, size):
    body = bytes(size)
    q.put(_first(size, body))
    for _ in range(n - 1):
        q.put(body)
    q.close()
    q.join_thread()


def _write_all(fd, parts):
    total = sum(len(p) for p in parts)
    done = os.writev(fd, parts)
    while done < total:  # a partial write: finish it part by part
        flat = b"".join(bytes(p) for p in parts)
        done += os.write(fd, flat[done:])


def _os_pipe_sender(w, n, size):
    body = bytes(size)
    hdr = HDR.pack(size)
    _write_all(w, [hdr, _first(size, body)])
    for _ in range(n - 1):
        _write_all(w, [hdr, body])
    os.close(w)


def _read_exact(fd, n) -> bytes:
    buf = bytearray(n)
    mv = memoryview(buf)
    got = 0
    while got < n:
        k = os.readv(fd, [mv[got:]])
        if k == 0:
            raise EOFError("writer closed early")
        got += k
    mv.release()
    return bytes(buf)


def tp_peer(peer: str, n: int, size: int) -> tuple[int, int, int]:
    """One throughput trial of a stdlib peer: (t_first_send, t_last_received, bytes)."""
    total = 0
    if peer == "mp_pipe":
        r, w = CTX.Pipe(duplex=False)
        p = CTX.Process(target=_pipe_sender, args=(w, n, size))
        p.start()
        w.close()
        first = r.recv_bytes()
        total += len(first)
        for _ in range(n - 1):
            total += len(r.recv_bytes())
        t1 = _ns()
        r.close()
    elif peer == "mp_queue":
        q = CTX.Queue()
        p = CTX.Process(target=_queue_sender, args=(q, n, size))
        p.start()
        first = q.get()
        total += len(first)
        for _ in range(n - 1):
            total += len(q.get())
        t1 = _ns()
        q.close()
        q.join_thread()
    elif peer == "os_pipe":
        r, w = os.pipe()
        p = CTX.Process(target=_os_pipe_sender, args=(w, n, size))
        p.start()
        os.close(w)
        first = _read_exact(r, HDR.unpack(_read_exact(r, 8))[0])
        total += len(first)
        for _ in range(n - 1):
            total += len(_read_exact(r, HDR.unpack(_read_exact(r, 8))[0]))
        t1 = _ns()
        os.close(r)
    else:
        raise ValueError(peer)
    p.join()
    return STAMP.unpack_from(first)[0], t1, total


def tp_bgwlab(backend, n: int, size: int, flush: bool = True) -> tuple[int, int, int]:
    from bgwlab.parallel import ParallelContext
    from bgwlab.parallel import examples as ex

    with ParallelContext(backend, "bgwlab.parallel.examples:blast", nworkers=1,
                         payload=ex.blast_plan(n, size, flush), queue_size=RING) as pcxt:
        if pcxt.launch() != 1:
            raise RuntimeError("no worker slot for the benchmark")
        total, first = 0, None
        for _number, msg in pcxt.messages():
            if first is None:
                first = msg
            total += len(msg)
        t1 = _ns()
        pcxt.wait_for_finish()
    return STAMP.unpack_from(first)[0], t1, total


def tp_bgwlab_mq(backend, n: int, size: int, fork: bool = False) -> tuple[int, int, int]:
    """The bare queue: a bgwlab worker (or, with fork, a fork child) sends on one shm_mq,
    the leader receive()s (blocking)."""
    from bgwlab.parallel.examples import MqEcho

    with MqEcho(backend, RING, main_arg=n << 32 | size, fork=fork) as q:
        first = q.receive()
        total = len(first)
        for _ in range(n - 1):
            total += len(q.receive())
        t1 = _ns()
    return STAMP.unpack_from(first)[0], t1, total


# -- peers: round trip -----------------------------------------------------------------------------
def _pipe_echo(conn, other):
    other.close()  # the parent's end, inherited through fork: else EOF never comes
    try:
        while True:
            conn.send_bytes(conn.recv_bytes())
    except EOFError:
        pass


def _queue_echo(qin, qout):
    while (m := qin.get()) is not None:
        qout.put(m)
    qout.close()
    qout.join_thread()


def _os_pipe_echo(r, w, others):
    for fd in others:  # the parent's ends, inherited through fork: else EOF never comes
        os.close(fd)
    try:
        while True:
            m = _read_exact(r, HDR.unpack(_read_exact(r, 8))[0])
            _write_all(w, [HDR.pack(len(m)), m])
    except EOFError:
        pass


def rt_peer(peer: str, n: int, size: int = 64) -> list[int]:
    msg = bytes(size)
    out = []
    if peer == "mp_pipe":
        a, b = CTX.Pipe()
        p = CTX.Process(target=_pipe_echo, args=(b, a))
        p.start()
        b.close()
        for _ in range(n):
            t0 = _ns()
            a.send_bytes(msg)
            a.recv_bytes()
            out.append(_ns() - t0)
        a.close()
    elif peer == "mp_queue":
        qi, qo = CTX.Queue(), CTX.Queue()
        p = CTX.Process(target=_queue_echo, args=(qi, qo))
        p.start()
        for _ in range(n):
            t0 = _ns()
            qi.put(msg)
            qo.get()
            out.append(_ns() - t0)
        qi.put(None)
        for q in (qi, qo):
            q.close()
            q.join_thread()
    elif peer == "os_pipe":
        r1, w1 = os.pipe()
        r2, w2 = os.pipe()
        p = CTX.Process(target=_os_pipe_echo, args=(r1, w2, (w1, r2)))
        p.start()
        os.close(r1)
        os.close(w2)
        hdr = HDR.pack(size)
        for _ in range(n):
            t0 = _ns()
            _write_all(w1, [hdr, msg])
            _read_exact(r2, HDR.unpack(_read_exact(r2, 8))[0])
            out.append(_ns() - t0)
        os.close(w1)
        os.close(r2)
    else:
        raise ValueError(peer)
    p.join()
    return out


def rt_bgwlab(backend, n: int, size: int = 64) -> list[int]:
    from bgwlab.parallel.examples import MqEcho

    msg = bytes(size)
    out = []
    with MqEcho(backend, RING) as echo:
        echo.round_trip(msg)  # the worker has attached: not part of a round trip
        rt = echo.round_trip
        for _ in range(n):
            t0 = _ns()
            rt(msg)
            out.append(_ns() - t0)
    return out


# -- launch 4 -------------------------------------------------------------------------------------
def _task():
    return 1


def _report_up(fd: int) -> None:
    """A pool worker's initializer: one byte into the leader's pipe (the worker is up)."""
    os.write(fd, b"u")


def _wait_for_bytes(fd: int, n: int) -> None:
    got = 0
    while got < n:
        got += len(os.read(fd, n - got))


def launch_trial(peer: str, backend=None) -> int:
    if peer.startswith("bgwlab"):
        from bgwlab.parallel import ParallelContext

        entry = "bgwlab.parallel.examples:" + ("do_nothing" if peer == "bgwlab.attach" else "first_message")
        t0 = _ns()
        with ParallelContext(backend, entry, nworkers=4) as pcxt:
            if pcxt.launch() != 4:
                raise RuntimeError("fewer than 4 worker slots for the benchmark")
            if peer == "bgwlab.attach":
                pcxt.wait_for_attach()
            else:
                next(iter(pcxt.messages()))
            t1 = _ns()
            if peer == "bgwlab.attach":
                pcxt.wait_for_finish()
        return t1 - t0
    if peer == "mp_pool":
        t0 = _ns()
        pool = CTX.Pool(4)
        pool.apply_async(_task).get()
        t1 = _ns()
        pool.terminate()
        pool.join()
        return t1 - t0
    if peer in ("mp_pool.all4", "process_pool_executor.all4"):
        r, w = os.pipe()
        try:
            t0 = _ns()
            if peer == "mp_pool.all4":
                pool = CTX.Pool(4, initializer=_report_up, initargs=(w,))
                _wait_for_bytes(r, 4)
                t1 = _ns()
                pool.terminate()
                pool.join()
            else:
                ex = concurrent.futures.ProcessPoolExecutor(4, mp_context=CTX, initializer=_report_up,
                                                            initargs=(w,))
                ex.submit(_task)
                _wait_for_bytes(r, 4)
                t1 = _ns()
                ex.shutdown(wait=True)
        finally:
            os.close(r)
            os.close(w)
        return t1 - t0
    if peer == "process_pool_executor":
        t0 = _ns()
        ex = concurrent.futures.ProcessPoolExecutor(4, mp_context=CTX)
        ex.submit(_task).result()
        t1 = _ns()
        ex.shutdown(wait=True)
        return t1 - t0
    raise ValueError(peer)


# -- the run --------------------------------------------------------------------------------------
def plan(quick: bool, rounds: int | None) -> dict:
    """Messages per throughput trial (about 32 MiB for 8 KiB / 1 MiB; quick: a tenth)."""
    if quick:
        return {"rounds": rounds or 2, "messages": {64: 2000, 8192: 400, 1 << 20: 4},
                "round_trips": 200, "launch_trials": 2}
    return {"rounds": rounds or 5, "messages": {64: 20000, 8192: 4096, 1 << 20: 32},
            "round_trips": 2000, "launch_trials": 4}


def _pct(xs, q) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(xs, dtype=float), q)) if len(xs) else float("nan")


def run(quick: bool = False, rounds: int | None = None, progress: bool = True, seed: int = 0):
    from tqdm.auto import tqdm

    from bgwlab import Cluster

    p = plan(quick, rounds)
    rng = random.Random(seed)
    samples = []  # dicts: metric, peer, size, value, unit
    cases = ([("throughput", peer, size) for size in SIZES for peer in PEERS_TP]
             + [("round_trip", peer, 64) for peer in PEERS_TP
                if peer not in ("bgwlab.batched", "bgwlab.mq", "bgwlab.mq.fork")]
             + [("launch4", peer, 0) for peer in PEERS_LAUNCH] * p["launch_trials"])
    c = Cluster.start(max_workers=8, preload=("bgwlab.parallel.examples", "bgwlab.parallel.worker"))
    b = c.connect()
    bar = tqdm(total=p["rounds"] * len(cases), desc="bench_parallel", disable=not progress)
    try:
        for k in range(p["rounds"]):
            order = list(cases)
            rng.shuffle(order)
            for metric, peer, size in order:
                first = len(samples)
                t_wall, (t_cpu, t_wait) = _ns(), sched_ns()
                if metric == "throughput":
                    n = p["messages"][size]
                    if peer.startswith("bgwlab.mq"):
                        t0, t1, total = tp_bgwlab_mq(b, n, size, fork=peer == "bgwlab.mq.fork")
                    elif peer.startswith("bgwlab"):
                        t0, t1, total = tp_bgwlab(b, n, size, peer == "bgwlab")
                    else:
                        t0, t1, total = tp_peer(peer, n, size)
                    if total != n * size:
                        raise RuntimeError(f"{peer} delivered {total} bytes, not {n * size}")
                    samples.append(dict(metric=metric, peer=peer, size=size, round=k,
                                        value=total / ((t1 - t0) / 1e9) / 1e6, unit="MB/s",
                                        elapsed_ns=t1 - t0))
                elif metric == "round_trip":
                    n = p["round_trips"]
                    xs = rt_bgwlab(b, n, size) if peer == "bgwlab" else rt_peer(peer, n, size)
                    samples.extend(dict(metric=metric, peer=peer, size=size, round=k, value=x / 1e3,
                                        unit="us", elapsed_ns=x) for x in xs)
                else:
                    x = launch_trial(peer, b)
                    samples.append(dict(metric=metric, peer=peer, size=0, round=k, value=x / 1e6,
                                        unit="ms", elapsed_ns=x))
                # how the leader's thread was scheduled over the whole trial (set-up included):
                # its share on a CPU, and its share runnable but waiting for one -- high when
                # it shares a CPU with its counterpart, as in this machine's slow state
                wall, (cpu, wait) = _ns() - t_wall, sched_ns()
                for smp in samples[first:]:
                    smp["leader_on_cpu"] = round((cpu - t_cpu) / wall, 3)
                    smp["leader_waited"] = round((wait - t_wait) / wall, 3)
                bar.update(1)
    finally:
        bar.close()
        b.detach()
        c.stop()
    return samples, p


def summarize(samples) -> list[dict]:
    rows = []
    keys = dict.fromkeys((s["metric"], s["peer"], s["size"]) for s in samples)
    for metric, peer, size in keys:
        mine = [s for s in samples if (s["metric"], s["peer"], s["size"]) == (metric, peer, size)]
        xs = [s["value"] for s in mine]
        unit = mine[0]["unit"]
        # For a throughput the slow end is the low percentile: "p99" is the rate of the
        # trial at the 99th percentile of time, i.e. the 1st percentile of MB/s.
        p99 = _pct(xs, 1) if metric == "throughput" else _pct(xs, 99)
        frm, to = LAUNCH_INSTANTS[peer] if metric == "launch4" else INSTANTS[metric]
        sched = {k: [s[k] for s in mine if s.get(k) is not None] for k in ("leader_on_cpu", "leader_waited")}
        rows.append(dict(metric=metric, peer=peer, size=size, unit=unit, n=len(xs),
                         median=_pct(xs, 50), p99=p99, from_instant=frm, to_instant=to,
                         **{k: _pct(v, 50) if v else float("nan") for k, v in sched.items()}))
    return rows


def waiting_trials(samples, share: float = 0.2) -> tuple[int, int, list[int]]:
    """Throughput trials in which the leader waited for a CPU more than `share` of the
    time: (how many, of how many, their rounds).  One sample per throughput trial."""
    tp = [s for s in samples if s["metric"] == "throughput" and s.get("leader_waited") is not None]
    slow = [s for s in tp if s["leader_waited"] > share]
    return len(slow), len(tp), sorted({s["round"] for s in slow})


def _size(size: int) -> str:
    return {64: "64 B", 8192: "8 KiB", 1 << 20: "1 MiB", 0: ""}.get(size, f"{size} B")


def report(rows) -> tuple[str, list[dict]]:
    """The printed table (ratios to every peer) and the targets."""
    lines = []
    by = {(r["metric"], r["peer"], r["size"]): r for r in rows}
    head = (f"{'metric':<11} {'size':>6} {'peer':<26} {'n':>6} {'median':>11} {'p99':>11}  "
            "bgwlab/peer (median; p99)  |  bgwlab.batched/peer  |  bgwlab.mq/peer")
    lines.append(head)
    lines.append("-" * len(head))
    order = {"throughput": 0, "round_trip": 1, "launch4": 2}
    rows = sorted(rows, key=lambda r: (order[r["metric"]], r["size"], not r["peer"].startswith("bgwlab"),
                                       r["peer"]))
    for r in rows:
        mines = ([LAUNCH_MINE.get(r["peer"], "bgwlab.attach")] if r["metric"] == "launch4"
                 else ["bgwlab", "bgwlab.batched", "bgwlab.mq"] if r["metric"] == "throughput" else ["bgwlab"])
        ratios = []
        for mine in mines:
            b = by.get((r["metric"], mine, r["size"]))
            if b is not None and not r["peer"].startswith("bgwlab"):
                ratios.append(f"{b['median'] / r['median']:.2f}x; {b['p99'] / r['p99']:.2f}x")
        ratio = "  |  ".join(ratios)
        lines.append(f"{r['metric']:<11} {_size(r['size']):>6} {r['peer']:<26} {r['n']:>6} "
                     f"{r['median']:>8.1f} {r['unit']:<2} {r['p99']:>8.1f} {r['unit']:<2}  {ratio}")
    lines.append("(launch4: bgwlab.first_message / the first-result peers, bgwlab.attach / the .all4 peers)")
    lines.append("")
    lines.append("instants:")
    seen = set()
    for r in rows:
        key = (r["metric"], r["peer"] if r["metric"] == "launch4" else "")
        if key not in seen:
            seen.add(key)
            label = r["metric"] + (f" {r['peer']}" if r["metric"] == "launch4" else "")
            lines.append(f"  {label:<34} {r['from_instant']} -> {r['to_instant']}")

    def med(m, p, s):
        return by[(m, p, s)]["median"] if (m, p, s) in by else float("nan")

    targets = []
    for mine, how in (("bgwlab", "ParallelContext, flush per message"),
                      ("bgwlab.batched", "ParallelContext, PG tuple-queue flush"),
                      ("bgwlab.mq", "the bare queue, flush per message")):
        targets.append(dict(target=f"throughput 8 KiB >= 1.5x mp.Pipe ({how})",
                            value=med("throughput", mine, 8192) / med("throughput", "mp_pipe", 8192),
                            goal=1.5, unit="x", higher_is_better=True))
        targets.append(dict(target=f"throughput 1 MiB >= 1 GB/s ({how})",
                            value=med("throughput", mine, 1 << 20) / 1000, goal=1.0, unit="GB/s",
                            higher_is_better=True))
    targets += [
        dict(target="round trip <= mp.Pipe's", value=med("round_trip", "bgwlab", 64)
             / med("round_trip", "mp_pipe", 64), goal=1.0, unit="x", higher_is_better=False),
        dict(target="launch 4, to the first result <= 0.5x Pool(4)'s", value=med("launch4", "bgwlab.first_message", 0)
             / med("launch4", "mp_pool", 0), goal=0.5, unit="x", higher_is_better=False),
        dict(target="launch 4, to all 4 running (attached) <= 0.5x Pool(4)'s",
             value=med("launch4", "bgwlab.attach", 0) / med("launch4", "mp_pool.all4", 0), goal=0.5, unit="x",
             higher_is_better=False),
    ]
    lines.append("")
    lines.append("targets (issue 13, medians):")
    for t in targets:
        ok = t["value"] >= t["goal"] if t["higher_is_better"] else t["value"] <= t["goal"]
        t["met"] = bool(ok)
        lines.append(f"  {t['target']:<66} {t['value']:.2f} {t['unit']:<5} {'met' if ok else 'MISSED'}")
    lines.append("")
    lines.append("the leader's thread during each trial, median share of its wall time on a CPU / waiting for one")
    lines.append("(/proc/thread-self/schedstat; a leader that shares one CPU with its counterpart waits):")
    for metric, size in [("throughput", sz) for sz in SIZES] + [("round_trip", 64)]:
        cells = [f"{r['peer']} {r['leader_on_cpu']:.2f}/{r['leader_waited']:.2f}" for r in rows
                 if (r["metric"], r["size"]) == (metric, size) and "leader_on_cpu" in r]
        if cells:
            lines.append(f"  {metric:<10} {_size(size):>6}  " + "  ".join(cells))
    lines.append("")
    lines.append(f"bgwlab's latch spin in this run: BGWLAB_LATCH_SPIN_US={_latch_spin_us()} (0: never spins)")
    return "\n".join(lines), targets


def _git(*args) -> str:
    try:
        r = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10)
        return r.stdout.strip() if r.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def _latch_spin_us() -> int:
    """The latch's spin bound in this run (BGWLAB_LATCH_SPIN_US, see bgwlab.parallel.latch)."""
    from bgwlab.parallel import latch

    return latch.SPIN_US


def metadata(p: dict, quick: bool, t_start: float, load_start) -> dict:
    from bgwlab.lab.experiments.results import run_metadata

    meta = run_metadata()
    meta.update({"benchmark": "bench_parallel", "mode": "quick" if quick else "full", "plan": {
        "rounds": p["rounds"], "messages": {str(k): v for k, v in p["messages"].items()},
        "round_trips_per_trial": p["round_trips"], "launch_trials_per_round": p["launch_trials"],
        "ring_bytes": RING, "peer_start_method": "fork", "latch_spin_us": _latch_spin_us()},
        "duration_s": round(time.monotonic() - t_start, 2), "loadavg_start": list(load_start),
        "loadavg_end": list(os.getloadavg())})
    meta.setdefault("commit", _git("rev-parse", "HEAD"))
    meta["date"] = meta.get("date") or datetime.datetime.now(datetime.timezone.utc).isoformat()
    meta["python"] = meta.get("python") or platform.python_version()
    return meta


def parse_args(doc: str, argv=None, quick_help: str = "a few seconds") -> argparse.Namespace:
    """The command line of this benchmark and of bench_query4.py."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "bench")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def save(stem: Path, rows: list[dict], samples: list[dict], text: str, meta: dict) -> None:
    """Write <stem>.csv (summary), <stem>_samples.csv, <stem>.txt and <stem>.meta.json."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    for path, data in ((f"{stem}.csv", rows), (f"{stem}_samples.csv", samples)):
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(data[0]))
            w.writeheader()
            w.writerows(data)
    Path(f"{stem}.txt").write_text(text + "\n")
    Path(f"{stem}.meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    for suffix in (".csv", "_samples.csv", ".txt", ".meta.json"):
        print(f"wrote {stem}{suffix}")


def main(argv=None) -> int:
    args = parse_args(__doc__, argv, quick_help="a few seconds (also BGWLAB_QUICK=1)")
    quick = args.quick or os.environ.get("BGWLAB_QUICK") == "1"
    t_start, load_start = time.monotonic(), os.getloadavg()
    samples, p = run(quick, args.rounds, progress=not args.no_progress, seed=args.seed)
    rows = summarize(samples)
    text, targets = report(rows)
    n_slow, n_tp, slow_rounds = waiting_trials(samples)
    text += (f"\nthroughput trials in which the leader waited for a CPU over 20 % of the time: "
             f"{n_slow} of {n_tp}" + (f" (rounds {', '.join(map(str, slow_rounds))})" if slow_rounds else ""))
    print(text, flush=True)
    if args.no_save:
        return 0
    meta = metadata(p, quick, t_start, load_start)
    meta["targets"] = targets
    meta["throughput_trials_leader_waited_over_20pct"] = {"trials": n_slow, "of": n_tp, "rounds": slow_rounds}
    save(args.out / f"parallel_{'quick' if quick else 'full'}", rows, samples, text, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
