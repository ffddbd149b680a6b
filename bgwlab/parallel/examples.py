"""Worker functions for parallel contexts, and a raw message-queue peer (tests, notebooks).

Parallel-context functions take the ``ParallelWorker``; ``mq_peer`` is a plain bgwlab
entry point (``fn(main_arg)``) that drives one queue against a test, by a plan.
"""

from __future__ import annotations

import struct

from .errors import LeaderDetached
from .mq import SUCCESS  # module level: an import statement in a per-message call costs ~1 us

PLAN = struct.Struct("<III")  # messages, size, fail_after (0xFFFFFFFF = never)
NEVER = 0xFFFFFFFF


_Random = None  # random.Random, imported on first use: not in the image of a postmaster that
#                preloads this module (random's at-fork hook reseeds in every child it forks)


def message(number: int, i: int, size: int) -> bytes:
    """The i-th message of worker `number`: `size` reproducible bytes."""
    global _Random
    if _Random is None:
        from random import Random as _Random
    return _Random(number * 1_000_003 + i).randbytes(size)


def plan(messages: int, size: int, fail_after: int | None = None) -> bytes:
    """Payload for ``produce``: each worker sends `messages` of `size` bytes, and raises
    after `fail_after` of them if given."""
    return PLAN.pack(messages, size, NEVER if fail_after is None else fail_after)


def produce(worker) -> None:
    """Send the messages the payload's plan asks for (see ``plan``)."""
    n, size, fail_after = PLAN.unpack(worker.payload[:PLAN.size])
    for i in range(n):
        if i == fail_after:
            raise RuntimeError(f"worker {worker.number} fails on purpose after {i} messages")
        worker.send(message(worker.number, i, size))
    if fail_after != NEVER and fail_after >= n:
        raise RuntimeError(f"worker {worker.number} fails on purpose after {n} messages")


def echo(worker) -> None:
    """Send the payload back, prefixed with the worker's number."""
    worker.send(b"%d:" % worker.number + worker.payload)


def send_forever(worker) -> None:
    """Send 1 KiB messages until the leader stops listening (then end cleanly)."""
    chunk = bytes(1024)
    try:
        while True:
            worker.send(chunk)
    except LeaderDetached:
        if not worker.leader_alive:
            raise


def do_nothing(worker) -> None:
    """Return at once: a worker that attaches, reports 'X' and exits."""


def report_threads(worker) -> None:
    """Send how many threads this worker process runs (b"1": no helper thread)."""
    import os

    worker.send(str(len(os.listdir("/proc/self/task"))).encode())


# -- a raw queue peer -------------------------------------------------------------------------
# Segment layout for mq_peer (built by the test): toc with key 1 = plan (JSON, length-prefixed),
# key 2 = the queue, key 3 = result area (length-prefixed JSON, written by the peer), key 4 =
# two latch records (0: the test's, 1: the peer's).
PEER_MAGIC = 0x42475754_00000002
KEY_PLAN, KEY_QUEUE, KEY_RESULT, KEY_PEER_LATCHES = 1, 2, 3, 4
RESULT_SIZE = 4096


