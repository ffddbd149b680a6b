"""The latch's spin (bgwlab.parallel.latch, "Spinning first"): what ends it and what it
learns.  A spin that failed while its counterpart waits for *our* CPU turns off at once; one
that failed with the counterpart elsewhere halves; a counterpart we woke and that is not
awake yet is waited for (its wakeup's time), up to the latch's wake wait, which halves
when the counterpart never arrives.

Real processes pinned with sched_setaffinity, real /proc; deadlines, no fixed sleeps
in the assertions (a thread's sleep only stages "the counterpart is slow to wake").
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from bgwlab.parallel import dsm
from bgwlab.parallel import latch as L
from bgwlab.parallel.latch import W_MAYBE_SLEEPING, W_OWNER_PID, Peer, SharedLatch, create_latches
from bgwlab.procinfo import start_ticks

DEADLINE = 20.0
FLAG = 2048  # a word of the test's own in the segment: 1 = the child may exit
CPUS = sorted(os.sched_getaffinity(0))
TWO_CPUS = pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs")


@pytest.fixture
def seg():
    s = dsm.Segment.create(4096)
    create_latches(s, 64, 2)
    yield s
    s.destroy()


@pytest.fixture
def spin_on(monkeypatch):
    monkeypatch.setattr(L, "_spin_ns", 200_000_000)


@pytest.fixture
def affinity():
    before = os.sched_getaffinity(0)
    yield
    os.sched_setaffinity(0, before)


def words(seg, off, n=8):
    return memoryview(seg.buf)[off:off + 8 * n].cast("Q")


class BusyChild:
    """A fork child pinned to `cpu` that runs (busy) until FLAG is set or a deadline."""

    def __init__(self, seg, cpu):
        self.pid = os.fork()
        if self.pid == 0:
            try:
                os.sched_setaffinity(0, {cpu})
                flag = words(seg, FLAG, 1)
                end = time.monotonic() + DEADLINE
                while not flag[0] and time.monotonic() < end:
                    pass
            finally:
                os._exit(0)

    def end(self, seg):
        flag = words(seg, FLAG, 1)
        flag[0] = 1
        flag.release()
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


def _wait_cpu(peer, cpu) -> bool:
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        if peer.cpu() == cpu:
            return True
        time.sleep(0.001)
    return False


def test_cpu_of_this_process_and_of_a_pinned_counterpart(seg, affinity):
    """my_cpu() is one of ours; Peer.cpu() of a child pinned to CPU k says k (field 39 of
    /proc/PID/stat), and -1 once the Peer knows it is gone."""
    assert L.my_cpu() in CPUS
    k = CPUS[-1]
    child = BusyChild(seg, k)
    peer = Peer(child.pid, start_ticks(child.pid))
    try:
        assert _wait_cpu(peer, k)
    finally:
        child.end(seg)
        peer.close()
    gone = Peer(child.pid, 0)  # reaped: no pidfd, so it counts as gone
    assert gone.cpu() == -1
    gone.close()


def _spin_against_child(seg, child_cpu, my_cpu):
    """A failed 2 ms spin of a latch whose counterpart is a busy child on `child_cpu`,
    while we run on `my_cpu`.  Returns the spin the latch keeps for next time."""
    os.sched_setaffinity(0, {my_cpu})
    rec = words(seg, 64 + L.LATCH_SIZE)
    child = BusyChild(seg, child_cpu)
    me = SharedLatch(seg.buf, 64)
    peer = Peer(child.pid, start_ticks(child.pid), seg.buf, 64 + L.LATCH_SIZE)
    try:
        rec[W_OWNER_PID], rec[W_MAYBE_SLEEPING] = child.pid, 0  # "awake": a spin may pay
        me.watch(peer)
        assert _wait_cpu(peer, child_cpu)
        me.reset()
        me._spin = 2_000_000
        assert not me._spin_now(None)  # nobody sets it
        return me._spin
    finally:
        child.end(seg)
        me.unwatch(peer)
        peer.close()
        me.close()
        rec.release()


def test_a_spin_that_failed_on_a_shared_cpu_turns_off_at_once(seg, spin_on, affinity):
    """The counterpart waits for our CPU: the spin only delayed it, so no halving -- off
    (a probe tries again later)."""
    assert _spin_against_child(seg, CPUS[0], CPUS[0]) == 0


@TWO_CPUS
def test_a_spin_that_failed_with_the_counterpart_elsewhere_halves(seg, spin_on, affinity):
    assert _spin_against_child(seg, CPUS[1], CPUS[0]) == 1_000_000


def test_a_process_pinned_to_one_cpu_never_spins(monkeypatch, affinity):
    """Pinned to one CPU, a process does not spin (its counterpart, if it shares that CPU,
    could not run meanwhile); with more CPUs to use, it does."""
    os.sched_setaffinity(0, {CPUS[0]})
    monkeypatch.setattr(L, "_spin_ns", None)
    assert L.spin_ns() == 0
    os.sched_setaffinity(0, set(CPUS))
    monkeypatch.setattr(L, "_spin_ns", None)
    assert L.spin_ns() == (L.SPIN_US * 1000 if len(CPUS) > 1 else 0)


def _slow_waker(me, rec, after_s):
    """Stage a counterpart woken by us that takes `after_s` to be awake, then sets our latch."""
    def run():
        time.sleep(after_s)
        rec[W_MAYBE_SLEEPING] = 0
        me.set()
    t = threading.Thread(target=run)
    t.start()
    return t


@pytest.mark.parametrize("wake_wait", [True, False], ids=["wake-wait", "no-wake-wait"])
def test_a_spin_waits_for_a_woken_counterpart_to_arrive(seg, spin_on, wake_wait):
    """We woke the counterpart and it takes longer than a spin to be awake (a halted vCPU):
    the spin waits for it (up to the wake wait) and then pays; without the wake wait it
    would have run out before the counterpart arrived.  (The counterpart is staged by a
    thread of ours: another thread is never taken for one sharing our CPU.)"""
    me = SharedLatch(seg.buf, 64)
    peer = Peer(os.getpid(), start_ticks(os.getpid()), seg.buf, 64 + L.LATCH_SIZE)
    rec = words(seg, 64 + L.LATCH_SIZE)
    t = None
    try:
        rec[W_OWNER_PID], rec[W_MAYBE_SLEEPING] = os.getpid(), 1
        peer.woken = True  # we wrote its FIFO: on its way back
        me.watch(peer)
        me.reset()
        me._spin = 20_000_000  # 20 ms
        me._wake_wait = 2_000_000_000 if wake_wait else 0
        t = _slow_waker(me, rec, 0.06)  # awake after 60 ms, three spins' time
        t0 = time.monotonic()
        got = me._spin_now(None)
        took = time.monotonic() - t0
        if wake_wait:
            assert got and took >= 0.05 and me._spin == 200_000_000
            assert me._wake_wait == L.WAKE_WAIT_US * 1000  # it arrived: the whole wait again
        else:
            assert not got and took < 0.05 and me._spin == 10_000_000
    finally:
        if t is not None:
            t.join(DEADLINE)
        me.unwatch(peer)
        peer.close()
        me.close()
        rec.release()


def test_a_wake_wait_that_never_pays_halves(seg, monkeypatch):
    """A woken counterpart that never arrives within the wait (a CPU busy with other work,
    not a halted one): the spin ends at the wake wait, which halves, and the spin halves
    too; below a spin's length the wake wait is off."""
    monkeypatch.setattr(L, "_spin_ns", 1_000_000)  # a whole spin: 1 ms
    me = SharedLatch(seg.buf, 64)
    peer = Peer(os.getpid(), start_ticks(os.getpid()), seg.buf, 64 + L.LATCH_SIZE)
    rec = words(seg, 64 + L.LATCH_SIZE)
    try:
        rec[W_OWNER_PID], rec[W_MAYBE_SLEEPING] = os.getpid(), 1
        peer.woken = True
        me.watch(peer)
        me.reset()
        me._spin = 1_000_000
        me._wake_wait = 10_000_000
        t0 = time.monotonic()
        assert not me._spin_now(None)
        took = time.monotonic() - t0
        assert 0.009 <= took < DEADLINE
        assert me._wake_wait == 5_000_000 and me._spin == 500_000
        me._wake_wait = 1_500_000  # one more failure: below a whole spin -> off
        assert not me._spin_now(None)
        assert me._wake_wait == 0
    finally:
        me.unwatch(peer)
        peer.close()
        me.close()
        rec.release()
