"""The postmaster's scheduler slice (bgwlab/sched.py): asked for by Cluster.start, read back
from the kernel, not inherited by workers, refused when out of range, skipped when off."""

from __future__ import annotations

import os

import pytest

from bgwlab import NEVER_RESTART, Cluster, HandleStatus, WorkerSpec, sched


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
