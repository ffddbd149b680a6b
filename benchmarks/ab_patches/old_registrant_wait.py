"""A/B patch (benchmarks/ab_registrant.py): the registrant's wait path as at 9236853 --
signal.getsignal (an enum conversion) at every wait, the wakeup pipe read until it raises,
every latch set on a drained SIGUSR1 (the waiter's own too), and the postmaster's pidfd
polled at every look.  Not a postmaster patch: ab_registrant.py swaps these methods into
SignalDispatcher and WorkerHandle for A's trials, in its own process."""

import os
import signal
import threading
import time

from bgwlab.backend import NOT_YET_STARTED, POSTMASTER_DIED, STOPPED, BgwError, Latch, dispatcher
from bgwlab.latch import wait_fds


def reclaim(self) -> None:
    """Main thread only: make our pipe the wakeup fd again if other code took it.

    A process has one wakeup fd, and other code sets it too: an asyncio loop that
    handled a signal sets it to -1 when it closes (nbclient's does, in a test run
    or a notebook tool).  Without ours, a SIGUSR1 that the kernel delivers to
    another thread -- a C library's thread, say -- leaves no byte anywhere, and a
    main thread asleep in ``poll()`` never learns of it: the lost wakeup of the
    essay above.  So each main-thread wait checks, before it sleeps, and takes the
    fd back, forwarding to whoever had installed one of their own.
    """
    current = signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
    if current not in (self._w, -1):
        self._forward_fd = current  # theirs keeps getting its bytes, through us
        self._ensure_thread()
    if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, signal.SIG_IGN, None):
        signal.signal(signal.SIGUSR1, self._python_handler)


def drain(self) -> bool:
    """Read the wakeup pipe empty, forward it, set every latch if SIGUSR1 was in it.

    Any thread, but never from a signal handler (it takes the lock).  Returns False
    once the pipe is closed.
    """
    data = b""
    while True:
        try:
            chunk = os.read(self._r, 4096)
        except BlockingIOError:
            break
        except OSError:
            return False
        if not chunk:
            return False
        data += chunk
    if not data:
        return True
    if self._forward_fd != -1:
        try:
            os.write(self._forward_fd, data)
        except OSError:
            pass
    if signal.SIGUSR1 in data:
        self.signals_seen += 1
        self.set_all()
    return True


def wait(self, latch, timeout: float | None = None, also=()) -> list[int]:
    """``latch.wait(timeout, also)`` for a registered waiter.

    In the main thread (of the process that installed us) this also polls the wakeup
    pipe and drains it on the spot, so that the waiter wakes without handing the
    signal through a second thread.  Elsewhere it is exactly ``latch.wait``.
    """
    r = self._r
    if (r < 0 or self._pid != os.getpid()
            or threading.current_thread() is not threading.main_thread()):
        return latch.wait(timeout, also)
    self.reclaim()
    ready = latch.wait(timeout, (*also, r))
    if r in ready:
        self.drain()  # sets the latch if a SIGUSR1 was in the pipe; the caller looks again
        ready.remove(r)
    return ready


def set_all(self) -> None:
    # Under the lock: a waiter removes its latch (under the lock) before closing it,
    # so we never write to a closed -- possibly reused -- file descriptor.
    with self._lock:
        for latch in self._latches:
            latch.set()


def _look(self, done, pm_fd, deadline):
    """One check of a wait loop (after latch.reset()).

    Returns (finished, status, pid, how long to sleep: None = until woken).
    """
    status, pid = self._status_in_wait()
    if done(status) or status is POSTMASTER_DIED:
        return True, status, pid, 0
    if pm_fd < 0 or wait_fds([pm_fd], 0):
        return True, POSTMASTER_DIED, None, 0
    remaining = None if deadline is None else deadline - time.monotonic()
    if remaining is not None and remaining <= 0:
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
    try:
        while True:
            latch.reset()  # reset, *then* check: a signal after this point leaves the latch set
            finished, status, pid, sleep_s = self._look(done, pm_fd, deadline)
            if finished:
                break
            dispatcher.wait(latch, sleep_s, also=(pm_fd,))
    finally:
        dispatcher.remove(latch)
        latch.close()
    self._log_wake(what, status, pid)
    return status, pid


DISPATCHER = {"reclaim": reclaim, "drain": drain, "wait": wait, "set_all": set_all}
HANDLE = {"_wait": _wait, "_look": _look}