def mq_peer(main_arg: int) -> None:
    """A queue's other end, driven by the plan in the segment named by `extra`.

    plan = {"role": "send" | "receive", "sizes": [...], "nowait": [...], "detach_after": k | None,
    "partial": bool, "seed": int}.  A sender sends sizes[:detach_after] (the next one only
    begun, with nowait, if partial) and detaches; a receiver checks every message against
    ``message(seed, i, size)`` and records what it got.  Worker only.
    """
    from .. import worker as bgw
    from . import dsm
    from .latch import LATCH_SIZE, WorkerLatch
    from .mq import SUCCESS, MessageQueue
    from .toc import Toc

    seg = dsm.Segment.attach(bgw.current().extra.decode())
    toc = Toc.attach(seg.buf, PEER_MAGIC)
    latch = WorkerLatch(seg.buf, toc.lookup(KEY_PEER_LATCHES) + LATCH_SIZE)
    p_off = toc.lookup(KEY_PLAN)
    (n,) = struct.unpack_from("<I", seg.buf, p_off)
    import json  # (on first use: see _Random)

    p = json.loads(bytes(seg.buf[p_off + 4:p_off + 4 + n]))
    mq = MessageQueue(seg.buf, toc.lookup(KEY_QUEUE), latch)
    out = {"ok": True, "got": 0, "results": []}
    try:
        sizes, nowait, stop = p["sizes"], p["nowait"], p.get("detach_after")
        stop = len(sizes) if stop is None else stop
        if p["role"] == "send":
            mq.set_sender()
            for i in range(stop):
                msg = message(p["seed"], i, sizes[i])
                while (res := mq.send(msg, nowait=nowait[i % len(nowait)])).name == "WOULD_BLOCK":
                    latch.wait(also=(mq.peer_fd,) if mq.peer_fd >= 0 else ())
                    latch.reset()
                out["results"].append(res.name)
                if res is not SUCCESS:
                    break
            if p.get("partial") and stop < len(sizes):
                out["results"].append(mq.send(message(p["seed"], stop, sizes[stop]), nowait=True).name)
        else:
            mq.set_receiver()
            for i in range(stop):
                res, msg = mq.receive(nowait=False)
                out["results"].append(res.name)
                if res is not SUCCESS:
                    break
                if msg != message(p["seed"], i, sizes[i]):
                    out["ok"] = False
                    out["bad"] = i
                    break
                out["got"] += 1
    finally:
        mq.detach()
        r_off = toc.lookup(KEY_RESULT)
        data = json.dumps(out).encode()[:RESULT_SIZE - 4]
        seg.buf[r_off + 4:r_off + 4 + len(data)] = data
        struct.pack_into("<I", seg.buf, r_off, len(data))
        mq.close()
        latch.close()
        seg.close()


# -- benchmark peers (benchmarks/bench_parallel.py) --------------------------------------------
BLAST = struct.Struct("<QQQ")  # messages, size, flush
STAMP = struct.Struct("<Q")


def blast_plan(messages: int, size: int, flush: bool = True) -> bytes:
    """Payload for ``blast``: `messages` messages of `size` bytes (size >= 8).  flush=False
    sends as PostgreSQL's tuple queues do (``shm_mq_send(..., force_flush=false)``): bytes
    are published, and the leader woken, once a quarter of the ring is pending."""
    return BLAST.pack(messages, size, int(flush))


def blast(worker) -> None:
    """Send the same `size`-byte buffer `messages` times, as fast as the queue takes it.

    The first message starts with this worker's ``time.monotonic_ns()`` taken just before
    it is built and sent (CLOCK_MONOTONIC is one clock for every process), so the leader
    can time "first send() called -> last byte received"."""
    import time

    n, size, flush = BLAST.unpack_from(worker.payload)
    flush = bool(flush)
    body = bytes(size)
    t0 = time.monotonic_ns()
    if n:
        worker.send(STAMP.pack(t0) + body[STAMP.size:], flush=flush)
    send = worker.send
    for _ in range(n - 1):
        send(body, flush=flush)
    # returning flushes: the worker publishes the rest before it reports and detaches


def first_message(worker) -> None:
    """Send one 8-byte message (this worker's number) at once: for launch -> first message."""
    worker.send(STAMP.pack(worker.number))


# Segment for mq_echo (built by the leader): toc key 1 = leader -> worker queue, key 2 = back,
# key 3 = two latch records (0: the leader's, 1: the worker's).
ECHO_MAGIC = 0x42475745_00000002
KEY_TO_WORKER, KEY_TO_LEADER, KEY_ECHO_LATCHES = 1, 2, 3


def mq_echo(main_arg: int) -> None:
    """Receive on queue 1, send the same bytes back on queue 2, until either is detached.
    A plain bgwlab entry point; `extra` is the segment's name.  Worker only.

    With ``main_arg`` = messages << 32 | size (non-zero), send that many messages of that
    size on queue 2 instead (as ``blast`` does: the first carries the send time) -- the bare
    queue's throughput, without a ParallelContext around it."""
    from .. import worker as bgw

    _echo(bgw.current().extra.decode(), main_arg)


