"""The registrant side: a Backend attached to a cluster, and WorkerHandles.

A Backend is one entry in the cluster's backend table (pid + process start time), a
mapping of the segment, the registration lock and a pidfd of the postmaster.  It may be
used from any thread of the process that attached it.
"""

from __future__ import annotations

import asyncio
import enum
import fcntl
import os
import signal
import threading
import time
from pathlib import Path

from . import sched, shmem
from .errors import BgwError, NotACluster, OutOfWorkerSlots, PostmasterDied, TooManyBackends
from .eventlog import EventWriter
from .latch import Latch, dispatcher, wait_fds
from .procinfo import open_pidfd, start_ticks
from .spec import WorkerSpec, validate


class HandleStatus(enum.Enum):
    """PostgreSQL's BgwHandleStatus."""

    STARTED = "started"
    NOT_YET_STARTED = "not_yet_started"
    STOPPED = "stopped"
    POSTMASTER_DIED = "postmaster_died"


STARTED = HandleStatus.STARTED
NOT_YET_STARTED = HandleStatus.NOT_YET_STARTED
STOPPED = HandleStatus.STOPPED
POSTMASTER_DIED = HandleStatus.POSTMASTER_DIED


def read_pidfile(directory: Path) -> tuple[int, int]:
    with open(directory / "postmaster.pid") as f:
        pid, start = f.read().split()[:2]
    return int(pid), int(start)


