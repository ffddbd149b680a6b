"""A/B patch: the postmaster's start_worker as it was before it published the pid and
signalled the registrant first (validation, sigmask and bookkeeping between fork() and the
signal)."""

import os
import time

import sys

from bgwlab import postmaster as _imported

# The postmaster runs as ``python -m bgwlab.postmaster``: its code is the module __main__,
# not the (separately imported) bgwlab.postmaster -- patch the one that runs.
pm = sys.modules["__main__"] if hasattr(sys.modules["__main__"], "Postmaster") else _imported


def start_worker(self, rw) -> None:
    rw.fork_attempts += 1
    spec = rw.spec
    t_attempt = time.monotonic_ns()
    try:
        if spec.fork_errno and (spec.fork_failures == 0 or rw.fork_attempts <= spec.fork_failures):
            raise pm.InjectedOSError(spec.fork_errno, os.strerror(spec.fork_errno))
        pm._signal.pthread_sigmask(pm._signal.SIG_BLOCK, pm.FORK_BLOCKED_SIGNALS)
        try:
            pid = os.fork()
        finally:
            if os.getpid() == self.pid:
                pm._signal.pthread_sigmask(pm._signal.SIG_UNBLOCK, pm.FORK_BLOCKED_SIGNALS)
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
    rw.pid = pid
    self.seg.set_pid(rw.slot, pid)
    self.by_pid[pid] = rw
    del self.pending[rw.slot]
    t_notified = self.notify(rw, "forked", log=False)
    self.events.emit("fork_attempted", rw.slot, rw.generation, t_ns=t_attempt, attempt=rw.fork_attempts)
    self.events.emit("forked", rw.slot, rw.generation, t_ns=t_forked, worker_pid=pid)
    if t_notified:
        self.events.emit("notified", rw.slot, rw.generation, t_ns=t_notified,
                         target_pid=rw.notify[1], reason="forked")


pm.Postmaster.start_worker = start_worker
