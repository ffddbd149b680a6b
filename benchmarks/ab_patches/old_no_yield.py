"""A/B patch: start_worker as it is, except that the postmaster does not give the CPU
away after signalling the registrant (before issue 12's sched_yield there)."""

import os
import sys
import time

from bgwlab import postmaster as _imported
from bgwlab import shmem

pm = sys.modules["__main__"] if hasattr(sys.modules["__main__"], "Postmaster") else _imported
import signal  # noqa: E402  (the postmaster itself no longer loads it: old_image)


def start_worker(self, rw) -> None:
    rw.fork_attempts += 1
    spec = rw.spec
    fd = self.backend_pidfd(*rw.notify) if rw.notify is not None else None
    # seg.set_pid's one aligned store, its typed view and word found before fork(): the
    # call after it would touch a bound method, two frames and the layout object first.
    pids, pid_word = self.seg._i32, (self.seg.layout.slot_off(rw.slot) + shmem.PID_OFF) // 4
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
        ev = self.events
        # One write, before the slot can read STOPPED: whoever learns it finds why in
        # the log (tests and experiments read fork_failed as soon as they know).
        lines = (self.seen_line(rw)
                 + ev.line("fork_attempted", rw.slot, rw.generation, t_ns=t_attempt, attempt=rw.fork_attempts)
                 + ev.line("fork_failed", rw.slot, rw.generation, t_ns=t_fail, errno=e.errno,
                           error=os.strerror(e.errno or 0), injected=isinstance(e, pm.InjectedOSError),
                           attempt=rw.fork_attempts))
        if spec.restart_ms == pm.NEVER:
            ev.write(lines)
            self.forget_and_notify(rw, "fork failed")
        else:
            rw.start_at = t_fail + spec.restart_ms * 1_000_000  # pid stays -1: NOT_YET_STARTED
            ev.write(lines + ev.line("restart_scheduled", rw.slot, rw.generation,
                                     after_s=spec.restart_ms / 1000))
        return
    if pid == 0:
        try:
            from bgwlab.worker import child_main

            child_main(self, rw)  # never returns ...
        finally:
            os._exit(1)  # ... nor ever unwinds into the postmaster's loop in the child
    t_forked = time.monotonic_ns()
    pids[pid_word] = pid  # = seg.set_pid(rw.slot, pid), before the signal: the registrant reads it
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
    ev = self.events  # the start's events, each with the time it happened, in one write
    lines = (self.seen_line(rw)
             + ev.line("fork_attempted", rw.slot, rw.generation, t_ns=t_attempt, attempt=rw.fork_attempts)
             + ev.line("forked", rw.slot, rw.generation, t_ns=t_forked, worker_pid=pid))
    if t_notified > 0 and rw.notify is not None:
        lines += ev.line("notified", rw.slot, rw.generation, t_ns=t_notified,
                         target_pid=rw.notify[1], reason="forked")
    ev.write(lines)


pm.Postmaster.start_worker = start_worker
