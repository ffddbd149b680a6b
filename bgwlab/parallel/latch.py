"""The process latch that message-queue waits sleep on (PostgreSQL's ``MyLatch``).

One per process, shared by every queue of that process, set by SIGUSR1 through
``bgwlab.latch.dispatcher`` -- from a counterpart that made progress, or from the
postmaster about a worker handle.  Its waits also end when a *death fd* becomes
readable: the postmaster's pidfd in a leader, the postmaster-alive pipe in a worker
(``WL_EXIT_ON_PM_DEATH``).  Two sibling classes, one per side.

Protocol of every wait (latch.py's essay): reset, check the shared state, wait; a signal
that lands after the reset leaves the latch set, so no wakeup is lost.
"""

from __future__ import annotations

import os
import signal

from ..errors import PostmasterDied
from ..latch import Latch, dispatcher
from ..procinfo import open_pidfd


class ProcessLatch:
    """Base: a dispatcher-registered latch plus the fds that mean 'the postmaster died'."""

    death_fds: tuple = ()
    drain_fds: tuple = ()

    def __init__(self):
        self._latch = Latch()
        dispatcher.add(self._latch)

    def reset(self) -> None:
        self._latch.reset()

    def set(self) -> None:
        self._latch.set()

    def wait(self, also=(), timeout: float | None = None) -> list[int]:
        """WaitLatch: sleep until set, one of `also` is readable, or `timeout`.

        Returns the readable fds among `also`.  Raises PostmasterDied if the postmaster
        is gone.  Any thread of the process that made the latch.
        """
        ready = dispatcher.wait(self._latch, timeout, also=(*also, *self.death_fds, *self.drain_fds))
        for fd in self.drain_fds:
            if fd in ready:
                _drain(fd)
        self.check_postmaster(ready)
        return [fd for fd in ready if fd in also]

    def check_postmaster(self, ready=None) -> None:
        from ..latch import wait_fds

        fds = self.death_fds
        if fds and any(fd in (ready if ready is not None else wait_fds(fds, 0)) for fd in fds):
            raise PostmasterDied("the postmaster died during a parallel operation; start a new "
                                 "cluster")

    def close(self) -> None:
        dispatcher.remove(self._latch)
        self._latch.close()


class LeaderLatch(ProcessLatch):
    """A registrant's latch; its death fd is the backend's postmaster pidfd.  Leader only."""

    def __init__(self, backend=None):
        super().__init__()
        pm_fd = getattr(backend, "_pm_fd", -1) if backend is not None else -1
        self.death_fds = (pm_fd,) if pm_fd >= 0 else ()


class WorkerLatch(ProcessLatch):
    """A worker's latch.  Worker only, from its main thread, *before* it publishes its pid
    anywhere: installs SIGUSR1 handling (a worker starts with SIGUSR1 at its default
    action, which would kill it -- PostgreSQL's BackgroundWorkerMain does the same)."""

    def __init__(self):
        dispatcher.install()
        super().__init__()
        from .. import worker

        self.death_fds = (worker._alive_fd,) if worker._alive_fd >= 0 else ()
        # The engine's own wakeup pipe (worker.sleep() and SIGTERM): the dispatcher now
        # forwards every signal byte there, so read it too, or it would stay readable.
        self.drain_fds = (worker._wake_fd,) if worker._wake_fd >= 0 else ()


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except OSError:
        pass


class Peer:
    """The counterpart process of a queue: (pid, start ticks) -> a pidfd.

    ``set_latch()`` is PostgreSQL's ``SetLatch(&proc->procLatch)``: SIGUSR1 through a
    pidfd validated against the start time, so a recycled pid is never signalled.  The
    pidfd is also readable once the process has exited: ``fd`` goes into waits.
    """

    __slots__ = ("pid", "start", "fd")

    def __init__(self, pid: int, start: int):
        self.pid, self.start = pid, start
        fd = open_pidfd(pid, start)
        self.fd = -1 if fd is None else fd

    @property
    def gone(self) -> bool:
        from ..latch import wait_fds

        return self.fd < 0 or bool(wait_fds([self.fd], 0))

    def set_latch(self) -> None:
        if self.fd >= 0:
            try:
                signal.pidfd_send_signal(self.fd, signal.SIGUSR1)
            except OSError:
                pass  # exited: its pidfd says so to whoever waits on it

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
