"""The postmaster's scheduler slice (bgwlab/sched.py): asked for by Cluster.start, read back
from the kernel, not inherited by workers, refused when out of range, skipped when off."""

from __future__ import annotations

import os

import pytest

from bgwlab import NEVER_RESTART, Cluster, HandleStatus, WorkerSpec, sched
from conftest import value_in_child, wait_until


def _custom_slices() -> bool:
    """Does this kernel keep a custom slice (Linux >= 6.12)?  Asked of a throwaway child."""
    if not sched.supported():
        return False
    pid = os.fork()
    if pid == 0:
        try:
            ok = sched.set_slice(0, 200_000) == 200_000
        except OSError:
            ok = False
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


needs_slices = pytest.mark.skipif(not _custom_slices(), reason="kernel without custom scheduler slices")


def test_slice_out_of_range_is_refused_before_anything_starts(tmp_path):
    for bad in (99, 100_001, 0, -5, 1.5, True, "100"):
        with pytest.raises(ValueError, match="scheduler_slice_us"):
            Cluster.start(max_workers=1, directory=tmp_path / "c", scheduler_slice_us=bad)
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())
    with pytest.raises(ValueError, match="slice_ns"):
        sched.set_slice(0, 50_000)


@needs_slices
def test_postmaster_gets_the_short_slice_and_its_workers_the_default():
    default = sched.slice_of(0)
    assert default > 100_000  # this test process has the kernel's default
    with Cluster.start(max_workers=2) as c:
        assert c.scheduler_slice_ns == 100_000
        assert sched.slice_of(c.postmaster_pid) == 100_000
        b = c.connect()
        try:
            h = b.register_dynamic_worker(WorkerSpec(
                name="sleeper", entry="bgwlab.examples:sleep_forever", restart=NEVER_RESTART,
                notify=True))
            status, pid = h.wait_for_startup(timeout=30)
            assert status is HandleStatus.STARTED
            # reset on fork: a worker is scheduled as any other process, not as the postmaster
            assert sched.slice_of(pid) == default
            h.terminate()
            h.wait_for_shutdown(timeout=30)
        finally:
            b.detach()
    assert sched.slice_of(0) == default  # the starter's own slice is untouched


@needs_slices
def test_slice_none_leaves_the_kernel_default():
    with Cluster.start(max_workers=1, scheduler_slice_us=None) as c:
        assert c.scheduler_slice_ns == 0
        assert sched.slice_of(c.postmaster_pid) == sched.slice_of(0)


