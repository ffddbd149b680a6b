"""The latch in the segment (bgwlab.parallel.latch): is_set + maybe_sleeping words, a FIFO
per record, SetLatch that costs no system call unless the owner may be asleep.

Each test would fail if the wakeup were wrong: a lost wakeup hangs a ping-pong (caught by
a deadline, never by a fixed sleep), a setter that skips the write leaves a sleeping
owner asleep, a dead owner makes the setter raise or hang, a leaked fd or FIFO name shows
in /proc/self/fd or /dev/shm.
"""

from __future__ import annotations

import os
import random
import select
import signal
import time

import pytest

from bgwlab.parallel import ParallelContext, dsm
from bgwlab.parallel import latch as L
from bgwlab.parallel.latch import W_IS_SET, W_MAYBE_SLEEPING, W_OWNER_PID, Peer, SharedLatch, create_latches
from bgwlab.procinfo import start_ticks
from conftest import wait_until
from parallel_support import E, cluster_and_backend, no_segment_left  # noqa: F401

DEADLINE = 20.0  # seconds: only ever reached when a wakeup was lost
COUNTERS = 2048  # offset of the test's own words in the segment


@pytest.fixture(scope="module")
def pb():
    yield from cluster_and_backend(4)


def words(seg, off, n=8):
    return memoryview(seg.buf)[off:off + 8 * n].cast("Q")


def wait_for(latch, cond, deadline) -> bool:
    """The latch loop: reset, look, wait.  False if the deadline passed first."""
    while True:
        latch.reset()
        if cond():
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        latch.wait(timeout=left)


class Child:
    """A fork child running `fn` (its return value is the exit code); reaped exactly once."""

    def __init__(self, fn):
        self.code = None
        self.pid = os.fork()
        if self.pid == 0:
            code = 1
            try:
                code = fn()
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                os._exit(code)
        self._fd = os.pidfd_open(self.pid)

    def exit_code(self, seconds: float) -> int | None:
        """Its exit status once it has exited, or None after `seconds` (poll on a pidfd)."""
        if self.code is None and select.select([self._fd], [], [], seconds)[0]:
            self.code = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.code

    def end(self) -> None:
        if self.exit_code(0) is None:
            os.kill(self.pid, signal.SIGKILL)
            self.exit_code(DEADLINE)
        os.close(self._fd)


@pytest.fixture
def seg():
    s = dsm.Segment.create(4096)
    create_latches(s, 64, 2)
    yield s
    s.destroy()


def jitter(rng):
    for _ in range(rng.randrange(0, 300)):
        pass


@pytest.mark.parametrize("spin", [False, True], ids=["sleep", "spin-then-sleep"])
def test_ping_pong_loses_no_wakeup(seg, spin, monkeypatch):
    """Two processes, each sleeping on its own latch, take 3,000 turns; every turn each
    side may find the other awake, asleep, or about to sleep.  A lost wakeup would leave
    one side asleep until the deadline.  Without the spin every wait goes through the
    maybe_sleeping protocol; with it, most turns end in the spin."""
    monkeypatch.setattr(L, "_spin_ns", 50_000 if spin else 0)  # the child is forked after this
    rounds = 3000
    w = words(seg, COUNTERS)  # w[0] ping (parent -> child), w[1] pong, w[2] child's verdict
    parent, parent_start = os.getpid(), start_ticks(os.getpid())

    def child():
        rng = random.Random(1)
        me = SharedLatch(seg.buf, 64 + L.LATCH_SIZE)
        to_parent = Peer(parent, parent_start, seg.buf, 64)
        me.watch(to_parent)  # spin only while the parent may run (as MessageQueue does)
        cw = words(seg, COUNTERS)
        deadline = time.monotonic() + DEADLINE
        for i in range(1, rounds + 1):
            if not wait_for(me, lambda: cw[0] >= i, deadline):
                cw[2] = 2  # lost
                return 3
            jitter(rng)
            cw[1] = i
            to_parent.set_latch()
        cw[2] = 1
        return 0

    me = SharedLatch(seg.buf, 64)
    kid = Child(child)
    pid = kid.pid
    to_child = None
    rec = words(seg, 64 + L.LATCH_SIZE)
    try:
        wait_until(lambda: rec[W_OWNER_PID] == pid, 10, "the child to own its latch")
        to_child = Peer(pid, start_ticks(pid), seg.buf, 64 + L.LATCH_SIZE)
        me.watch(to_child)
        rng = random.Random(2)
        deadline = time.monotonic() + DEADLINE
        for i in range(1, rounds + 1):
            w[0] = i
            to_child.set_latch()
            jitter(rng)
            assert wait_for(me, lambda: w[1] >= i, deadline), f"lost wakeup at round {i}"
        assert kid.exit_code(DEADLINE) == 0 and w[2] == 1
    finally:
        kid.end()
        if to_child is not None:
            me.unwatch(to_child)
            to_child.close()
        me.close()
        w.release()
        rec.release()


