"""The worker side of a parallel context (PostgreSQL's ``ParallelWorkerMain``).

The leader registers every worker with ``entry="bgwlab.parallel.worker:main"``,
``main_arg`` = the segment's token and ``extra`` = worker number + segment name.  ``main``
attaches, announces itself on its error queue, runs the user's ``function(worker)`` and
reports how it ended: ``'X'`` (clean) or ``'E'`` + traceback, as PostgreSQL's error queue
carries ``ErrorResponse`` and ``Terminate`` messages.
"""

from __future__ import annotations

import sys

from . import dsm
from .errors import LeaderDetached
from .latch import Peer, WorkerLatch
from .layout import PARALLEL_MAGIC, decode_extra, read_fixed
from .mq import SUCCESS, MessageQueue
from .toc import Toc

MAX_ERROR_TEXT = 12 * 1024  # bytes: under the error queue's 16 KiB ring


class ParallelWorker:
    """What the user's function gets: ``number`` (ParallelWorkerNumber), ``payload``,
    ``nworkers`` (planned) and ``send()``.  Worker only."""

    def __init__(self, number: int, payload: bytes, nworkers: int, data_mq: MessageQueue, leader: Peer):
        self.number = number
        self.payload = payload
        self.nworkers = nworkers
        self._mq = data_mq
        self._leader = leader

    def send(self, message, flush: bool = True) -> None:
        """Send one message (bytes-like, any size) to the leader; blocks while the queue is
        full.  Raises LeaderDetached once the leader no longer listens."""
        if self._mq.send(message, flush=flush) is not SUCCESS:
            raise LeaderDetached(
                "the leader detached from this worker's queue (it finished, left its block or "
                "died): stop sending and return")

    @property
    def bytes_sent(self) -> int:
        return self._mq.bytes_written

    @property
    def leader_alive(self) -> bool:
        return not self._leader.gone


def _resolve(entry: str):
    mod, _, qual = entry.partition(":")
    __import__(mod)  # (not importlib: a module fewer in every worker's image)
    obj = sys.modules[mod]
    for part in qual.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{entry} is not callable")
    return obj


def main(main_arg: int) -> None:
    """ParallelWorkerMain.  Worker only: the entry point the leader registers."""
    from .. import worker as bgw

    number, name = decode_extra(bgw.current().extra)
    try:
        seg = dsm.Segment.attach(name)
    except FileNotFoundError:
        raise SystemExit(1) from None  # the leader is done, or gone: nothing to do
    if seg.token != main_arg:
        seg.close()
        raise ValueError(f"segment {name} does not carry the token {main_arg:#x} we were given")
    queues, leader, latch = [], None, None
    try:
        toc = Toc.attach(seg.buf, PARALLEL_MAGIC)
        fixed = read_fixed(toc, seg.buf)
        if not 0 <= number < fixed["nworkers"]:
            raise ValueError(f"worker number {number} is out of range for {name}")
        lay = fixed["layout"]
        latch = WorkerLatch(seg.buf, lay.latch(fixed["latch_base"], 1 + number))  # before any queue
        error_mq = MessageQueue(seg.buf, lay.error_queue(fixed["error_base"], number), latch,
                                expect_size=lay.error_stride)
        queues.append(error_mq)
        data_mq = MessageQueue(seg.buf, lay.data_queue(fixed["data_base"], number), latch,
                               expect_size=lay.data_stride)
        queues.append(data_mq)
        leader = Peer(fixed["leader_pid"], fixed["leader_start"])
        error_mq.set_sender()  # attached: from here on the leader learns how we end
        data_mq.set_sender()
        payload = bytes(seg.buf[fixed["payload_off"]:fixed["payload_off"] + fixed["payload_len"]])
        _run(fixed["entry"], ParallelWorker(number, payload, fixed["nworkers"], data_mq, leader),
             data_mq, error_mq, leader)
    finally:
        for q in queues:
            q.detach()
            q.close()
        known_gone = leader is not None and leader.gone  # its pidfd: exactly that process exited
        if leader is not None:
            leader.close()
        if latch is not None:
            latch.close()  # before the unmap: it holds a view of its record
        seg.close()
        dsm.remove_if_leader_gone(name, known_gone=known_gone)  # a killed leader's segment is ours to free


def _run(entry: str, pw: ParallelWorker, data_mq, error_mq, leader: Peer) -> None:
    """Run the user's function; report 'X' or 'E' on the error queue.  Worker only.

    Order: publish every data message, report, *then* detach the data queue -- so a leader
    that sees the data queue detached already has the report, and raises a worker's error
    after exactly the messages it sent before it (see ParallelContext.messages)."""
    from ..worker import Terminated

    error = None
    try:
        fn = _resolve(entry)
        fn(pw)
        report = b"X"
    except LeaderDetached:
        if leader.gone:
            raise SystemExit(1) from None
        report = b"X"  # the leader stopped listening: a clean end, as in PostgreSQL
    except BaseException as e:
        error = e
        if isinstance(e, Terminated):
            text = "terminated by request (SIGTERM)"
        else:
            import traceback  # only on this path: a worker that succeeds never loads it

            text = traceback.format_exc()
        report = b"E" + text.encode(errors="replace")[-MAX_ERROR_TEXT:]
    data_mq.flush()
    # The report fits the error queue's ring whole, so this never waits.
    if error_mq.send(report, nowait=True) is not SUCCESS and leader.gone:
        raise SystemExit(1) from None
    data_mq.detach()
    if error is not None:
        raise error