@needs_slices
def test_set_slice_zero_returns_to_the_default_and_a_gone_pid_raises():
    pid = os.fork()
    if pid == 0:
        try:
            a = sched.set_slice(0, 300_000)
            b = sched.set_slice(0, 0)
            os._exit(0 if (a, b) == (300_000, sched.slice_of(os.getppid())) else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with pytest.raises(ProcessLookupError):
        sched.slice_of(pid)  # reaped: no such process


# -- the registrant's short slice (Backend(wait_slice_us=)) ------------------------------------------

def _sleeper(b):
    h = b.register_dynamic_worker(WorkerSpec(name="sleeper", entry="bgwlab.examples:sleep_forever",
                                             restart=NEVER_RESTART, notify=True))
    assert h.wait_for_startup(timeout=30)[0] is HandleStatus.STARTED
    return h


def _in_thread(steps):
    """Run `steps(record, go)` in a new thread; returns (thread, record dict, go Event)."""
    import threading

    record, go = {}, threading.Event()
    t = threading.Thread(target=lambda: steps(record, go))
    t.start()
    return t, record, go


def test_wait_slice_out_of_range_is_refused_before_attaching():
    with Cluster.start(max_workers=1, max_backends=1) as c:
        for bad in (99, 100_001, 0, -5, 1.5, True, "100"):
            with pytest.raises(ValueError, match="wait_slice_us"):
                c.connect(wait_slice_us=bad)
        b = c.connect(wait_slice_us=None)  # the one backend entry was never taken
        b.detach()


@needs_slices
def test_a_thread_that_waited_holds_the_short_slice_until_the_backend_detaches():
    default = sched.slice_of(0)
    with Cluster.start(max_workers=1) as c:
        b = c.connect()  # wait_slice_us=100

        def steps(record, go):
            import threading

            os.setpriority(os.PRIO_PROCESS, 0, 2)
            record["tid"] = threading.get_native_id()
            h = _sleeper(b)
            h.wait_for_shutdown(timeout=0.05)  # sleeps: from here on the thread holds the slice
            record["held"] = sched.slice_of(0)
            record["child"] = int(value_in_child(lambda: sched.slice_of(0)))  # reset on fork: the default
            h.terminate()
            record["status"] = h.wait_for_shutdown(timeout=30)
            go.wait(60)  # (the main thread detaches the backend meanwhile)
            record["after"] = (sched.slice_of(0), sched._read_attr(0)[2], os.getpriority(os.PRIO_PROCESS, 0))

        t, record, go = _in_thread(steps)
        wait_until(lambda: "status" in record or not t.is_alive(), 30, "the waiting thread")
        assert sched.slice_of(0) == default  # only the thread that waited
        assert sched.slice_of(record["tid"]) == 100_000  # still held between its waits
        b.detach()  # from another thread: the waiter gets its own slice back
        go.set()
        t.join(60)
    assert not t.is_alive()
    assert record["held"] == 100_000
    assert record["child"] == default
    assert record["status"] is HandleStatus.STOPPED
    # the default again (not a chosen slice of the same length: flags without reset on
    # fork, as before), and the nice value it set itself
    assert record["after"] == (default, 0, 2)


@needs_slices
def test_a_slice_of_its_own_comes_back_and_a_shorter_one_is_left_alone():
    with Cluster.start(max_workers=2) as c:
        for own, wait_slice_us, held in ((3_000_000, 100, 100_000), (100_000, 200, 100_000)):
            b = c.connect(wait_slice_us=wait_slice_us)
            sched.set_slice(0, own, reset_on_fork=False)
            try:
                h = _sleeper(b)
                h.wait_for_shutdown(timeout=0.05)
                assert sched.slice_of(0) == held
                h.terminate()
                assert h.wait_for_shutdown(timeout=30) is HandleStatus.STOPPED
                b.detach()
                assert sched.slice_of(0) == own
            finally:
                b.detach()
                sched.set_slice(0, 0, reset_on_fork=False)  # this test thread's default again


@needs_slices
def test_backends_share_a_thread_the_last_to_detach_gives_it_back():
    default = sched.slice_of(0)
    with Cluster.start(max_workers=2) as c:
        b1, b2 = c.connect(), c.connect()
        try:
            for b in (b1, b2):
                h = _sleeper(b)
                h.wait_for_shutdown(timeout=0.02)
                h.terminate()
                h.wait_for_shutdown(timeout=30)
            assert sched.slice_of(0) == 100_000
            b1.detach()
            assert sched.slice_of(0) == 100_000  # b2 still holds it
            b2.detach()
            assert sched.slice_of(0) == default
        finally:
            b1.detach()
            b2.detach()


def test_wait_slice_none_or_a_wait_that_never_sleeps_never_asks(monkeypatch):
    calls = []
    real = sched.hold_short_slice
    monkeypatch.setattr(sched, "hold_short_slice", lambda ns: calls.append(ns) or real(ns))
    with Cluster.start(max_workers=2) as c:
        for wait_slice_us, expect in ((None, []), (100, [100_000])):
            b = c.connect(wait_slice_us=wait_slice_us)
            try:
                h = _sleeper(b)  # its wait_for_startup slept: asked (or not) here
                assert h.wait_for_shutdown(timeout=0.05) is HandleStatus.STARTED  # slept again
                h.terminate()
                assert h.wait_for_shutdown(timeout=30) is HandleStatus.STOPPED
                assert calls == expect  # once per thread, not once per wait
                calls.clear()
                # stopped already: in a new thread, the wait looks once and returns without
                # a sleep, and without asking
                t, record, _go = _in_thread(lambda record, go: record.update(s=h.wait_for_shutdown(timeout=30)))
                t.join(60)
                assert record["s"] is HandleStatus.STOPPED and calls == []
            finally:
                b.detach()