@pytest.fixture
def spin_on(monkeypatch):
    monkeypatch.setattr(L, "_spin_ns", 200_000_000)  # 200 ms: a spin that ran is unmistakable


def test_a_wait_spins_only_while_a_counterpart_may_run(seg, spin_on):
    """The spin pays only if whoever sets the latch can make progress meanwhile: nobody
    watched (no counterpart attached yet), a counterpart asleep on its latch, or one that
    disowned its record (exiting) -- no spin; a counterpart awake, or one we just woke --
    spin."""
    me = SharedLatch(seg.buf, 64)
    peer = Peer(os.getpid(), start_ticks(os.getpid()), seg.buf, 64 + L.LATCH_SIZE)
    rec = words(seg, 64 + L.LATCH_SIZE)
    try:
        me.reset()
        t0 = time.monotonic()
        assert not me._spin_now(None)  # nobody watched
        me.watch(peer)
        rec[W_OWNER_PID] = os.getpid()
        rec[W_MAYBE_SLEEPING] = 1
        assert not me._spin_now(None)  # asleep
        rec[W_MAYBE_SLEEPING] = 0
        rec[W_OWNER_PID] = 0
        assert not me._spin_now(None)  # disowned
        assert time.monotonic() - t0 < 0.1 and me._spin == 200_000_000  # no spin ran, none halved
        rec[W_OWNER_PID] = os.getpid()
        rec[W_MAYBE_SLEEPING] = 1
        peer.woken = True
        assert L._any_running([peer])  # we woke it: on its way
        rec[W_MAYBE_SLEEPING] = 0
        assert L._any_running([peer]) and not peer.woken  # seen awake: the hint is spent
        me._spin = 2_000_000  # 2 ms, never set: the spin runs out and halves
        t0 = time.monotonic()
        assert not me._spin_now(None)
        assert time.monotonic() - t0 >= 0.002 and me._spin == 1_000_000
        me.set()
        me._spin = 2_000_000
        assert me._spin_now(None) and me._spin == 200_000_000  # it paid: the whole spin again
    finally:
        me.unwatch(peer)
        peer.close()
        me.close()
        rec.release()


def test_a_spin_that_never_pays_is_tried_ever_less_often(seg, spin_on):
    """Off, the spin is tried again after PROBE_EVERY sleeps, then after twice as many
    each time it failed (up to PROBE_MAX); one that pays resets the interval."""
    me = SharedLatch(seg.buf, 64)
    try:
        me._spin = 0
        gaps = []
        for _ in range(5):
            n = 1
            while not me._spinning():
                n += 1
            gaps.append(n)
            me._spin = 0  # as a failed try leaves it
        assert gaps == [L.PROBE_EVERY * 2 ** k for k in range(5)]
        me._probe_every = L.PROBE_EVERY * 8
        me.set()
        peer = Peer(os.getpid(), start_ticks(os.getpid()), seg.buf, 64 + L.LATCH_SIZE)
        rec = words(seg, 64 + L.LATCH_SIZE)
        try:
            rec[W_OWNER_PID], rec[W_MAYBE_SLEEPING] = os.getpid(), 0
            me.watch(peer)
            me._spin = 1_000_000
            assert me._spin_now(None)  # set: pays at once
            assert me._probe_every == L.PROBE_EVERY
        finally:
            me.unwatch(peer)
            peer.close()
            rec.release()
    finally:
        me.close()


