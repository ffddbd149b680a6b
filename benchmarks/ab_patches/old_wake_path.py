"""A/B patch: the postmaster's wake-up as it was before issue 12's wake-path change.

Old: ``waitpid()`` on every wake, also without a child (it then raises
ChildProcessError), and the signal pipe read until it raises BlockingIOError (a second
``read()`` after every short one).  Restores ``run`` (with the flush of request_seen lines
as it is now) and ``drain_wakeups``.
"""

import os
import sys

from bgwlab import postmaster as _imported
from bgwlab import shmem

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
        self.guarded(self.reap_children)
        self.guarded(self.absorb_shmem_changes)
        self.guarded(self.advance_state)
        if self.state == shmem.PM_STOPPED:
            return 0
        self.guarded(self.start_due_workers)
        if self.unlogged:
            self.events.write(b"".join([self.seen_line(rw) for rw in list(self.unlogged.values())]))


def drain_wakeups(self) -> bytes:
    data = b""
    while True:
        try:
            chunk = os.read(self.wake_r, 4096)
        except BlockingIOError:
            return data
        if not chunk:
            return data
        data += chunk


pm.Postmaster.run = run
pm.Postmaster.drain_wakeups = drain_wakeups
