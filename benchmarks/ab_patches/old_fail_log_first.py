"""A/B patch: a failed fork's lines and 'unregistered' written *before* the registrant is
signalled, as before (start_worker and forget_and_notify as at 316e760)."""

import os
import sys
import time

from bgwlab import postmaster as _imported

pm = sys.modules["__main__"] if hasattr(sys.modules["__main__"], "Postmaster") else _imported
_signal = pm._signal
shmem = pm.shmem
NEVER = pm.NEVER
InjectedOSError = pm.InjectedOSError
FORK_BLOCKED_SIGNALS = pm.FORK_BLOCKED_SIGNALS
SIGUSR1 = pm.SIGUSR1


def forget_and_notify(self, rw, reason: str) -> None:
    """ForgetBackgroundWorker, then wake the registrant (so it can reuse the slot at once)."""
    if self.workers.get(rw.slot) is not rw:
        return
    if self.unlogged.get(rw.slot) is rw:  # (forgotten in the pass that saw it)
        self.events.write(self.seen_line(rw))
    gen_there = self.seg.generation(rw.slot)  # ours, unless a registrant wrote over our slot
    raw_there = self.seg.spec_bytes(rw.slot) if gen_there != rw.generation else None
    if gen_there != rw.generation or self.seg.pid(rw.slot) != -1:
        # A worker that ran: pid 0 before the token, as ReportBackgroundWorkerExit writes
        # slot->pid before ForgetBackgroundWorker frees the slot -- a reader never sees a
        # free slot with a pid (and, between the two stores, reads STOPPED for a slot not
        # yet free: PostgreSQL's window too).
        self.seg.set_pid(rw.slot, 0)
    # One that never started keeps pid -1 (NOT_YET_STARTED) until the token goes, so its
    # registrant reads STOPPED only once the slot is free and can register again at once.
    # (A clean-clone CI run caught the window: a terminated, never-started worker read
    # STOPPED while its slot was still in use.)  bgwlab differs here: PostgreSQL's
    # BackgroundWorkerStateChange reports such a worker dead (ReportBackgroundWorkerPID,
    # pid 0) a pass before maybe_start_bgworkers frees its slot (README, Differences).
    self.seg.set_in_use(rw.slot, 0)
    t = time.monotonic_ns()
    del self.workers[rw.slot]
    self.owned[rw.slot] = 0
    self.pending.pop(rw.slot, None)
    # logged before the signal: a registrant it wakes finds the worker gone in the log
    self.events.emit("unregistered", rw.slot, rw.generation, t_ns=t, reason=reason)
    self.notify(rw, reason)
    if raw_there is not None:  # (its in_use token had been scribbled): freed with ours, wake it
        self.events.emit("slot_rejected", rw.slot, gen_there, reason="registered over a live slot")
        self.wake_rejected(rw.slot, gen_there, raw_there)
    elif self.state == shmem.PM_RUNNING:
        self.warm_request_path(rw)


def start_worker(self, rw) -> None:
    """do_start_bgworker: fork, publish the pid, notify -- then the rest (logging never
    delays the signal).

    Between fork() and the signal the parent runs as little Python as it can: every
    page it writes there is a copy-on-write fault (the child shares them all), paid
    while the registrant waits.  So the notify target is validated before the fork
    (the pidfd reaches exactly that process whenever we send), and the bookkeeping
    comes after the signal.
    """
    rw.fork_attempts += 1
    spec = rw.spec
    fd = self.backend_pidfd(*rw.notify) if rw.notify is not None else None
    # seg.set_pid's one aligned store, its typed view and word found before fork(): the
    # call after it would touch a bound method, two frames and the layout object first.
    pids, pid_word = self.seg._i32, (self.seg.layout.slot_off(rw.slot) + shmem.PID_OFF) // 4
    t_attempt = time.monotonic_ns()
    try:
        if spec.fork_errno and (spec.fork_failures == 0 or rw.fork_attempts <= spec.fork_failures):
            raise InjectedOSError(spec.fork_errno, os.strerror(spec.fork_errno))
        # Block our signals across fork(): until the child has dropped our handlers and
        # wakeup fd (worker.child_main unblocks them), a signal to it would be swallowed
        # by our no-op handler and its byte written into *our* self-pipe (a SIGTERM to
        # a newborn worker would shut the cluster down).
        _signal.pthread_sigmask(_signal.SIG_BLOCK, FORK_BLOCKED_SIGNALS)
        try:
            pid = os.fork()
        except BaseException:
            _signal.pthread_sigmask(_signal.SIG_UNBLOCK, FORK_BLOCKED_SIGNALS)
            raise
    except OSError as e:
        t_fail = time.monotonic_ns()
        ev = self.events
        # One write, before the slot can read STOPPED: whoever learns it finds why in
        # the log (tests and experiments read fork_failed as soon as they know).
        lines = (self.seen_line(rw)
                 + ev.line("fork_attempted", rw.slot, rw.generation, t_ns=t_attempt, attempt=rw.fork_attempts)
                 + ev.line("fork_failed", rw.slot, rw.generation, t_ns=t_fail, errno=e.errno,
                           error=os.strerror(e.errno or 0), injected=isinstance(e, InjectedOSError),
                           attempt=rw.fork_attempts))
        if spec.restart_ms == NEVER:
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
            _signal.pidfd_send_signal(fd, SIGUSR1)
        except OSError:
            t_notified = -1  # gone meanwhile: notify() below says so and forgets it
        # Give the CPU away once, as the new worker does (worker.child_main): the
        # registrant we just woke is often queued on our CPU, and what we still do here
        # (bookkeeping, the start's events: copy-on-write faults while the child shares
        # our pages, ~0.1-0.2 ms) would run first (A/B in benchmarks/README.md).
        os.sched_yield()
    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, FORK_BLOCKED_SIGNALS)
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
pm.Postmaster.forget_and_notify = forget_and_notify