def _echo(name: str, main_arg: int) -> None:
    """mq_echo's body: in a bgwlab worker, or in a plain fork child (``MqEcho(fork=True)``)."""
    from . import dsm
    from .latch import LATCH_SIZE, WorkerLatch
    from .mq import SUCCESS, MessageQueue
    from .toc import Toc

    seg = dsm.Segment.attach(name)
    queues, latch = [], None
    try:
        toc = Toc.attach(seg.buf, ECHO_MAGIC)
        latch = WorkerLatch(seg.buf, toc.lookup(KEY_ECHO_LATCHES) + LATCH_SIZE)
        rx = MessageQueue(seg.buf, toc.lookup(KEY_TO_WORKER), latch)
        queues.append(rx)
        tx = MessageQueue(seg.buf, toc.lookup(KEY_TO_LEADER), latch)
        queues.append(tx)
        rx.set_receiver()
        tx.set_sender()
        if main_arg:
            import time

            n, size = main_arg >> 32, main_arg & 0xFFFFFFFF
            body = bytes(size)
            if n and tx.send(STAMP.pack(time.monotonic_ns()) + body[STAMP.size:]) is not SUCCESS:
                return
            for _ in range(n - 1):
                if tx.send(body) is not SUCCESS:
                    return
            return
        while True:
            res, msg = rx.receive()
            if res is not SUCCESS or tx.send(msg) is not SUCCESS:
                break
    finally:
        for q in queues:
            q.detach()
            q.close()
        if latch is not None:
            latch.close()
        seg.close()


class MqEcho:
    """Leader side of ``mq_echo``: a segment with two queues and one worker that echoes.

    ``round_trip(msg)`` sends `msg` and returns what comes back.  Leader only; a context
    manager that detaches, waits for the worker and frees the segment.

    ``fork=True``: the other end is a plain ``os.fork()`` child of this process running
    the same code, not a bgwlab worker -- to compare the two senders on one queue."""

    def __init__(self, backend, ring: int = 65536, main_arg: int = 0, fork: bool = False):
        from .. import NEVER_RESTART, WorkerSpec
        from . import dsm
        from .latch import LeaderLatch, create_latches, latch_space
        from .mq import MessageQueue, mq_create, queue_size_for
        from .toc import Toc, TocEstimator, align

        est = TocEstimator()
        est.key(3)
        qsize = align(queue_size_for(ring))
        est.chunk(qsize)
        est.chunk(qsize)
        est.chunk(latch_space(2))
        self.segment = dsm.Segment.create(est.estimate())
        self.latch = None
        self.handle = None
        self.child = None  # (pid, pidfd) of the fork child, with fork=True
        self.queues = []
        try:
            toc = Toc.create(self.segment.buf, ECHO_MAGIC, 3)
            l_off = toc.allocate(latch_space(2))
            create_latches(self.segment, l_off, 2)
            toc.insert(KEY_ECHO_LATCHES, l_off)
            self.latch = LeaderLatch(backend, self.segment.buf, l_off)
            offs = []
            for key in (KEY_TO_WORKER, KEY_TO_LEADER):
                off = toc.allocate(qsize)
                mq_create(self.segment.buf, off, qsize)
                toc.insert(key, off)
                offs.append(off)
            self.tx = MessageQueue(self.segment.buf, offs[0], self.latch)
            self.queues.append(self.tx)
            self.rx = MessageQueue(self.segment.buf, offs[1], self.latch)
            self.queues.append(self.rx)
            self.tx.set_sender()
            self.rx.set_receiver()
            if fork:
                import os

                pid = os.fork()
                if pid == 0:  # the child: run the worker's code, never return
                    code = 1
                    try:
                        _echo(self.segment.name, main_arg)
                        code = 0
                    finally:
                        os._exit(code)
                self.child = (pid, os.pidfd_open(pid))
                return
            self.handle = backend.register_dynamic_worker(WorkerSpec(
                name="mq echo", entry="bgwlab.parallel.examples:mq_echo", restart=NEVER_RESTART,
                main_arg=main_arg, extra=self.segment.name.encode()))
            self.tx.set_handle(self.handle)
            self.rx.set_handle(self.handle)
        except BaseException:
            self.close()
            raise

    def round_trip(self, msg: bytes) -> bytes:
        if self.tx.send(msg) is not SUCCESS:
            raise RuntimeError("the echo worker detached")
        res, back = self.rx.receive()
        if res is not SUCCESS:
            raise RuntimeError("the echo worker detached")
        return back

    def receive(self) -> bytes | None:
        """The next message from the worker, or None once it has detached."""
        res, msg = self.rx.receive()
        return msg if res is SUCCESS else None

    def close(self) -> None:
        for q in self.queues:
            q.detach()
        if self.handle is not None:
            self.handle.terminate()
            self.handle.wait_for_shutdown()
            self.handle = None
        if self.child is not None:
            import os
            import select
            import signal

            pid, fd = self.child
            if not select.select([fd], [], [], 10)[0]:  # detached: it ends at its next wait
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(fd)
            self.child = None
        for q in self.queues:
            q.close()
        self.queues = []
        if self.latch is not None:
            self.latch.close()
            self.latch = None
        self.segment.destroy()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# -- a toy Gather (notebook 11, bgwlab experiment parallel) -------------------------------------
