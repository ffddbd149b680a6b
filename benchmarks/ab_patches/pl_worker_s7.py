# Frozen copy for benchmarks/ab_launch.py --a s7: bgwlab/parallel/worker.py as of 913c416 (before the worker
# start-up work of session 8), imports made absolute (pl_*_s7).  Do not edit.
"""The worker side of a parallel context (PostgreSQL's ``ParallelWorkerMain``).

The leader registers every worker with ``entry="bgwlab.parallel.worker:main"``,
``main_arg`` = the segment's token and ``extra`` = worker number + segment name.  ``main``
attaches, announces itself on its error queue, runs the user's ``function(worker)`` and
reports how it ended: ``'X'`` (clean) or ``'E'`` + traceback, as PostgreSQL's error queue
carries ``ErrorResponse`` and ``Terminate`` messages.
"""

from __future__ import annotations

import os
import stat
import sys

from bgwlab import worker as _bgw  # the engine's worker module (always loaded in a worker)
from bgwlab.procinfo import wait_fds
import pl_dsm_s7 as dsm
from bgwlab.parallel.errors import LeaderDetached
from pl_latch_s7 import Peer, WorkerLatch
from pl_layout_s7 import ATTACH_NAME_OFF, ATTACH_SIZE, PARALLEL_MAGIC, decode_extra, read_fixed
from pl_mq_s7 import SUCCESS, W_SENDER, MessageQueue
from pl_toc_s7 import Toc

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
    """ParallelWorkerMain.  Worker only: the entry point the leader registers.

    Until the attach is announced, the leader's wait_for_attach waits for us, and three
    more workers are starting on the same CPUs: that stretch does only what PostgreSQL's
    ParallelWorkerMain does before it (map the segment, read the table of contents and
    the fixed state, attach as the error queue's sender, with our latch for the leader
    to set).  The data queue -- the executor's tuple queue, which PostgreSQL attaches
    later, in ParallelQueryMain -- comes after the announcement.  Every step in that
    stretch is paid in page faults as much as in bytecode: the worker shares the
    postmaster's heap copy-on-write, so the first touch of each object (a function, its
    code, a constant: a reference count written) copies its page.
    """
    number, name = decode_extra(_bgw.current().extra)
    try:
        seg = dsm.Segment.attach(name, token=main_arg)  # (a wrong token: ValueError, unmapped)
    except FileNotFoundError:
        raise SystemExit(1) from None  # the leader is done, or gone: nothing to do
    queues, leader, latch, reported = [], None, None, False
    try:
        fixed = read_fixed(Toc.attach(seg.buf, PARALLEL_MAGIC), seg.buf)
        if not 0 <= number < fixed["nworkers"]:
            raise ValueError(f"worker number {number} is out of range for {name}")
        lay = fixed["layout"]
        latch = WorkerLatch(seg.buf, lay.latch(fixed["latch_base"], 1 + number))  # before any queue
        error_mq = MessageQueue(seg.buf, lay.error_queue(fixed["error_base"], number), latch,
                                expect_size=lay.error_stride)
        queues.append(error_mq)
        error_mq.set_sender()  # attached: from here on the leader learns how we end
        _announce_attach(seg.buf, fixed, number)
        data_mq = MessageQueue(seg.buf, lay.data_queue(fixed["data_base"], number), latch,
                               expect_size=lay.data_stride, peer_from=error_mq)  # one Peer of the leader
        queues.append(data_mq)
        data_mq.set_sender()
        leader = _leader_of(error_mq, fixed["leader_pid"], fixed["leader_start"])
        payload = bytes(seg.buf[fixed["payload_off"]:fixed["payload_off"] + fixed["payload_len"]])
        report, error = _run(fixed["entry"], ParallelWorker(number, payload, fixed["nworkers"], data_mq,
                                                            leader), leader)
        reported = _report(report, data_mq, error_mq, leader)
        if error is not None:
            raise error
    finally:
        # its pidfd: exactly that process exited (looked at while the queues still hold it)
        known_gone = leader is not None and leader.gone
        for q in queues:
            # Detach what is not detached yet (a second detach would only set the leader's
            # latch again: one more wakeup of a leader that may be waiting for others).  An
            # error queue that carried our report stays as it is: the leader detaches it
            # when it reads the report, and waits for nothing more on it.
            if not q.detached and not (reported and q is queues[0]):
                q.detach()
            q.close()
        if leader is not None:
            leader.close()
        if latch is not None:
            latch.close()  # before the unmap: it holds a view of its record
        seg.close()
        if leader is None or known_gone:
            # A killed leader's segment is ours to free.  A leader our pidfd saw alive frees
            # its own (or, if it dies after this look, remove_orphans() does).
            dsm.remove_if_leader_gone(name, known_gone=known_gone)


