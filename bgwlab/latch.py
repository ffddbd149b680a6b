"""Latches: how a registrant sleeps until the postmaster signals it, without losing a wakeup.

Why a bare signal races with ``select()``
------------------------------------------

The obvious wait loop is::

    while handle_status() == NOT_YET_STARTED:      # (1) check
        select.select([], [], [])                   # (2) sleep until a signal interrupts us

If SIGUSR1 arrives between (1) and (2) -- after we looked, before we slept -- the handler
runs, nothing interrupts the ``select()`` that has not started yet, and we sleep forever
although the worker has started.  Masking the signal around the check does not help in
Python, and in a Jupyter kernel the signal may not even be delivered to the thread that
waits: the kernel has a dozen threads and the kernel picks any of them that does not
block SIGUSR1.  Python's own handler then runs later, in the main thread, whenever that
thread next executes bytecode -- which may be never, if the main thread is itself the one
sleeping in a C call, or much later, if it is busy.

How the self-pipe closes the race
---------------------------------

Turn the signal into *data in a file descriptor*.  CPython's C-level signal handler
writes one byte to the file descriptor given to ``signal.set_wakeup_fd()``, immediately,
from whichever thread the kernel chose, in async-signal-safe code.  Data in a pipe is a
level, not an edge: it stays there until someone reads it.  So the wait becomes::

    latch.reset()                  # drain: from now on, any new signal leaves a byte
    while (status := handle_status()) == NOT_YET_STARTED:   # check
        latch.wait()               # poll() returns at once if a byte arrived after reset
        latch.reset()

A signal that lands after ``reset()`` -- before, during or after the check -- leaves a
byte behind, and ``wait()`` returns immediately.  No wakeup is lost, whichever thread
received the signal and whichever thread waits.  This is PostgreSQL's latch
(``latch.c``: ``ResetLatch``, check, ``WaitLatch``) and the seed's ``set_latch_on_sigusr1``.

One wakeup fd per process, one latch per waiter
------------------------------------------------

A process has one wakeup fd, but may have many waiters (threads, asyncio tasks).  If they
shared one pipe, one waiter's ``reset()`` could swallow the byte meant for another.  So
``SignalDispatcher`` owns the process's wakeup fd and, for every SIGUSR1 it reads there,
sets *every* registered latch.  Each waiter has its own ``Latch`` (an eventfd, or a pipe
in ``PipeLatch``) and runs the loop above on it.

Who reads the wakeup fd?  A waiter in the *main* thread polls it itself, next to its
latch (``dispatcher.wait``): one thread, one wakeup.  Waiters in other threads need
somebody who is not busy, so the first of them starts a small daemon thread that blocks
on the fd.  It is not started for main-thread waits on purpose: a second Python thread
woken by the same signal fights the waiter for the GIL, and on a 2-core machine the
waiter that loses that hand-off can queue for a millisecond behind the worker that was
just forked (seen in scheduler traces; waiting here instead took the start's p90 from
1.36 to 0.86 ms in an A/B of 2,400 starts each).

Postmaster death is a second fd in the same ``poll()``: a pidfd of the postmaster,
readable once it exits (``Backend._pm_fd``), so a waiter never has to poll a timer to
notice it.

Siblings here, to compare in notebook 08: ``EventfdLatch`` (one fd, 8-byte counter),
``PipeLatch`` (two fds, the classic self-pipe), and ``PollingWait`` (no latch at all:
sleep and look again, which is either slow or busy).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from _signal import getsignal as _getsignal  # signal.getsignal converts to an enum: ~3 us a call

from .procinfo import wait_fds  # (defined there: see its docstring)

__all__ = ["EventfdLatch", "PipeLatch", "Latch", "PollingWait", "SignalDispatcher",
           "dispatcher", "wait_fds"]


class EventfdLatch:
    """A latch on one eventfd: set() adds 1, reset() reads the counter back to 0."""

    def __init__(self):
        self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def fileno(self) -> int:
        return self._fd

    def set(self) -> None:
        """Any thread, also from the dispatcher: never blocks."""
        try:
            os.eventfd_write(self._fd, 1)
        except (BlockingIOError, OSError):
            pass  # counter saturated or latch closed: it is set anyway / nobody waits

    def reset(self) -> None:
        try:
            os.eventfd_read(self._fd)
        except BlockingIOError:
            pass

    def is_set(self) -> bool:
        return bool(wait_fds([self._fd], 0))

    def wait(self, timeout: float | None = None, also=()) -> list[int]:
        """Sleep until the latch is set, one of `also` is readable, or `timeout` passes."""
        return wait_fds([self._fd, *also], timeout)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class PipeLatch(EventfdLatch):
    """The classic self-pipe: set() writes a byte, reset() drains the pipe."""

    def __init__(self):
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._fd = self._r

    def set(self) -> None:
        try:
            os.write(self._w, b"\0")
        except (BlockingIOError, OSError):
            pass  # pipe full: it is set anyway

    def reset(self) -> None:
        try:
            while os.read(self._r, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        if self._r >= 0:
            os.close(self._r)
            os.close(self._w)
            self._r = self._w = self._fd = -1


Latch = EventfdLatch
_SIGUSR1 = int(signal.SIGUSR1)
_SIG_DFL, _SIG_IGN = int(signal.SIG_DFL), int(signal.SIG_IGN)


class PollingWait:
    """No latch: look, sleep `interval`, look again.  For comparison only."""

    def __init__(self, interval: float = 0.01):
        self.interval = interval

    def fileno(self) -> int:
        return -1

    def set(self) -> None:
        pass

    def reset(self) -> None:
        pass

    def wait(self, timeout: float | None = None, also=()) -> list[int]:
        dt = self.interval if timeout is None else min(self.interval, timeout)
        return wait_fds(also, dt) if also else (time.sleep(dt) or [])

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


class SignalDispatcher:
    """Owns this process's SIGUSR1 handling and fans each signal out to every latch.

    Installed once per process, from the main thread (Python only lets the main thread
    change signal handlers).  Three paths set the latches, any one is enough:

    * ``wait()`` in the main thread polls the wakeup pipe beside the latch and drains it;
    * the fan-out thread (started by the first waiter outside the main thread, or at once
      if another wakeup fd must be fed) blocks on the pipe and drains it;
    * the Python-level handler, in the main thread, whenever that thread runs bytecode.

    If some other code had a wakeup fd installed (asyncio does, for
    ``loop.add_signal_handler``), the bytes we read are forwarded to it, so its signal
    handling keeps working.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._latches: set = set()
        self._installed = False
        self._pid = None
        self._r = self._w = -1
        self._forward_fd = -1
        self._thread = None
        self.signals_seen = 0  # SIGUSR1 bytes read from the wakeup pipe (by a waiter or the thread)
        self.handler_calls = 0  # runs of the Python-level handler (main thread)

    # -- installation ---------------------------------------------------------------------
    def install(self) -> None:
        """Idempotent.  The first call in a process must come from the main thread."""
        if self._installed and self._pid == os.getpid():
            if threading.current_thread() is threading.main_thread():
                self.reclaim()
            return
        with self._lock:
            if self._installed and self._pid == os.getpid():
                return
            if threading.current_thread() is not threading.main_thread():
                from .errors import BgwError

                raise BgwError(
                    "the first connect()/attach() of a process must run in its main thread "
                    "(Python installs signal handlers only there); connect once from the main "
                    "thread, then use the backend from any thread")
            r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            signal.signal(signal.SIGUSR1, self._python_handler)
            old = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
            self._forward_fd = old if old != -1 else -1
            self._r, self._w = r, w
            self._pid = os.getpid()
            self._thread = None
            self._installed = True
        if self._forward_fd != -1:
            self._ensure_thread()  # the other wakeup fd's owner must not wait for our waiters

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
        if _getsignal(_SIGUSR1) in (_SIG_DFL, _SIG_IGN, None):
            signal.signal(signal.SIGUSR1, self._python_handler)

    def _ensure_thread(self) -> None:
        """Start the fan-out thread once per process.  Any thread; needs install() first."""
        with self._lock:
            if not self._installed or self._pid != os.getpid():
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="bgwlab-signals", daemon=True)
                self._thread.start()

    @property
    def thread_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _python_handler(self, signum, frame):
        # Runs later, in the main thread.  A waiter or the thread has usually done the
        # work already; setting the latches again is a harmless extra path (e.g. if
        # someone replaced our wakeup fd after we installed it).  Never block on the lock
        # here: this handler may interrupt the main thread while *it* holds the lock (in
        # add() or remove()), and waiting would deadlock the thread on itself.
        self.handler_calls += 1
        if self._lock.acquire(blocking=False):
            try:
                for latch in self._latches:
                    latch.set()
            finally:
                self._lock.release()

    def drain(self, looking=None) -> bool:
        """Read the wakeup pipe empty, forward it, set every latch if SIGUSR1 was in it --
        but `looking`, the latch of a waiter that looks at the shared state again
        whatever its latch says (it has just woken).

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
            if len(chunk) < 4096:  # a short read emptied it: a second read would only raise
                break              # (a byte written since makes the next poll() return at once)
        if not data:
            return True
        if self._forward_fd != -1:
            try:
                os.write(self._forward_fd, data)
            except OSError:
                pass
        if _SIGUSR1 in data:
            self.signals_seen += 1
            self.set_all(looking)
        return True

    def _run(self) -> None:
        r = self._r
        while True:
            try:
                wait_fds([r], None)
            except OSError:
                return
            if not self.drain():
                return

    # -- waiting ----------------------------------------------------------------------------
    def wait(self, latch, timeout: float | None = None, also=(), looks_again: bool = False) -> list[int]:
        """``latch.wait(timeout, also)`` for a registered waiter.

        In the main thread (of the process that installed us) this also polls the wakeup
        pipe and drains it on the spot, so that the waiter wakes without handing the
        signal through a second thread.  Elsewhere it is exactly ``latch.wait``.
        `looks_again`: the caller looks at the shared state after every return, whatever
        its latch says (reset, look, wait), so a SIGUSR1 drained here need not set its
        own latch (two system calls: the set, and the read of the next reset).
        """
        r = self._r
        if (r < 0 or self._pid != os.getpid()
                or threading.current_thread() is not threading.main_thread()):
            return latch.wait(timeout, also)
        self.reclaim()
        ready = latch.wait(timeout, (*also, r))
        if r in ready:
            # sets the latches if a SIGUSR1 was in the pipe; the caller looks again
            self.drain(latch if looks_again else None)
            ready.remove(r)
        return ready

    # -- latches ----------------------------------------------------------------------------
    def set_all(self, but=None) -> None:
        # Under the lock: a waiter removes its latch (under the lock) before closing it,
        # so we never write to a closed -- possibly reused -- file descriptor.
        with self._lock:
            for latch in self._latches:
                if latch is not but:
                    latch.set()

    def add(self, latch) -> None:
        """Register a waiter's latch.  Outside the main thread, also start the fan-out thread."""
        if self._thread is None and threading.current_thread() is not threading.main_thread():
            self._ensure_thread()
        with self._lock:
            self._latches.add(latch)

    def remove(self, latch) -> None:
        with self._lock:
            self._latches.discard(latch)

    def _after_fork_in_child(self) -> None:
        # The thread did not survive fork(); the child must install again if it attaches.
        self._installed = False
        self._latches = set()
        self._lock = threading.Lock()
        self._thread = None
        if self._w >= 0:  # the child's signals must not land in the parent's pipe
            try:
                old = signal.set_wakeup_fd(-1)
                if old != self._w:
                    signal.set_wakeup_fd(old, warn_on_full_buffer=False)  # not ours: leave it
            except ValueError:
                pass  # forked from another thread: only the main thread may change it


dispatcher = SignalDispatcher()
os.register_at_fork(after_in_child=dispatcher._after_fork_in_child)