# The "table" is generated: row i has the value (i * 7919) % 1009.  The query is
# SELECT sum(v) FROM t WHERE v % 3 = 0, split into `shares` equal ranges of rows.  Worker k
# scans share k and sends the qualifying values in batches (int64 "tuples", one message per
# batch); the leader scans the shares of the workers it did not get (PostgreSQL's leader
# participates too) and sums everything it gathers.
GATHER = struct.Struct("<QQQqq")  # rows, shares, batch rows, fail_after batches (-1: never), who (-1: all)


def gather_plan(rows: int, shares: int, batch: int = 1000, fail_after: int | None = None,
                fail_worker: int | None = None) -> bytes:
    """Payload for ``gather_worker``: worker `fail_worker` (every worker if None) raises
    after sending `fail_after` batches (never if None)."""
    return GATHER.pack(rows, max(shares, 1), batch, -1 if fail_after is None else fail_after,
                       -1 if fail_worker is None else fail_worker)


def share_range(rows: int, shares: int, k: int) -> range:
    """The rows of share k (0 <= k < shares)."""
    shares = max(shares, 1)
    return range(rows * k // shares, rows * (k + 1) // shares)


def scan(rows_range: range, batch: int):
    """Yield the qualifying values of `rows_range`, one packed int64 batch (bytes) at a time."""
    from array import array

    out = array("q")
    for n, i in enumerate(rows_range, 1):
        v = (i * 7919) % 1009
        if v % 3 == 0:
            out.append(v)
        if n % batch == 0:
            yield out.tobytes()
            out = array("q")
    if out:
        yield out.tobytes()


def batch_sum(message: bytes) -> tuple[int, int]:
    """(rows, sum) of one batch message."""
    from array import array

    a = array("q")
    a.frombytes(message)
    return len(a), sum(a)


def expected_sum(rows: int) -> int:
    """The query's answer, computed serially (to check a Gather)."""
    return sum(v for v in ((i * 7919) % 1009 for i in range(rows)) if v % 3 == 0)


def gather_worker(worker) -> None:
    """Scan share ``worker.number`` and send its batches; raise after `fail_after` batches."""
    rows, shares, batch, fail_after, who = GATHER.unpack_from(worker.payload)
    if who >= 0 and who != worker.number:
        fail_after = -1
    sent = 0
    for msg in scan(share_range(rows, shares, worker.number), batch):
        if sent == fail_after:
            raise RuntimeError(f"worker {worker.number} fails on purpose after {sent} batches "
                               f"(think: a division by zero in a real query)")
        worker.send(msg)
        sent += 1
    if 0 <= fail_after and fail_after >= sent:
        raise RuntimeError(f"worker {worker.number} fails on purpose at the end of its share")