def test_a_sleeping_owner_is_woken_by_one_write(seg):
    """The owner says it may sleep (maybe_sleeping = 1) and sleeps in poll(); the setter
    must then write its FIFO.  A setter that skipped the write would leave it asleep."""
    rec = words(seg, 64 + L.LATCH_SIZE)
    out = words(seg, COUNTERS)

    def child():
        me = SharedLatch(seg.buf, 64 + L.LATCH_SIZE)
        me.reset()
        t0 = time.monotonic()
        me.wait(timeout=DEADLINE)
        cw = words(seg, COUNTERS)
        cw[0] = 1 if me.is_set and time.monotonic() - t0 < DEADLINE else 2
        cw.release()
        me.close()
        return 0

    kid = Child(child)
    peer = None
    try:
        wait_until(lambda: rec[W_MAYBE_SLEEPING] == 1, 10, "the owner to say it may sleep")
        peer = Peer(kid.pid, start_ticks(kid.pid), seg.buf, 64 + L.LATCH_SIZE)
        peer.set_latch()
        assert kid.exit_code(DEADLINE) == 0
        assert out[0] == 1, "the owner slept through the set"
        assert rec[W_MAYBE_SLEEPING] == 0 and rec[W_OWNER_PID] == 0  # awake, then disowned
    finally:
        kid.end()
        if peer is not None:
            peer.close()
        rec.release()
        out.release()