class Backend:
    """This process, attached to one cluster.  Build with ``cluster.connect()`` or ``bgwlab.attach()``."""

    _postmaster_gone = False  # set by detach(): was the postmaster already gone then?

    def __init__(self, directory, *, log_events: bool = True, wait_slice_us: int | None = 100):
        """`wait_slice_us`: a thread that sleeps in a wait of this backend (a handle's
        wait_for_startup / wait_for_shutdown, ParallelContext.wait_for_attach) holds this
        scheduler slice from its first such sleep until the backend detaches (Linux >= 6.12,
        EEVDF): the postmaster's signal then runs it at once rather than after the task
        holding its CPU (``bgwlab/sched.py``).  None: the backend never touches a thread's
        scheduling.  PostgreSQL's backends ask for nothing of the kind."""
        self.wait_slice_ns = sched.slice_us_to_ns("wait_slice_us", wait_slice_us)
        self.directory = Path(directory)
        self._pid = os.getpid()
        self._tlock = threading.Lock()  # threads of this process; flock is per open file
        self.index = -1
        self._lock_fd = self._pm_fd = -1
        self.seg = None
        try:
            try:
                self.seg = shmem.Segment(str(self.directory / "shmem"))
                self._lock_fd = os.open(self.directory / "registration.lock",
                                        os.O_RDWR | os.O_CLOEXEC)
                self.postmaster_pid, pm_start = read_pidfile(self.directory)
            except PermissionError as e:
                raise NotACluster(
                    f"{self.directory} belongs to another user ({e.strerror}); a cluster is "
                    "private to the user who started it: start your own with Cluster.start()") from None
            except (FileNotFoundError, NotADirectoryError, ValueError) as e:
                raise NotACluster(
                    f"{self.directory} does not hold a running bgwlab cluster ({e}); start one "
                    "with bgwlab.Cluster.start() and pass its .directory") from None
            self._pm_fd = open_pidfd(self.postmaster_pid, pm_start)
            if self._pm_fd is None:
                raise PostmasterDied(
                    f"the postmaster of {self.directory} is not running; start a new cluster")
            self.events = EventWriter(str(self.directory / "events.jsonl"), "backend",
                                      enabled=log_events)
            dispatcher.install()
            self._attach()
        except BaseException:
            self._close_fds()
            raise

    # -- attach / detach ---------------------------------------------------------------------
    def _attach(self) -> None:
        me, start, uid = os.getpid(), start_ticks(os.getpid()), os.getuid()
        with self._locked():
            free = -1
            for i in range(self.seg.max_backends):
                in_use, pid, st, _uid = self.seg.backend(i)
                if not in_use or start_ticks(pid) != st:  # free, or its process is gone
                    free = i
                    break
            if free < 0:
                raise TooManyBackends(
                    f"all {self.seg.max_backends} backend entries of this cluster are in use; "
                    "detach backends you no longer need, or start the cluster with a larger max_backends")
            self.seg.set_backend(free, 1, me, start, uid)
            self.index = free
            self._start = start
        self._signal_postmaster(shmem.PMSIGNAL_BACKEND_CHANGE)
        self.events.emit("backend_attached", backend=free)

    def detach(self) -> None:
        """Leave the backend table: the postmaster will never signal this backend again."""
        if self.index < 0 or os.getpid() != self._pid:
            return
        try:
            with self._locked():
                in_use, pid, st, _ = self.seg.backend(self.index)
                if in_use and pid == self._pid and st == self._start:
                    self.seg.set_backend(self.index, 0, 0, 0, 0)
            self._signal_postmaster(shmem.PMSIGNAL_BACKEND_CHANGE)
            self.events.emit("backend_detached", backend=self.index)
        except (OSError, ValueError, BgwError):
            pass
        self.index = -1
        sched.release_all(self)  # the threads that waited here get their own slices back
        try:  # remembered for waits still pending in other threads (see _status_in_wait)
            self._postmaster_gone = self._pm_fd < 0 or bool(wait_fds([self._pm_fd], 0))
        except OSError:
            self._postmaster_gone = True
        self._close_fds()

    close = detach

    def hold_short_slice(self) -> None:
        """Before a wait sleeps: the calling thread gets wait_slice_us, once (see __init__).
        Any thread of the process that attached."""
        if self.wait_slice_ns and not sched.holds(self):
            sched.hold_for(self, self.wait_slice_ns)

    @property
    def attached(self) -> bool:
        return self.index >= 0

    def _close_fds(self) -> None:
        for name in ("_lock_fd", "_pm_fd"):
            fd = getattr(self, name)
            if fd is not None and fd >= 0:
                os.close(fd)
                setattr(self, name, -1)
        if getattr(self, "events", None) is not None:
            self.events.close()
        if self.seg is not None:
            self.seg.close()  # the mapping holds an fd of its own
            self.seg = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.detach()

    def __del__(self):
        try:
            if self.index >= 0 and os.getpid() == self._pid:
                self.detach()
        except Exception:
            pass

    def __repr__(self):
        return f"<Backend {self.index} of {self.directory}>"

    # -- helpers ---------------------------------------------------------------------------------
    def _check_usable(self) -> None:
        if os.getpid() != self._pid:
            raise BgwError("this Backend was attached by another process (before a fork); "
                           "call bgwlab.attach(directory) in this process")
        if self.index < 0:
            raise BgwError("this Backend has detached; attach again with bgwlab.attach(directory)")

    class _Locked:
        __slots__ = ("b",)

        def __init__(self, b):
            self.b = b

        def __enter__(self):
            self.b._tlock.acquire()
            try:
                fcntl.flock(self.b._lock_fd, fcntl.LOCK_EX)
            except BaseException:
                self.b._tlock.release()
                raise

        def __exit__(self, *exc):
            try:
                fcntl.flock(self.b._lock_fd, fcntl.LOCK_UN)
            finally:
                self.b._tlock.release()

    def _locked(self):
        """The registration lock: threads of this process, then processes (flock dies with its holder)."""
        return Backend._Locked(self)

    def postmaster_alive(self) -> bool:
        return self._pm_fd >= 0 and not wait_fds([self._pm_fd], 0)

    def _signal_postmaster(self, reason: int) -> None:
        self.seg.set_pmsignal(reason)
        try:
            signal.pidfd_send_signal(self._pm_fd, signal.SIGUSR1)
        except OSError:
            raise PostmasterDied("the postmaster has died; start a new cluster") from None

    # -- registration ----------------------------------------------------------------------------
    def register_dynamic_worker(self, spec: WorkerSpec) -> WorkerHandle:
        """RegisterDynamicBackgroundWorker: claim a free slot, publish the spec, wake the postmaster.

        Raises InvalidWorkerSpec (before any slot is used), OutOfWorkerSlots or PostmasterDied
        (only when the postmaster is dead).  During a shutdown the request is taken and the
        handle reads STOPPED once the postmaster has dropped it, as in PostgreSQL.
        """
        if not isinstance(spec, WorkerSpec):
            from .errors import InvalidWorkerSpec

            raise InvalidWorkerSpec(f"expected a bgwlab.WorkerSpec, got {type(spec).__name__}")
        validate(spec)  # again: a frozen dataclass can still be forced
        self._check_usable()
        if not self.postmaster_alive():
            raise PostmasterDied("the postmaster has died; nothing can be started. Start a new cluster")
        # A cluster that is shutting down still takes the request, as PostgreSQL's does
        # (BackgroundWorkerStateChange): the postmaster forgets it at once and notifies us,
        # so the handle reads STOPPED -- or POSTMASTER_DIED, if it exits first.
        notify = (self.index, self._pid, self._start) if spec.notify else None
        seg = self.seg
        with self._locked():
            in_use = seg.in_use_array()
            slot = in_use.find(0)
            if slot < 0:
                raise OutOfWorkerSlots(
                    f"all {seg.max_workers} worker slots are in use; wait for a worker to stop "
                    "(handle.wait_for_shutdown()), terminate one, or start the cluster with a larger "
                    "max_workers")
            generation = seg.next_generation()
            seg.set_next_generation(generation + 1)
            # The protocol of shmem.py: spec, generation, pid, terminate -- in_use last.
            seg.write_spec(slot, shmem.encode_spec(spec, generation, notify))
            seg.set_generation(slot, generation)
            seg.set_pid(slot, -1)
            seg.set_terminate(slot, 0)
            seg.set_in_use(slot, 1)
        t = time.monotonic_ns()
        try:
            self._signal_postmaster(shmem.PMSIGNAL_WORKER_CHANGE)
        finally:  # log after signalling, with the time of registration: logging never delays the request
            self.events.emit("registered", slot, generation, t_ns=t, name=spec.name, entry=spec.entry,
                             notify=spec.notify,
                             fault=spec.fault.describe() if spec.fault else None)
        return WorkerHandle(self, slot, generation, spec.name, t, spec.notify)

    def handle(self, slot: int, generation: int, *, notify: bool = False) -> WorkerHandle:
        """A handle from its two numbers (e.g. passed from another process).

        Its notifications go to whoever registered it, so by default its waits poll.
        """
        if not 0 <= slot < self.seg.max_workers:
            raise ValueError(f"slot must be in 0..{self.seg.max_workers - 1}")
        return WorkerHandle(self, slot, generation, "", 0, notify)

    # -- reading slots -------------------------------------------------------------------------
    def _slot_status(self, slot: int, generation: int) -> tuple[HandleStatus, int | None]:
        seg = self.seg
        if seg is None:
            raise BgwError("this backend has detached (or its cluster was stopped); handles of a "
                           "detached backend cannot be read. Attach again with bgwlab.attach(directory)")
        g1 = seg.generation(slot)
        in_use = seg.in_use(slot)
        pid = seg.pid(slot)
        g2 = seg.generation(slot)
        if g1 != generation or g2 != generation or not in_use:
            return STOPPED, None
        if pid == 0:
            return STOPPED, None
        if pid < 0:
            return NOT_YET_STARTED, None
        return STARTED, pid


