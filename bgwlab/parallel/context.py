"""ParallelContext: the leader's side of parallel query (PostgreSQL's ``access/transam/parallel.c``).

::

    with ParallelContext(backend, "module:function", nworkers=4, payload=b"...") as pcxt:
        pcxt.launch()                      # LaunchParallelWorkers
        pcxt.wait_for_attach()             # WaitForParallelWorkersToAttach
        for number, message in pcxt.messages():
            ...
        pcxt.wait_for_finish()             # WaitForParallelWorkersToFinish
    # DestroyParallelContext: terminate, wait for exit, free the segment

Every method is for the leader only: the process (and thread) that built the context.
"""

from __future__ import annotations

import os
import re

from ..backend import NOT_YET_STARTED, STARTED
from ..errors import BgwError, OutOfWorkerSlots
from ..latch import EventfdLatch, dispatcher
from ..spec import NEVER_RESTART, Fault, WorkerSpec
from . import dsm
from .errors import ParallelWorkerError, ParallelWorkerFailed
from .latch import LeaderLatch, create_latches, drain_fifo, fence, latch_space
from .layout import (ATTACH_NAME_OFF, ATTACH_SIZE, ERROR_QUEUE_SIZE, FIXED, KEY_ATTACH,
                     KEY_DATA_QUEUE, KEY_ENTRYPOINT, KEY_ERROR_QUEUE, KEY_FIXED, KEY_LATCHES,
                     KEY_PAYLOAD, N_KEYS, PARALLEL_MAGIC, Layout, encode_extra)
from .mq import DETACHED, MAX_MESSAGE, SUCCESS, WOULD_BLOCK, MessageQueue, mq_create
from .toc import Toc

WORKER_ENTRY = "bgwlab.parallel.worker:main"
MAX_WORKERS = 1024
_ENTRY_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


class WorkerState:
    """ParallelWorkerInfo: what the leader knows of one launched worker."""

    __slots__ = ("number", "handle", "error_mq", "data_mq", "attached", "finished", "data_done",
                 "exited")

    def __init__(self, number, handle, error_mq, data_mq):
        self.number, self.handle, self.error_mq, self.data_mq = number, handle, error_mq, data_mq
        self.attached = self.finished = self.data_done = False
        self.exited = False  # a wait saw its pidfd readable: the process is gone

    def __repr__(self):
        return (f"<parallel worker {self.number} attached={self.attached} "
                f"finished={self.finished} {self.handle!r}>")


def _validate(backend, entry, nworkers, payload, queue_size, faults) -> bytes:
    from ..backend import Backend

    if not isinstance(backend, Backend):
        raise TypeError(f"backend must be a bgwlab Backend (cluster.connect()), got {type(backend).__name__}")
    if not isinstance(entry, str) or not _ENTRY_RE.match(entry) or len(entry) > 255:
        raise ValueError(f"entry must look like 'package.module:function', got {entry!r}")
    if not isinstance(nworkers, int) or isinstance(nworkers, bool) or not 0 <= nworkers <= MAX_WORKERS:
        raise ValueError(f"nworkers must be an int in 0..{MAX_WORKERS}, got {nworkers!r}")
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
    payload = bytes(payload)
    if len(payload) > MAX_MESSAGE:
        raise ValueError(f"payload is {len(payload)} bytes; at most {MAX_MESSAGE} fit")
    if not isinstance(queue_size, int) or isinstance(queue_size, bool) or not 16 <= queue_size <= 1 << 30:
        raise ValueError(f"queue_size must be an int in 16..{1 << 30} (bytes of ring per worker), "
                         f"got {queue_size!r}")
    if faults is not None:
        if not isinstance(faults, dict):
            raise TypeError("faults must be a dict {worker_number: Fault}")
        for k, v in faults.items():
            if not isinstance(k, int) or not 0 <= k < nworkers:
                raise ValueError(f"faults key {k!r} is not a worker number in 0..{nworkers - 1}")
            if v is not None and not isinstance(v, Fault):
                raise TypeError(f"faults[{k}] must be a bgwlab.Fault or None, got {type(v).__name__}")
    return payload


