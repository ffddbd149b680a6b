"""wait_for_attach's own wakeup (issue 13 item 7): the leader sleeps on a FIFO that only the
last launched worker to attach writes, plus the postmaster's notifications -- not on its
latch, which every queue step of every worker sets."""

from __future__ import annotations

import os

import pytest

from bgwlab import Fault
from bgwlab.parallel import ParallelContext, ParallelWorkerFailed
from bgwlab.parallel import dsm
from parallel_support import E, cluster_and_backend, no_segment_left  # noqa: F401


@pytest.fixture
def pb():
    yield from cluster_and_backend(4)


def _latch_fifo_bytes(pcxt) -> int:
    """Bytes waiting in the leader's latch FIFO (what setters write to wake a sleeper)."""
    try:
        return len(os.read(pcxt._latch.fd, 4096))
    except BlockingIOError:
        return 0


def test_attach_wait_never_sleeps_on_the_leaders_latch(pb):
    # A byte in the latch's FIFO ends any sleep on the latch at once, and that wait drains
    # it.  Workers that fill their rings set the latch at every send.  After the attach
    # wait the byte is still there: it never slept on (nor drained) the latch -- so the
    # setters found it awake (maybe_sleeping = 0) and wrote nothing either.
    _c, b = pb
    with ParallelContext(b, E + "send_forever", nworkers=3, queue_size=4096) as pcxt:
        os.write(pcxt._latch.fd, b"\0")
        assert pcxt.launch() == 3
        pcxt.wait_for_attach()
        assert all(w.attached for w in pcxt.workers)
        assert _latch_fifo_bytes(pcxt) == 1
        assert pcxt._latch.is_set  # ... though it was set: the next wait looks first
        got = 0
        for _number, _msg in pcxt.messages():
            got += 1
            if got == 30:
                break
        pcxt.wait_for_finish()


def test_the_attach_fifo_is_the_segments_and_goes_with_it(pb):
    _c, b = pb
    with ParallelContext(b, E + "do_nothing", nworkers=2) as pcxt:
        name = f"{pcxt.segment.name}.{dsm.ATTACH_TAG}"
        assert name in dsm.list_segments()
        assert dsm.parse_name(name) == dsm.parse_name(pcxt.segment.name)
        assert pcxt.launch() == 2
        pcxt.wait_for_attach()
        pcxt.wait_for_finish()
    assert name not in dsm.list_segments()


def test_a_dead_leaders_attach_fifo_goes_with_its_segment():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    dead = dsm.segment_name(pid, 12345, 9)
    os.close(os.open(os.path.join(dsm.SHM_DIR, dead), os.O_CREAT, 0o600))
    os.mkfifo(os.path.join(dsm.SHM_DIR, dead + ".attach"), 0o600)
    assert dsm.remove_if_leader_gone(dead)
    assert not os.path.exists(os.path.join(dsm.SHM_DIR, dead + ".attach"))


def test_fewer_launched_than_planned_still_wakes_the_attach_wait(pb):
    # 4 slots, 2 taken: 2 of 4 planned are launched; the last of those 2 wakes the leader.
    _c, b = pb
    with ParallelContext(b, E + "send_forever", nworkers=2, queue_size=4096) as hog:
        assert hog.launch() == 2
        with ParallelContext(b, E + "do_nothing", nworkers=4) as pcxt:
            assert pcxt.launch() == 2 and pcxt.nworkers_planned == 4
            pcxt.wait_for_attach()
            pcxt.wait_for_finish()
        hog.wait_for_attach()
        hog.wait_for_finish()


def test_a_worker_that_stops_before_attaching_still_ends_the_attach_wait(pb):
    _c, b = pb
    with ParallelContext(b, E + "do_nothing", nworkers=3,
                         faults={2: Fault.crash_before_main(exit_code=1)}) as pcxt:
        assert pcxt.launch() == 3
        with pytest.raises(ParallelWorkerFailed) as ei:
            pcxt.wait_for_attach()
        assert ei.value.number == 2