class WorkerHandle:
    """BackgroundWorkerHandle: (slot, generation).  Cheap to copy; holds no resources."""

    __slots__ = ("backend", "slot", "generation", "name", "registered_ns", "notify")

    # A handle registered with notify=False gets no signal: its waits cannot sleep on the
    # latch alone (PostgreSQL's would sleep until something else sets the latch).  They look
    # again every UNNOTIFIED_POLL_S instead -- visibly slower, never stuck.
    UNNOTIFIED_POLL_S = 0.01

    def __init__(self, backend: Backend, slot: int, generation: int, name: str, registered_ns: int,
                 notify: bool = True):
        self.backend = backend
        self.slot = slot
        self.generation = generation
        self.name = name
        self.registered_ns = registered_ns
        self.notify = notify

    def __repr__(self):
        status, pid = self.get_pid()
        p = f" pid={pid}" if pid else ""
        return f"<WorkerHandle slot={self.slot} generation={self.generation} {status.name}{p}>"

    def __eq__(self, other):
        return isinstance(other, WorkerHandle) and (self.slot, self.generation) == (other.slot, other.generation)

    def __hash__(self):
        return hash((self.slot, self.generation))

    def get_pid(self) -> tuple[HandleStatus, int | None]:
        """GetBackgroundWorkerPid: (STARTED, pid), (NOT_YET_STARTED, None) or (STOPPED, None).

        Never POSTMASTER_DIED, and never blocks.
        """
        return self.backend._slot_status(self.slot, self.generation)

    @property
    def status(self) -> HandleStatus:
        return self.get_pid()[0]

    def history(self) -> list:
        """What the cluster's event log says happened to this worker (its slot and
        generation), in time order: the evidence to show when a status surprises you."""
        from .events import read_events, slot_history

        if self.backend.seg is not None:  # the postmaster logs after it signals: let it finish
            self.backend.seg.wait_log_complete(alive=self.backend.postmaster_alive)
        return slot_history(read_events(self.backend.directory / "events.jsonl"), self.slot,
                            self.generation)

    def explain(self) -> str:
        """``history()`` as text, headed by the handle: for assertion and error messages."""
        from .events import format_events

        return (f"worker {self.name!r} slot {self.slot} generation {self.generation} of "
                f"{self.backend.directory}:\n{format_events(self.history())}")

    def terminate(self) -> None:
        """TerminateBackgroundWorker: ask the postmaster to stop (or never start) it.  Returns at once.

        A stale handle (the slot was reused) is a no-op.
        """
        b = self.backend
        b._check_usable()
        with b._locked():
            if b.seg.generation(self.slot) != self.generation or not b.seg.in_use(self.slot):
                return
            b.seg.set_terminate(self.slot, 1)
        b.events.emit("terminate_requested", self.slot, self.generation)
        try:
            b._signal_postmaster(shmem.PMSIGNAL_WORKER_CHANGE)
        except PostmasterDied:
            pass

    # -- waiting -----------------------------------------------------------------------------------
    def wait_for_startup(self, timeout: float | None = None) -> tuple[HandleStatus, int | None]:
        """WaitForBackgroundWorkerStartup: (STARTED, pid), (STOPPED, None) or (POSTMASTER_DIED, None).

        Sleeps on the latch: no polling.  With a timeout that expires, returns the current
        status (possibly NOT_YET_STARTED).  STARTED means forked, not "reached user code".
        A handle registered with notify=False has no signal to wake it: it looks again
        every 10 ms instead.
        """
        return self._wait(lambda s: s is not NOT_YET_STARTED, timeout, "startup")

    def wait_for_shutdown(self, timeout: float | None = None) -> HandleStatus:
        """WaitForBackgroundWorkerShutdown: STOPPED or POSTMASTER_DIED (or the current status on timeout)."""
        return self._wait(lambda s: s is STOPPED, timeout, "shutdown")[0]

    def _status_in_wait(self):
        """get_pid() for a wait loop.  Cluster.stop() detaches its backends once the
        postmaster is gone, also under waits still pending in other threads or tasks:
        those end with POSTMASTER_DIED rather than an error about a closed mapping."""
        try:
            return self.get_pid()
        except (BgwError, ValueError):
            if self.backend._postmaster_gone:
                return POSTMASTER_DIED, None
            raise

    def _look(self, done, pm_fd, deadline, pm_news=True):
        """One check of a wait loop (after latch.reset()).

        Returns (finished, status, pid, how long to sleep: None = until woken).
        `pm_news=False`: the postmaster's pidfd was not readable when the wait returned, so
        it was alive then -- no need to ask again (the next sleep has it in its poll() and
        returns at once if it dies).  Asked anyway before a deadline ends the wait.
        """
        status, pid = self._status_in_wait()
        if done(status) or status is POSTMASTER_DIED:
            return True, status, pid, 0
        remaining = None if deadline is None else deadline - time.monotonic()
        expired = remaining is not None and remaining <= 0
        if (pm_news or expired) and (pm_fd < 0 or wait_fds([pm_fd], 0)):
            return True, POSTMASTER_DIED, None, 0
        if expired:
            return True, status, pid, 0
        if not self.notify:
            remaining = min(remaining or self.UNNOTIFIED_POLL_S, self.UNNOTIFIED_POLL_S)
        return False, status, pid, remaining

    def _wait(self, done, timeout, what):
        b = self.backend
        deadline = None if timeout is None else time.monotonic() + timeout
        pm_fd = b._pm_fd
        latch = Latch()
        dispatcher.add(latch)
        pm_news = True  # (the first look asks whether the postmaster lives)
        try:
            while True:
                latch.reset()  # reset, *then* check: a signal after this point leaves the latch set
                finished, status, pid, sleep_s = self._look(done, pm_fd, deadline, pm_news)
                if finished:
                    break
                b.hold_short_slice()
                # looks_again: we look after every wakeup, so a SIGUSR1 the dispatcher drains
                # here need not set our own latch
                pm_news = pm_fd in dispatcher.wait(latch, sleep_s, also=(pm_fd,), looks_again=True)
        finally:
            dispatcher.remove(latch)
            latch.close()
        self._log_wake(what, status, pid)
        return status, pid

    def _log_wake(self, what, status, pid):
        b = self.backend
        if b.events.fd >= 0:
            b.events.emit("woke", self.slot, self.generation, wait=what, status=status.value,
                          worker_pid=pid)
            if status is POSTMASTER_DIED:
                b.events.emit("postmaster_died", self.slot, self.generation, seen_by="wait")

    async def wait_for_startup_async(self, timeout: float | None = None):
        """``await`` twin of wait_for_startup (usable with top-level await in a notebook)."""
        return await self._wait_async(lambda s: s is not NOT_YET_STARTED, timeout, "startup")

    async def wait_for_shutdown_async(self, timeout: float | None = None) -> HandleStatus:
        """``await`` twin of wait_for_shutdown."""
        return (await self._wait_async(lambda s: s is STOPPED, timeout, "shutdown"))[0]

    async def _wait_async(self, done, timeout, what):
        b = self.backend
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else time.monotonic() + timeout
        latch = Latch()
        pm_fd = os.dup(b._pm_fd) if b._pm_fd >= 0 else -1
        dispatcher.add(latch)
        try:
            while True:
                latch.reset()
                finished, status, pid, remaining = self._look(done, pm_fd, deadline)
                if finished:
                    break
                fut = loop.create_future()

                def wake(fut=fut):
                    if not fut.done():
                        fut.set_result(None)

                loop.add_reader(latch.fileno(), wake)
                loop.add_reader(pm_fd, wake)
                try:
                    await asyncio.wait_for(fut, remaining)
                except asyncio.TimeoutError:
                    pass
                finally:
                    loop.remove_reader(latch.fileno())
                    loop.remove_reader(pm_fd)
        finally:
            dispatcher.remove(latch)
            latch.close()
            if pm_fd >= 0:
                os.close(pm_fd)
        self._log_wake(what, status, pid)
        return status, pid
