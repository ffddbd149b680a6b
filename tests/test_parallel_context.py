"""ParallelContext (DESIGN §7): launch, attach, messages, finish, and cleanup on every path."""

from __future__ import annotations

import errno

import pytest

from bgwlab import NEVER_RESTART, Fault, HandleStatus, WorkerSpec
from bgwlab.parallel import (LeaderDetached, ParallelContext, ParallelWorkerError,
                             ParallelWorkerFailed)
from bgwlab.parallel import dsm
from bgwlab.parallel import examples as ex
from conftest import wait_until
from parallel_support import PRELOAD, E, cluster_and_backend, no_segment_left  # noqa: F401



@pytest.fixture
def pb():
    yield from cluster_and_backend(6)


def all_stopped(pcxt) -> bool:
    return all(w.handle.get_pid()[0] is HandleStatus.STOPPED for w in pcxt.workers)


def test_messages_arrive_whole_in_order_per_worker_even_larger_than_the_queue(pb):
    _c, b = pb
    with ParallelContext(b, E + "produce", nworkers=3, payload=ex.plan(20, 5000),
                         queue_size=1024) as pcxt:
        name = pcxt.segment.name
        assert pcxt.launch() == 3 == pcxt.nworkers_launched == pcxt.nworkers_planned
        pcxt.wait_for_attach()
        got = {0: [], 1: [], 2: []}
        for number, msg in pcxt.messages():
            got[number].append(msg)
        pcxt.wait_for_finish()
        for n in range(3):
            assert got[n] == [ex.message(n, i, 5000) for i in range(20)]
        for s in pcxt.queue_stats():  # what was written was read, padding included
            assert s["bytes_written"] == s["bytes_read"] == 20 * (8 + 5000)
        assert dsm.Segment.attach(name).close() is None  # alive while the block runs
    assert name not in dsm.list_segments()
    assert all_stopped(pcxt)


def test_payload_and_numbers_reach_each_worker(pb):
    _c, b = pb
    payload = bytes(range(256)) * 4000  # 1 MB, read-only in the segment
    with ParallelContext(b, E + "echo", nworkers=2, payload=payload) as pcxt:
        pcxt.launch()
        got = dict(pcxt.messages())
        pcxt.wait_for_finish()
    assert got == {0: b"0:" + payload, 1: b"1:" + payload}


def test_zero_workers_is_a_valid_plan(pb):
    _c, b = pb
    with ParallelContext(b, E + "echo", nworkers=0) as pcxt:
        assert pcxt.launch() == 0
        pcxt.wait_for_attach()
        assert list(pcxt.messages()) == []
        pcxt.wait_for_finish()


def test_a_full_slot_array_launches_what_it_can(pb):
    c, b = pb
    sleepers = [b.register_dynamic_worker(WorkerSpec(name=f"s{i}", entry="bgwlab.examples:sleep_forever",
                                                     restart=NEVER_RESTART)) for i in range(4)]
    try:
        with ParallelContext(b, E + "echo", nworkers=5, payload=b"p") as pcxt:
            assert pcxt.launch() == 2  # 6 slots, 4 taken: stops at the first failure
            assert pcxt.nworkers_planned == 5 and pcxt.nworkers_launched == 2
            assert [w.number for w in pcxt.workers] == [0, 1]
            pcxt.wait_for_attach()
            assert sorted(pcxt.messages()) == [(0, b"0:p"), (1, b"1:p")]
            pcxt.wait_for_finish()
        registered = [e for e in c.events() if e.kind == "registered"
                      and str(e.detail.get("name", "")).startswith("parallel worker")]
        assert len(registered) == 2
    finally:
        for h in sleepers:
            h.terminate()
        for h in sleepers:
            h.wait_for_shutdown()


@pytest.mark.parametrize("fault, says", [
    (Fault.fork_failure(errno=errno.EAGAIN), "fork_failed"),
    (Fault.crash_before_main(exit_code=1), "early_crash"),
], ids=["fork_failure", "early_crash"])
def test_wait_for_attach_names_the_worker_that_failed_to_initialize(pb, fault, says):
    _c, b = pb
    with ParallelContext(b, E + "send_forever", nworkers=3, queue_size=64, faults={1: fault}) as pcxt:
        assert pcxt.launch() == 3
        with pytest.raises(ParallelWorkerFailed, match="parallel worker failed to initialize") as ei:
            pcxt.wait_for_attach()
        assert ei.value.number == 1
        assert "worker 1" in str(ei.value)
        wait_until(lambda: says in ParallelWorkerFailed(1, _reason(pcxt.workers[1])).reason, 5,
                   "the event log to say what happened")
    assert all_stopped(pcxt)