def test_set_makes_no_system_call_unless_the_owner_may_sleep(seg, monkeypatch):
    me = SharedLatch(seg.buf, 64)
    peer = Peer(os.getpid(), start_ticks(os.getpid()), seg.buf, 64)
    calls = []
    for name in ("write", "open", "read", "close"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    try:
        me.reset()
        peer.set_latch()  # awake owner: sets is_set, no wakeup
        peer.set_latch()  # already set: nothing at all
        assert me.is_set and calls == []
        me.reset()
        me._w[W_MAYBE_SLEEPING] = 1  # the owner is about to sleep
        peer.set_latch()
        assert calls == ["open", "write"] and me.is_set
        assert select.select([me.fd], [], [], 0)[0], "the byte is in the FIFO"
        calls.clear()
        me.reset()
        peer.set_latch()  # the write end stays open: one write, no open
        assert calls == ["write"]
        me._w[W_MAYBE_SLEEPING] = 0
        assert me.wait(timeout=DEADLINE) == []  # set: returns at once, without poll()
        me.reset()
        me.wait(timeout=0)  # poll()s, drains the FIFO
        assert not select.select([me.fd], [], [], 0)[0]
    finally:
        monkeypatch.undo()
        peer.close()
        me.close()


def test_a_dead_owner_neither_hangs_nor_breaks_its_setter(seg):
    """SIGKILL the owner while it sleeps: its record still says 'maybe sleeping', so the
    setter writes -- into a FIFO nobody reads (EPIPE), or one it cannot open any more
    (ENXIO).  Neither raises or blocks; the FIFO's name goes with the segment."""
    rec = words(seg, 64 + L.LATCH_SIZE)

    def child():
        me = SharedLatch(seg.buf, 64 + L.LATCH_SIZE)
        while True:
            me.reset()
            me.wait()

    kid = Child(child)
    pid = kid.pid
    peer = Peer(pid, start_ticks(pid), seg.buf, 64 + L.LATCH_SIZE)
    fresh = None
    try:
        wait_until(lambda: rec[W_MAYBE_SLEEPING] == 1, 10, "the owner to sleep")
        peer.set_latch()  # opens its FIFO, writes: the owner wakes, resets, sleeps again
        wait_until(lambda: rec[W_MAYBE_SLEEPING] == 1 and rec[W_IS_SET] == 0, 10, "the owner to sleep again")
        os.kill(pid, signal.SIGKILL)
        assert kid.exit_code(DEADLINE) == -signal.SIGKILL
        assert peer.gone and rec[W_MAYBE_SLEEPING] == 1  # what it left behind
        peer.set_latch()  # cached write end: EPIPE, swallowed
        rec[W_IS_SET] = 0
        fresh = Peer(pid, 0, seg.buf, 64 + L.LATCH_SIZE)  # a new setter: open() -> ENXIO
        fresh.set_latch()
        assert fresh.gone
    finally:
        kid.end()
        peer.close()
        if fresh is not None:
            fresh.close()
        rec.release()


def test_a_closed_writer_does_not_make_the_owner_spin(seg):
    """A FIFO opened read-only reports POLLHUP forever once its last writer closed; the
    owner keeps its own end read-write, so poll() stays quiet."""
    me = SharedLatch(seg.buf, 64)
    try:
        fd = os.open(os.path.join(dsm.SHM_DIR, me.name), os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        p = select.poll()
        p.register(me.fd, select.POLLIN)
        assert p.poll(0) == []
    finally:
        me.close()


def test_fifo_names_belong_to_the_segment(seg):
    name = f"{seg.name}.latch1"
    path = os.path.join(dsm.SHM_DIR, name)
    st = os.stat(path)
    import stat as st_

    assert st_.S_ISFIFO(st.st_mode) and st.st_mode & 0o777 == 0o600
    assert dsm.parse_name(name) == dsm.parse_name(seg.name)
    assert name in dsm.list_segments()
    with pytest.raises(PermissionError):
        dsm.Segment.attach(name)  # a FIFO is never mapped as a segment
    with pytest.raises(FileExistsError):
        seg.create_fifo("latch1")
    assert dsm.parse_name(seg.name + ".latchx") is None


def test_a_dead_leaders_fifos_go_with_its_segment():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    dead = dsm.segment_name(pid, 12345, 7)
    made = [dead, dead + ".latch0", dead + ".latch1"]
    for n in made:
        (os.mkfifo if "latch" in n else lambda p, m: os.close(os.open(p, os.O_CREAT, m)))(
            os.path.join(dsm.SHM_DIR, n), 0o600)
    assert dsm.remove_if_leader_gone(dead)
    assert not [n for n in made if os.path.exists(os.path.join(dsm.SHM_DIR, n))]


def test_contexts_leak_no_fd(pb):
    """Ten contexts whose workers wait on a full ring (so the leader opens their FIFOs to
    wake them): the leader's fd table is as it was, and /dev/shm too (autouse fixture)."""
    from bgwlab.parallel import examples as ex

    _c, b = pb
    fds = sorted(os.listdir("/proc/self/fd"))
    for _ in range(10):
        with ParallelContext(b, E + "produce", nworkers=2, payload=ex.plan(6, 40_000),
                             queue_size=4096) as pcxt:
            assert pcxt.launch() == 2
            got = list(pcxt.messages())
            pcxt.wait_for_finish()
        assert sorted(got) == sorted((n, ex.message(n, i, 40_000)) for n in range(2) for i in range(6))
    assert sorted(os.listdir("/proc/self/fd")) == fds


def test_a_parallel_worker_runs_one_thread(pb):
    """No signal fan-out thread in a worker: it used to fight the worker's main thread for
    the GIL at every wakeup (the bgwlab-worker vs fork-child sender gap)."""
    _c, b = pb
    with ParallelContext(b, E + "report_threads", nworkers=2) as pcxt:
        assert pcxt.launch() == 2
        got = sorted(pcxt.messages())
        pcxt.wait_for_finish()
    assert [int(m) for _n, m in got] == [1, 1], got
