"""The engine as of 923a3a2, before issue 12's event-encoder, logging-order, wake-path,
pid-store and yield changes, for ``run.py --before`` and ``ab.py``: ``old_event_encoder``,
``old_pm_logging`` and ``old_wake_path``, and start_worker exactly as it was."""

import os
import sys
import time

import old_event_encoder  # noqa: F401
from old_event_encoder import registrant_writer  # noqa: F401  (ab.py: A's registrant too)
import old_pm_logging  # noqa: F401
import old_wake_path  # noqa: F401  (after old_pm_logging: its run is the old one)
import old_image  # noqa: F401  (signal, zlib, runpy's modules loaded, as they were)

from bgwlab import postmaster as _imported

pm = sys.modules["__main__"] if hasattr(sys.modules["__main__"], "Postmaster") else _imported
import signal  # noqa: E402  (the postmaster itself no longer loads it: old_image)


def start_worker(self, rw) -> None:
    rw.fork_attempts += 1
    spec = rw.spec
    fd = self.backend_pidfd(*rw.notify) if rw.notify is not None else None
    t_attempt = time.monotonic_ns()
    try:
        if spec.fork_errno and (spec.fork_failures == 0 or rw.fork_attempts <= spec.fork_failures):
            raise pm.InjectedOSError(spec.fork_errno, os.strerror(spec.fork_errno))
        # Block our signals across fork(): until the child has dropped our handlers and
        # wakeup fd (worker.child_main unblocks them), a signal to it would be swallowed
        # by our no-op handler and its byte written into *our* self-pipe (a SIGTERM to
        # a newborn worker would shut the cluster down).
        # (pm._signal.pthread_sigmask: signal's wrapper would turn the old mask into enum
        # members -- after fork(), pages of enum machinery copied on write before the
        # registrant hears of its pid.)
        pm._signal.pthread_sigmask(pm._signal.SIG_BLOCK, pm.FORK_BLOCKED_SIGNALS)
        try:
            pid = os.fork()
        except BaseException:
            pm._signal.pthread_sigmask(pm._signal.SIG_UNBLOCK, pm.FORK_BLOCKED_SIGNALS)
            raise
    except OSError as e:
        t_fail = time.monotonic_ns()
        injected = isinstance(e, pm.InjectedOSError)
        self.events.emit("fork_attempted", rw.slot, rw.generation, t_ns=t_attempt, attempt=rw.fork_attempts)
        self.events.emit("fork_failed", rw.slot, rw.generation, t_ns=t_fail, errno=e.errno,
                         error=os.strerror(e.errno or 0), injected=injected, attempt=rw.fork_attempts)
        if spec.restart_ms == pm.NEVER:
            self.forget_and_notify(rw, "fork failed")
        else:
            rw.start_at = t_fail + spec.restart_ms * 1_000_000  # pid stays -1: NOT_YET_STARTED
            self.events.emit("restart_scheduled", rw.slot, rw.generation, after_s=spec.restart_ms / 1000)
        return
    if pid == 0:
        try:
            from bgwlab.worker import child_main

            child_main(self, rw)  # never returns ...
        finally:
            os._exit(1)  # ... nor ever unwinds into the postmaster's loop in the child
    t_forked = time.monotonic_ns()
    self.seg.set_pid(rw.slot, pid)  # the pid before the signal: the registrant reads it
    t_notified = 0
    if fd is not None:
        t_notified = time.monotonic_ns()
        try:
            signal.pidfd_send_signal(fd, pm.SIGUSR1)
        except OSError:
            t_notified = -1  # gone meanwhile: notify() below says so and forgets it
    pm._signal.pthread_sigmask(pm._signal.SIG_UNBLOCK, pm.FORK_BLOCKED_SIGNALS)
    rw.pid = pid
    self.by_pid[pid] = rw
    del self.pending[rw.slot]
    if t_notified < 0 or (fd is None and rw.notify is not None):
        t_notified = self.notify(rw, "forked", log=False)  # sends, or logs why it cannot
    self.events.emit("fork_attempted", rw.slot, rw.generation, t_ns=t_attempt, attempt=rw.fork_attempts)
    self.events.emit("forked", rw.slot, rw.generation, t_ns=t_forked, worker_pid=pid)
    if t_notified > 0 and rw.notify is not None:
        self.events.emit("notified", rw.slot, rw.generation, t_ns=t_notified,
                         target_pid=rw.notify[1], reason="forked")


pm.Postmaster.start_worker = start_worker
