"""The event log never lags what a caller has seen.

The postmaster signals a registrant before it writes the lines of what it did (the
wake-up is the latency the kit measures), so for a moment the slot array is ahead of the
log.  The header's ``log_owed`` word covers that moment: 1 from the postmaster's wake-up
to the end of its pass.  ``Cluster.events()`` and ``WorkerHandle.history()`` wait for 0.
"""

import signal
import time

from bgwlab import Cluster, HandleStatus, WorkerSpec
from bgwlab import shmem
from conftest import wait_until


def _has(events, kind, h, **detail) -> bool:
    return any(e.kind == kind and (e.slot, e.generation) == (h.slot, h.generation)
               and all(e.detail.get(k) == v for k, v in detail.items()) for e in events)


def test_a_start_seen_is_a_start_logged(cluster, backend):
    # Without the word, 27 of 200 snapshots taken right after STARTED lacked the 'forked' line.
    missing = []
    for i in range(300):
        h = backend.register_dynamic_worker(WorkerSpec(name=f"s{i}", entry="bgwlab.examples:noop"))
        status, pid = h.wait_for_startup()  # STOPPED if noop was quicker than our wake-up
        ev = cluster.events()
        if not (_has(ev, "forked", h, worker_pid=pid) if status is HandleStatus.STARTED
                else _has(ev, "forked", h) and _has(ev, "unregistered", h)):
            missing.append(i)
        assert h.wait_for_shutdown() is HandleStatus.STOPPED
    assert missing == [], f"{len(missing)} of 300 snapshots lacked the start's 'forked' line"


def test_a_failed_start_seen_is_a_failure_logged(cluster, backend):
    from bgwlab import Fault

    for i in range(50):
        h = backend.register_dynamic_worker(
            WorkerSpec(name=f"f{i}", entry="bgwlab.examples:noop", fault=Fault.fork_failure()))
        assert h.wait_for_startup()[0] is HandleStatus.STOPPED
        ev = cluster.events()
        assert _has(ev, "fork_failed", h) and _has(ev, "unregistered", h), h.explain()
        assert "fork_failed" in [e.kind for e in h.history()]


def test_the_word_is_zero_between_passes_and_a_stuck_word_does_not_hang_readers(cluster, backend):
    seg = shmem.Segment(str(cluster.directory / "shmem"))
    try:
        h = backend.register_dynamic_worker(WorkerSpec(name="w", entry="bgwlab.examples:noop"))
        h.wait_for_shutdown()
        wait_until(lambda: seg.log_owed() == 0, 5, "the postmaster's pass to end")
        # A word left at 1 (a postmaster killed mid-pass) delays a reader by at most 1 s ...
        seg.set_log_owed(1)
        t = time.monotonic()
        assert _has(cluster.events(), "forked", h)
        assert 0.9 < time.monotonic() - t < 5
        # ... and not at all once the postmaster is gone.
        cluster.kill_postmaster()
        wait_until(lambda: not cluster.alive, 5, "the postmaster's death")
        seg.set_log_owed(1)
        t = time.monotonic()
        cluster.events()
        assert time.monotonic() - t < 0.5
    finally:
        seg.close()


def test_a_pass_clears_the_word_again():
    with Cluster.start(2) as c:
        seg = shmem.Segment(str(c.directory / "shmem"))
        try:
            seg.set_log_owed(1)  # as if a pass were running
            c.kill_postmaster(signal.SIGUSR1)  # wake it (not a kill): the pass ends with 0
            wait_until(lambda: seg.log_owed() == 0, 5, "the next pass to clear the word")
        finally:
            seg.close()
