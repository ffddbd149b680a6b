"""For benchmarks/ab_queue.py --slow-wake-us N: emulate a machine whose wakeups are slow.

On a VM whose idle vCPU halts (``haltpoll.guest_halt_poll_ns=0``) on a busy host, a
process woken on another CPU may take hundreds of microseconds to run.  This module,
imported (and preloaded by the postmaster) on both sides alike, wraps ``select.poll``:
a ``poll()`` that slept (took over 20 us) busy-waits N more microseconds before it
returns -- the process was "woken" but runs only N us later.  Only the latch's sleeps
go through it; the pipe peers' blocking reads do not (they are not comparable here).
"""

import os
import select
import time

US = int(os.environ.get("BGWLAB_AB_SLOW_WAKE_US", "0"))

if US > 0 and not getattr(select.poll, "_slow_wake", False):
    _poll = select.poll
    _now = time.monotonic_ns

    class _SlowPoll:
        _slow_wake = True

        def __init__(self):
            self._p = _poll()

        def register(self, *a):
            return self._p.register(*a)

        def modify(self, *a):
            return self._p.modify(*a)

        def unregister(self, *a):
            return self._p.unregister(*a)

        def poll(self, *a):
            t0 = _now()
            r = self._p.poll(*a)
            t1 = _now()
            if t1 - t0 > 20_000:
                end = t1 + US * 1000
                while _now() < end:
                    pass
            return r

    select.poll = _SlowPoll