def _reason(w):
    from bgwlab.parallel.context import _exit_reason

    return _exit_reason(w.handle)


def test_a_worker_exception_reaches_the_leader_after_its_earlier_messages(pb):
    _c, b = pb
    with ParallelContext(b, E + "produce", nworkers=2, payload=ex.plan(3, 100, fail_after=3)) as pcxt:
        pcxt.launch()
        got = []
        with pytest.raises(ParallelWorkerError) as ei:
            for number, msg in pcxt.messages():
                got.append(number)
        e = ei.value
        assert got.count(e.number) == 3  # all it sent before failing
        assert "RuntimeError: worker %d fails on purpose after 3 messages" % e.number in e.traceback
        assert "Traceback" in e.traceback and not e.lost


def test_wait_for_finish_reraises_the_worker_traceback(pb):
    _c, b = pb
    with ParallelContext(b, E + "produce", nworkers=1, payload=ex.plan(0, 0, fail_after=0)) as pcxt:
        pcxt.launch()
        with pytest.raises(ParallelWorkerError, match="fails on purpose") as ei:
            pcxt.wait_for_finish()
        assert ei.value.number == 0


def test_wait_for_finish_stops_listening_so_senders_end_cleanly(pb):
    c, b = pb
    with ParallelContext(b, E + "send_forever", nworkers=2, queue_size=256) as pcxt:
        pcxt.launch()
        pcxt.wait_for_attach()
        pcxt.wait_for_finish()  # unread messages dropped; each worker got LeaderDetached and said 'X'
        assert all(w.finished for w in pcxt.workers)
        for w in pcxt.workers:
            assert w.handle.wait_for_shutdown() is HandleStatus.STOPPED
    exits = [e for e in c.events() if e.kind == "exited" and e.slot in {w.handle.slot for w in pcxt.workers}]
    assert [e.detail.get("exit_code") for e in exits] == [0, 0]


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_leaving_the_block_on_an_error_terminates_waits_and_frees(pb, exc):
    _c, b = pb
    with pytest.raises(exc):
        with ParallelContext(b, E + "send_forever", nworkers=2, queue_size=64) as pcxt:
            pcxt.launch()
            for number, msg in pcxt.messages():
                raise exc("the leader fails mid-stream")
    assert all_stopped(pcxt)  # waited for, not just asked
    assert pcxt.segment.name not in dsm.list_segments()
    with pytest.raises(RuntimeError, match="closed"):
        pcxt.wait_for_finish()


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(entry="not an entry"), ValueError, "module:function"),
    (dict(nworkers=-1), ValueError, "nworkers"),
    (dict(nworkers=True), ValueError, "nworkers"),
    (dict(payload="text"), TypeError, "payload"),
    (dict(queue_size=8), ValueError, "queue_size"),
    (dict(faults={5: Fault.fork_failure()}), ValueError, "worker number"),
    (dict(faults={0: "boom"}), TypeError, "Fault"),
    (dict(backend="nope"), TypeError, "Backend"),
])
def test_bad_input_is_refused_before_anything_is_used(pb, kwargs, error, match):
    c, b = pb
    args = dict(backend=b, entry=E + "echo", nworkers=2)
    args.update(kwargs)
    before = set(dsm.list_segments())
    with pytest.raises(error, match=match):
        ParallelContext(**args)
    assert set(dsm.list_segments()) == before
    assert not [e for e in c.events() if e.kind in ("registered", "parallel_context_created")]


def test_launch_twice_and_send_after_leader_detached(pb):
    _c, b = pb
    with ParallelContext(b, E + "do_nothing", nworkers=1) as pcxt:
        pcxt.launch()
        with pytest.raises(RuntimeError, match="already"):
            pcxt.launch()
        pcxt.wait_for_finish()
    assert issubclass(LeaderDetached, Exception)