def _announce_attach(buf, fixed: dict, number: int) -> None:
    """Wake the leader's wait_for_attach if we are the last launched worker to attach --
    or if the leader has not yet said how many it launched.  Worker only, after
    set_sender on our error queue (which stored our pid, then fenced).

    Ordering (Dekker, as the latch's): we store our sender pid, fence, load the attach word
    and the other workers' sender pids; the leader stores the attach word, fences, loads
    the sender pids.  Of two last workers attaching at once, at least one sees the other's
    pid and writes; a leader that misses our pid in its look gets our byte."""
    a = fixed["attach_off"]
    buf_len = len(buf) & ~7
    words = memoryview(buf)[:buf_len].cast("Q")  # one view for every word we load
    try:
        launched, name_len = words[a >> 3] - 1, words[(a >> 3) + 1]
        if launched > 0:
            lay, base = fixed["layout"], fixed["error_base"]
            for i in range(launched):
                off = lay.error_queue(base, i) + 8 * W_SENDER
                if off + 8 > buf_len:
                    raise ValueError("corrupt parallel state (attach count)")
                if i != number and not words[off >> 3]:
                    return  # worker i has still to attach: it will look after it has
    finally:
        words.release()
    if not 0 < name_len <= ATTACH_SIZE - ATTACH_NAME_OFF:
        raise ValueError("corrupt parallel state (attach FIFO name)")
    name = bytes(buf[a + ATTACH_NAME_OFF:a + ATTACH_NAME_OFF + name_len]).decode("ascii")
    if "/" in name or dsm.parse_name(name) is None or not name.endswith("." + dsm.ATTACH_TAG):
        raise ValueError(f"corrupt parallel state (attach FIFO name {name!r})")
    try:
        fd = os.open(dsm.SHM_DIR + "/" + name, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return  # ENXIO: its reader is closed (the leader is done); ENOENT: it is gone
    try:
        st = os.fstat(fd)
        if not stat.S_ISFIFO(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise PermissionError(f"{name} is not a private FIFO of this user")
        os.write(fd, b"\0")
    except BlockingIOError:
        pass  # full: a wakeup is pending anyway
    finally:
        os.close(fd)


class _LeaderByQueue:
    """The leader, watched through the pidfd that our error queue already holds for its
    receiver -- the leader itself -- instead of a pidfd of its own (``pidfd_open`` and a
    read of /proc per worker saved).  Does not own the fd: valid while the queue is open."""

    __slots__ = ("fd", "_gone")

    def __init__(self, fd: int):
        self.fd = fd
        self._gone = fd < 0  # no pidfd: the leader was gone when the queue looked for it

    @property
    def gone(self) -> bool:
        if not self._gone and self.fd >= 0:
            self._gone = bool(wait_fds([self.fd], 0))  # a pidfd is readable once its process exited
        return self._gone

    def close(self) -> None:
        self.fd = -1  # (the queue closes the fd)


def _leader_of(error_mq: MessageQueue, pid: int, start: int):
    """The leader (`pid`, `start` from the fixed state) as a Peer-like object with ``gone``.
    Our error queue's receiver is the leader (it sets itself as receiver before any worker
    exists); if the queue names another process, trust nothing and open our own pidfd."""
    if error_mq.receiver_pid == pid:
        return _LeaderByQueue(error_mq.peer_fd)
    return Peer(pid, start)


def _run(entry: str, pw: ParallelWorker, leader) -> tuple[bytes, BaseException | None]:
    """Run the user's function.  Returns the report for the error queue -- ``'X'`` or
    ``'E'`` + traceback -- and the exception to re-raise after reporting, if any."""
    try:
        _resolve(entry)(pw)
    except LeaderDetached:
        if leader.gone:
            raise SystemExit(1) from None
        return b"X", None  # the leader stopped listening: a clean end, as in PostgreSQL
    except BaseException as e:
        if isinstance(e, _bgw.Terminated):
            text = "terminated by request (SIGTERM)"
        else:
            import traceback  # only on this path: a worker that succeeds never loads it

            text = traceback.format_exc()
        return b"E" + text.encode(errors="replace")[-MAX_ERROR_TEXT:], e
    return b"X", None


def _report(report: bytes, data_mq, error_mq, leader) -> bool:
    """Publish every data message, report, *then* detach the data queue -- so a leader
    that sees the data queue detached already has the report, and raises a worker's error
    after exactly the messages it sent before it (see ParallelContext.messages).  Worker
    only.  True if the report is in the error queue."""
    data_mq.flush()
    # The report fits the error queue's ring whole, so this never waits.
    if error_mq.send(report, nowait=True) is not SUCCESS:
        if leader.gone:
            raise SystemExit(1) from None
        data_mq.detach()
        return False
    data_mq.detach()
    return True
