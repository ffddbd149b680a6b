"""A/B patch: notify() without the sched_yield() after the signal (as before): an exit's and
a failed start's registrant may queue on the postmaster's CPU behind what it still does."""

import sys
import time

from bgwlab import postmaster as _imported

pm = sys.modules["__main__"] if hasattr(sys.modules["__main__"], "Postmaster") else _imported
_signal = pm._signal


def notify(self, rw, reason: str, log: bool = True) -> int:
    if rw.notify is None:
        return 0
    fd = self.backend_pidfd(*rw.notify)
    if fd is None:
        self.events.emit("notify_dropped", rw.slot, rw.generation, reason="backend detached or gone",
                         notify_pid=rw.notify[1])
        rw.notify = None
        return 0
    t = time.monotonic_ns()
    try:
        _signal.pidfd_send_signal(fd, pm.SIGUSR1)
    except OSError:
        target, rw.notify = rw.notify, None
        self.forget_backend(target[0])
        self.events.emit("notify_dropped", rw.slot, rw.generation, reason="backend exited",
                         notify_pid=target[1])
        return 0
    if log:
        self.events.emit("notified", rw.slot, rw.generation, t_ns=t, target_pid=rw.notify[1], reason=reason)
    return t


pm.Postmaster.notify = notify
