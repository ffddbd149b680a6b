"""Worker functions for parallel contexts, and a raw message-queue peer (tests, notebooks).

Parallel-context functions take the ``ParallelWorker``; ``mq_peer`` is a plain bgwlab
entry point (``fn(main_arg)``) that drives one queue against a test, by a plan.
"""

from __future__ import annotations

import json
import random
import struct

from .errors import LeaderDetached

PLAN = struct.Struct("<III")  # messages, size, fail_after (0xFFFFFFFF = never)
NEVER = 0xFFFFFFFF


def message(number: int, i: int, size: int) -> bytes:
    """The i-th message of worker `number`: `size` reproducible bytes."""
    return random.Random(number * 1_000_003 + i).randbytes(size)


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


# -- a raw queue peer -------------------------------------------------------------------------
# Segment layout for mq_peer (built by the test): toc with key 1 = plan (JSON, length-prefixed),
# key 2 = the queue, key 3 = result area (length-prefixed JSON, written by the peer).
PEER_MAGIC = 0x42475754_00000001
KEY_PLAN, KEY_QUEUE, KEY_RESULT = 1, 2, 3
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
    from .latch import WorkerLatch
    from .mq import SUCCESS, MessageQueue
    from .toc import Toc

    latch = WorkerLatch()
    seg = dsm.Segment.attach(bgw.current().extra.decode())
    toc = Toc.attach(seg.buf, PEER_MAGIC)
    p_off = toc.lookup(KEY_PLAN)
    (n,) = struct.unpack_from("<I", seg.buf, p_off)
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
        seg.close()
        latch.close()
