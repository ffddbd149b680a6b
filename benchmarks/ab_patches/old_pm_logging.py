"""A/B patch: the postmaster's logging as it was before issue 12's logging changes.

Old: ``request_seen`` written when the request is copied (before the fork, on the
registrant's path); every start event written with its own ``write()``; a failed fork's
``fork_attempted`` and ``fork_failed`` each written alone.  Restores ``run`` (without the
flush of request_seen lines; its wake path as it is now), ``accept_registration``,
``start_worker`` and ``forget_and_notify``.  The event writer is the same on both sides
(``old_event_encoder`` is that change), and so is the wake path (``old_wake_path``).
"""

import os
import sys
import time

from bgwlab import postmaster as _imported
from bgwlab import shmem

# The postmaster runs as ``python -m bgwlab.postmaster``: its code is the module __main__,
# not the (separately imported) bgwlab.postmaster -- patch the one that runs.
pm = sys.modules["__main__"] if hasattr(sys.modules["__main__"], "Postmaster") else _imported
import signal  # noqa: E402  (the postmaster itself no longer loads it: old_image)


def run(self) -> int:
    while True:
        timeout_ms = self.next_timeout_ms()
        try:
            ready = self.poller.poll(timeout_ms)
        except InterruptedError:
            ready = []
        sigs = self.drain_wakeups()
        self.usr1 = signal.SIGUSR1 in sigs
        for fd, _ in ready:
            if fd == self.starter_fd and self.state != shmem.PM_SHUTDOWN:
                self.begin_shutdown("the process that started the cluster exited")
            elif fd not in (self.wake_r, self.starter_fd):
                self.forget_backend_fd(fd)
        if (signal.SIGTERM in sigs or signal.SIGINT in sigs or signal.SIGQUIT in sigs) \
                and self.state != shmem.PM_SHUTDOWN:
            self.begin_shutdown("shutdown requested")
        if self.by_pid or pm.SIGCHLD in sigs:  # (the wake path as it is: not this patch's)
            self.guarded(self.reap_children)
        self.guarded(self.absorb_shmem_changes)
        self.guarded(self.advance_state)
        if self.state == shmem.PM_STOPPED:
            return 0
        self.guarded(self.start_due_workers)


def accept_registration(self, slot: int, now: int) -> None:
    gen = self.seg.generation(slot)
    raw = self.seg.spec_bytes(slot)
    spec = shmem.decode_spec(raw, gen)
    if isinstance(spec, str) or gen <= self.slot_hwm[slot]:
        reason = spec if isinstance(spec, str) else "generation went backwards"
        first = self.suspect.setdefault(slot, now)
        if now - first < shmem.RECHECK_NS:
            return
        del self.suspect[slot]
        self.seg.set_pid(slot, 0)
        self.seg.set_in_use(slot, 0)
        self.events.emit("slot_rejected", slot, gen, reason=reason)
        if not isinstance(spec, str):
            self.seg.set_next_generation(max(self.seg.next_generation(), self.gen_hwm + 1))
        self.wake_rejected(slot, gen, raw)
        return
    self.suspect.pop(slot, None)
    rw = pm.RegisteredWorker(slot, gen, spec, raw, now)
    rw.seen_in_recovery = self.state == shmem.PM_CRASH_RECOVERY
    self.slot_hwm[slot] = gen
    if gen > self.gen_hwm:
        self.gen_hwm = gen
    self.workers[slot] = rw
    self.owned[slot] = 1
    self.seg.set_pid(slot, -1)
    if spec.notify_backend >= 0:
        target = (spec.notify_backend, spec.notify_pid, spec.notify_start)
        if self.backend_pidfd(*target) is not None:
            rw.notify = target
        else:
            self.events.emit("notify_dropped", slot, gen, reason="notify pid is not a live attached backend",
                             notify_pid=spec.notify_pid)
    self.events.emit("request_seen", slot, gen, t_ns=now, name=spec.name)
    if self.state == shmem.PM_SHUTDOWN:
        self.forget_and_notify(rw, "postmaster shutdown")
    else:
        self.pending[slot] = rw


def forget_and_notify(self, rw, reason: str) -> None:
    if self.workers.get(rw.slot) is not rw:
        return
    gen_there = self.seg.generation(rw.slot)
    raw_there = self.seg.spec_bytes(rw.slot) if gen_there != rw.generation else None
    self.seg.set_pid(rw.slot, 0)
    self.seg.set_in_use(rw.slot, 0)
    del self.workers[rw.slot]
    self.owned[rw.slot] = 0
    self.pending.pop(rw.slot, None)
    self.events.emit("unregistered", rw.slot, rw.generation, reason=reason)
    self.notify(rw, reason)
    if raw_there is not None:
        self.events.emit("slot_rejected", rw.slot, gen_there, reason="registered over a live slot")
        self.wake_rejected(rw.slot, gen_there, raw_there)


def start_worker(self, rw) -> None:
    rw.fork_attempts += 1
    spec = rw.spec
    fd = self.backend_pidfd(*rw.notify) if rw.notify is not None else None
    pids, pid_word = self.seg._i32, (self.seg.layout.slot_off(rw.slot) + shmem.PID_OFF) // 4  # (as it is)
    t_attempt = time.monotonic_ns()
    try:
        if spec.fork_errno and (spec.fork_failures == 0 or rw.fork_attempts <= spec.fork_failures):
            raise pm.InjectedOSError(spec.fork_errno, os.strerror(spec.fork_errno))
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
            rw.start_at = t_fail + spec.restart_ms * 1_000_000
            self.events.emit("restart_scheduled", rw.slot, rw.generation, after_s=spec.restart_ms / 1000)
        return
    if pid == 0:
        try:
            from bgwlab.worker import child_main

            child_main(self, rw)
        finally:
            os._exit(1)
    t_forked = time.monotonic_ns()
    pids[pid_word] = pid
    t_notified = 0
    if fd is not None:
        t_notified = time.monotonic_ns()
        try:
            signal.pidfd_send_signal(fd, pm.SIGUSR1)
        except OSError:
            t_notified = -1
        os.sched_yield()  # (as it is)
    pm._signal.pthread_sigmask(pm._signal.SIG_UNBLOCK, pm.FORK_BLOCKED_SIGNALS)
    rw.pid = pid
    self.by_pid[pid] = rw
    del self.pending[rw.slot]
    if t_notified < 0 or (fd is None and rw.notify is not None):
        t_notified = self.notify(rw, "forked", log=False)
    self.events.emit("fork_attempted", rw.slot, rw.generation, t_ns=t_attempt, attempt=rw.fork_attempts)
    self.events.emit("forked", rw.slot, rw.generation, t_ns=t_forked, worker_pid=pid)
    if t_notified > 0 and rw.notify is not None:
        self.events.emit("notified", rw.slot, rw.generation, t_ns=t_notified,
                         target_pid=rw.notify[1], reason="forked")


pm.Postmaster.run = run
pm.Postmaster.accept_registration = accept_registration
pm.Postmaster.forget_and_notify = forget_and_notify
pm.Postmaster.start_worker = start_worker