class ParallelContext:
    """CreateParallelContext + InitializeParallelDSM: a segment with the payload and one
    error queue and one data queue per planned worker.  Leader only."""

    def __init__(self, backend, entry: str, nworkers: int, payload: bytes = b"",
                 queue_size: int = 16384, faults: dict | None = None):
        payload = _validate(backend, entry, nworkers, payload, queue_size, faults)
        backend._check_usable()
        self.backend = backend
        self.entry = entry
        self.nworkers_planned = nworkers
        self.nworkers_launched = 0
        self.faults = dict(faults or {})
        self.workers: list[WorkerState] = []
        self._launched = False
        self._closed = False
        self._queues: list[MessageQueue] = []
        self._latch = None
        self._attach_word = None  # the attach chunk's word 0 (launched + 1), a view
        self._attach_fd = -1  # read end of the attach wakeup FIFO
        dsm.remove_orphans()  # what leaders killed with SIGKILL left behind
        ring = queue_size & ~7
        self.layout = lay = Layout(nworkers, len(entry), len(payload), ring, ERROR_QUEUE_SIZE)
        self.segment = dsm.Segment.create(lay.size)
        try:
            self._initialize_dsm(payload)
        except BaseException:
            self._free()
            raise
        backend.events.emit("parallel_context_created", segment=self.segment.name,
                            nworkers=nworkers, entry=entry, size=lay.size)

    def _initialize_dsm(self, payload: bytes) -> None:
        """InitializeParallelDSM: toc, fixed state, entry point, payload, latches, queues."""
        lay, buf = self.layout, self.segment.buf
        toc = Toc.create(buf, PARALLEL_MAGIC, N_KEYS)
        me = os.getpid()
        off = toc.allocate(FIXED.size)
        FIXED.pack_into(buf, off, me, dsm.my_start_ticks(), lay.nworkers, lay.entry_len,
                        lay.payload_len, lay.error_ring, lay.ring)
        toc.insert(KEY_FIXED, off)
        off = toc.allocate(lay.entry_len)
        buf[off:off + lay.entry_len] = self.entry.encode()
        toc.insert(KEY_ENTRYPOINT, off)
        off = toc.allocate(max(lay.payload_len, 1))
        buf[off:off + lay.payload_len] = payload
        toc.insert(KEY_PAYLOAD, off)
        n = max(lay.nworkers, 1)
        err_base = toc.allocate(lay.error_stride * n)
        toc.insert(KEY_ERROR_QUEUE, err_base)
        data_base = toc.allocate(lay.data_stride * n)
        toc.insert(KEY_DATA_QUEUE, data_base)
        latch_base = toc.allocate(latch_space(lay.nworkers + 1))
        create_latches(self.segment, latch_base, lay.nworkers + 1)  # + their FIFOs
        toc.insert(KEY_LATCHES, latch_base)
        self._create_attach_wakeup(toc)
        self._latch = LeaderLatch(self.backend, buf, lay.latch(latch_base, 0))
        self._pending = []
        for i in range(lay.nworkers):
            pair = []
            for base, stride in ((lay.error_queue(err_base, i), lay.error_stride),
                                 (lay.data_queue(data_base, i), lay.data_stride)):
                mq_create(buf, base, stride)
                mq = MessageQueue(buf, base, self._latch)
                self._queues.append(mq)
                mq.set_receiver()  # the leader receives on every queue, from the start
                mq.pidfd_watched = True  # _wait polls the worker's pidfd for both queues
                pair.append(mq)
            self._pending.append(pair)

    def _create_attach_wakeup(self, toc: Toc) -> None:
        """The attach chunk and its FIFO (see wait_for_attach).  Before any registration."""
        buf = self.segment.buf
        off = toc.allocate(ATTACH_SIZE)
        name = self.segment.create_fifo(dsm.ATTACH_TAG).encode("ascii")
        if ATTACH_NAME_OFF + len(name) > ATTACH_SIZE:
            raise ValueError(f"attach FIFO name too long: {name!r}")
        words = memoryview(buf)[off:off + ATTACH_NAME_OFF].cast("Q")
        try:
            words[0] = 0  # launched + 1: not yet known
            words[1] = len(name)
        finally:
            words.release()
        buf[off + ATTACH_NAME_OFF:off + ATTACH_NAME_OFF + len(name)] = name
        toc.insert(KEY_ATTACH, off)
        # O_RDWR, as a latch's FIFO: we stay a writer, so poll() never sees POLLHUP
        self._attach_fd = os.open(os.path.join(dsm.SHM_DIR, name.decode()),
                                  os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
        self._attach_word = memoryview(buf)[off:off + 8].cast("Q")

    # -- launching ---------------------------------------------------------------------------
    def launch(self) -> int:
        """LaunchParallelWorkers: register up to nworkers workers; returns how many were.

        A full slot array is not an error: registration stops at the first failure
        (``any_registrations_failed``) and the queues of the rest are detached.  Launched
        workers are numbered 0 .. nworkers_launched - 1.
        """
        self._check_open()
        if self._launched:
            raise RuntimeError("launch() was already called for this context; make a new one")
        self._launched = True
        any_registrations_failed = False
        name, me = self.segment.name, os.getpid()
        for i, (error_mq, data_mq) in enumerate(self._pending):
            handle = None
            if not any_registrations_failed:
                spec = WorkerSpec(name=f"parallel worker {i} for PID {me}", entry=WORKER_ENTRY,
                                  main_arg=self.segment.token, extra=encode_extra(i, name),
                                  restart=NEVER_RESTART, notify=True, fault=self.faults.get(i))
                try:
                    handle = self.backend.register_dynamic_worker(spec)
                except OutOfWorkerSlots:
                    any_registrations_failed = True
            if handle is None:
                error_mq.detach()
                data_mq.detach()
                continue
            error_mq.set_handle(handle)  # shm_mq_set_handle
            data_mq.set_handle(handle)
            self.workers.append(WorkerState(i, handle, error_mq, data_mq))
            self.nworkers_launched += 1
        # How many the workers must count before the last of them wakes wait_for_attach.
        self._attach_word[0] = self.nworkers_launched + 1
        fence()  # our store before our loads of the workers' sender pids (the worker's side:
        #          worker._announce_attach stores its pid, fences, then loads this word)
        self.backend.events.emit("parallel_launched", segment=name, planned=self.nworkers_planned,
                                 launched=self.nworkers_launched)
        return self.nworkers_launched

    # -- the error queues (HandleParallelMessages) ------------------------------------------------
    @staticmethod
    def _nothing_new(w) -> bool:
        """A cheap look at one unfinished worker: True if reading its error queue could only
        say WOULD_BLOCK -- no byte unread, not detached, its process not seen gone, and
        either attached or, by its handle, still starting or running.  (Every wake of the
        leader looks at every worker; the full receive costs tens of microseconds.)

        Unread bytes: the leader reads an error queue once (its first message finishes
        the worker), so until then bytes_written == bytes_read means none.  Ordering: the
        caller reset what wakes it before these loads -- the latch (its fence C, latch.py),
        or in wait_for_attach the eventfd and the attach FIFO, whose reads are system calls
        ordered after the writes that woke it (and a write after our look stays readable)."""
        mq = w.error_mq
        if w.exited or mq.detached or mq.bytes_written != mq.bytes_read:
            return False
        if mq.sender_pid:  # shm_mq_get_sender: attached
            w.attached = True
            return True
        status = w.handle.get_pid()[0]  # GetBackgroundWorkerPid, as WaitForParallelWorkersToAttach
        return status is STARTED or status is NOT_YET_STARTED

    def _handle_messages(self) -> list:
        """Read every error queue without waiting.  Returns [(number, exception)] to raise."""
        errors = []
        for w in self.workers:
            if w.finished or self._nothing_new(w):
                continue
            while True:
                res, msg = w.error_mq.receive(nowait=True)
                if res is SUCCESS:
                    w.attached = True
                    if msg[:1] == b"X":  # Terminate: a clean exit
                        w.finished = True
                        w.error_mq.detach()
                        break
                    w.finished = True
                    w.error_mq.detach()
                    text = msg[1:].decode(errors="replace") if msg[:1] == b"E" else \
                        f"(unknown message type {msg[:1]!r} on the error queue)"
                    errors.append((w.number, ParallelWorkerError(w.number, text)))
                    break
                if res is WOULD_BLOCK:
                    if w.error_mq.sender_pid:
                        w.attached = True
                    break
                w.finished = True  # DETACHED without a message: it died or never came
                if w.error_mq.sender_pid:
                    errors.append((w.number, ParallelWorkerError(
                        w.number, f"it exited without reporting ({_exit_reason(w.handle)})", lost=True)))
                else:
                    errors.append((w.number, ParallelWorkerFailed(w.number, _exit_reason(w.handle))))
                break
        return errors

    def _wait(self, workers) -> None:
        """Sleep on our latch and on the pidfds of `workers` that attached.  A readable
        pidfd means that worker exited: both its queues learn it here (they are
        ``pidfd_watched``, so their non-blocking calls do not poll it themselves)."""
        by_fd = {}
        unattached = False  # a worker we can learn about only from the postmaster (its handle)
        for w in workers:
            # The error queue's pidfd first: a worker attaches that queue first, and the
            # data queue's counterpart (a second pidfd of the same process) is then opened
            # only when that queue is read.
            fd = w.error_mq.peer_fd
            if fd < 0:
                fd = w.data_mq.peer_fd
            if fd >= 0:
                by_fd[fd] = w
            else:
                unattached = True
        for fd in self._latch.wait(also=tuple(by_fd), postmaster=unattached):
            w = by_fd[fd]
            w.exited = True
            w.error_mq.peer_exited()
            w.data_mq.peer_exited()

    def wait_for_attach(self) -> None:
        """WaitForParallelWorkersToAttach: return once every launched worker has attached to
        its error queue (or finished cleanly).  Raises ParallelWorkerFailed naming a worker
        that stopped before attaching, or ParallelWorkerError if one already failed.

        It does not sleep on the leader's latch, which every step of every worker's queues
        sets (attach, messages, report, detach: a dozen wakeups for four workers).  It
        sleeps on what can end the wait: the attach wakeup -- a FIFO that the *last*
        launched worker to attach writes once (worker._announce_attach) -- and the
        postmaster's notifications (a worker that stopped before attaching).  Meanwhile
        the latch's setters find it awake (maybe_sleeping = 0) and make no system call;
        whoever waits on it next resets and looks first, as always.
        """
        self._check_open()
        ev = EventfdLatch()
        dispatcher.add(ev)  # from here on, a handle's news sets `ev`
        try:
            while True:
                ev.reset()
                drain_fifo(self._attach_fd)
                errors = self._handle_messages()  # after the resets: a wakeup after our look is kept
                if errors:
                    raise errors[0][1]
                if all(w.attached or w.finished for w in self.workers):
                    return
                self.backend.hold_short_slice()  # (Backend's wait_slice_us)
                ready = dispatcher.wait(ev, None, also=(self._attach_fd, *self._latch.death_fds))
                self._latch.check_postmaster(ready)
        finally:
            dispatcher.remove(ev)
            ev.close()

    def messages(self):
        """Yield (worker number, bytes) until every launched worker has detached its data
        queue; in order per worker.  A worker's error is raised after its earlier messages."""
        self._check_open()
        pending = [w for w in self.workers if not w.data_done]
        while True:
            self._latch.reset()
            for w in list(pending):
                yield from self._drain(w)
                if w.data_done:
                    pending.remove(w)
            errors = self._handle_messages()
            if errors:
                number, exc = errors[0]
                w = self.workers[number]
                yield from self._drain(w)
                raise exc
            if not pending:
                return
            self._wait(pending)

    def _drain(self, w):
        while not w.data_done:
            res, msg = w.data_mq.receive(nowait=True)
            if res is SUCCESS:
                yield w.number, msg
            elif res is DETACHED:
                w.data_done = True
                # The data queue may have learned of a death (its handle, a pidfd) that
                # the error queue has not: look at the error queue's sender now, with one
                # poll() of its pidfd, so that a worker that died mid-stream is a lost
                # connection below, not a quiet end of the data.
                w.error_mq._counterparty_gone(look=True)  # (shm_mq_counterparty_gone)
            else:
                return

    def wait_for_finish(self) -> None:
        """WaitForParallelWorkersToFinish: return once every launched worker has reported a
        clean exit.  Raises ParallelWorkerError with the traceback of a worker that raised
        (or that died after attaching), ParallelWorkerFailed for one that never attached.

        As ExecParallelFinish does first, the leader stops reading the data queues here:
        messages not yet consumed are dropped, and a worker still sending gets LeaderDetached.
        """
        self._check_open()
        for w in self.workers:
            if not w.data_done:
                w.data_mq.detach()
                w.data_done = True
        while True:
            self._latch.reset()
            errors = self._handle_messages()
            if errors:
                raise errors[0][1]
            pending = [w for w in self.workers if not w.finished]
            if not pending:
                self.backend.events.emit("parallel_finished", segment=self.segment.name)
                return
            self._wait(pending)

    # -- statistics -----------------------------------------------------------------------------------
    def queue_stats(self) -> list[dict]:
        """Per launched worker: its data queue's counters (bytes_written, bytes_read, ring)."""
        return [dict(number=w.number, bytes_written=w.data_mq.bytes_written,
                     bytes_read=w.data_mq.bytes_read, ring_size=w.data_mq.ring_size)
                for w in self.workers if not self._closed]

    # -- destroying -------------------------------------------------------------------------------------
    def close(self) -> None:
        """DestroyParallelContext: detach every queue, terminate the workers that have not
        finished, wait for every launched worker to exit, free the segment.  Idempotent.
        The segment is freed even if the wait is interrupted."""
        if self._closed:
            return
        self._closed = True
        try:
            for q in self._queues:
                q.detach()
            for w in self.workers:
                if not w.finished:
                    _quietly(w.handle.terminate)
            for w in self.workers:  # WaitForParallelWorkersToExit
                _quietly(w.handle.wait_for_shutdown)
        finally:
            self._free()

    def _free(self) -> None:
        for q in self._queues:
            q.close()
        self._queues = []
        latch = getattr(self, "_latch", None)
        if latch is not None:
            latch.close()
            self._latch = None
        if getattr(self, "_attach_word", None) is not None:
            self._attach_word.release()  # (before the unmap)
            self._attach_word = None
        if getattr(self, "_attach_fd", -1) >= 0:
            os.close(self._attach_fd)
            self._attach_fd = -1
        self.segment.destroy()
        if self.backend.events.fd >= 0:
            self.backend.events.emit("parallel_context_destroyed", segment=self.segment.name)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this ParallelContext is closed (its segment is freed)")

    def __enter__(self) -> ParallelContext:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self):
        return (f"<ParallelContext {self.entry} planned={self.nworkers_planned} "
                f"launched={self.nworkers_launched} segment={self.segment.name}>")


def _quietly(fn) -> None:
    try:
        fn()
    except BgwError:
        pass  # the backend detached or the postmaster died: nothing left to wait for


def _exit_reason(handle) -> str:
    """What the event log says ended this worker (for error messages)."""
    try:
        events = handle.history()
    except Exception:
        return "no event log"
    for kinds in (("fork_failed", "early_crash", "worker_error"), ("exited",)):  # the cause first
        for e in reversed(events):
            if e.kind in kinds:
                d = {k: v for k, v in (e.detail or {}).items() if k != "traceback"}
                return f"{e.kind} {d}" if d else e.kind
    return "no exit recorded yet"
