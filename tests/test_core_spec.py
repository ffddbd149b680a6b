"""WorkerSpec validation: every bad field is refused before any slot is used."""

import errno
import signal

import pytest

from bgwlab import NEVER_RESTART, Fault, InvalidWorkerSpec, WorkerSpec
from bgwlab.shmem import Segment

GOOD = dict(name="w", entry="bgwlab.examples:noop")

BAD = [
    dict(name=""),
    dict(name="x" * 96),
    dict(name="é" * 48),  # 96 bytes of UTF-8
    dict(name="a\x00b"),
    dict(name=7),
    dict(entry="bgwlab.examples.noop"),
    dict(entry="bgwlab.examples:"),
    dict(entry=":noop"),
    dict(entry="a:b:c"),
    dict(entry="bad module:f"),
    dict(entry="m:" + "f" * 300),
    dict(main_arg=2**63),
    dict(main_arg=-(2**63) - 1),
    dict(main_arg=1.5),
    dict(main_arg=True),
    dict(main_arg="5"),
    dict(extra=b"x" * 129),
    dict(extra="text"),
    dict(restart=-2),
    dict(restart=86_401),
    dict(restart="never"),
    dict(restart=True),
    dict(notify=1),
    dict(fault="crash"),
]


@pytest.mark.parametrize("bad", BAD, ids=[repr(b)[:40] for b in BAD])
def test_bad_field_is_refused_with_a_message(bad):
    with pytest.raises(InvalidWorkerSpec) as ei:
        WorkerSpec(**{**GOOD, **bad})
    assert isinstance(ei.value, ValueError)
    field = next(iter(bad))
    assert field in str(ei.value)


@pytest.mark.parametrize("ok", [
    dict(name="x" * 95), dict(extra=b"x" * 128), dict(main_arg=2**63 - 1), dict(main_arg=-(2**63)),
    dict(restart=0), dict(restart=86_400), dict(restart=NEVER_RESTART), dict(restart=0.25),
    dict(entry="bgwlab.examples:noop"), dict(entry="pkg.mod:Klass.method"),
])
def test_limits_are_inclusive(ok):
    WorkerSpec(**{**GOOD, **ok})


@pytest.mark.parametrize("make", [
    lambda: Fault.crash_before_main(),
    lambda: Fault.crash_before_main(exit_code=1, signal=signal.SIGSEGV),
    lambda: Fault.crash_before_main(exit_code=256),
    lambda: Fault.crash_before_main(signal=999),
    lambda: Fault.crash_before_main(signal=signal.SIGCHLD),
    lambda: Fault.fork_failure(errno=-1),
    lambda: Fault.slow_start(-1),
    lambda: Fault.slow_start(1, where="nowhere"),
])
def test_bad_fault_plans_are_refused(make):
    with pytest.raises(InvalidWorkerSpec):
        make()


def test_faults_combine():
    f = Fault.fork_failure(errno=errno.ENOMEM, times=2) | Fault.slow_start(0.5)
    assert (f.fork_errno, f.fork_failures, f.slow_start_s) == (errno.ENOMEM, 2, 0.5)
    assert "ENOMEM" in f.describe() and "slow start" in f.describe()


def test_invalid_spec_uses_no_slot(cluster, backend):
    """A spec forced past construction is caught again at registration, before the slot."""
    spec = WorkerSpec(**GOOD)
    object.__setattr__(spec, "extra", b"y" * 500)
    seg = Segment(str(cluster.directory / "shmem"))
    try:
        gen_before = seg.next_generation()
        with pytest.raises(InvalidWorkerSpec):
            backend.register_dynamic_worker(spec)
        with pytest.raises(InvalidWorkerSpec):
            backend.register_dynamic_worker({"name": "w"})
        assert seg.in_use_array() == bytes(seg.max_workers)
        assert seg.next_generation() == gen_before
    finally:
        seg.close()


# -- the limits, through shared memory to a worker and back ------------------------------------------
EDGE_SPECS = [
    dict(name="x" * 95, extra=b"x" * 128, main_arg=2**63 - 1),
    dict(name="é" * 47 + "z", extra=bytes(range(128)), main_arg=-(2**63)),   # 95 bytes of UTF-8
    dict(name="n", extra=b"\x00" * 127 + b"\xff", main_arg=0),              # NULs are data, not an end
    dict(name="trailing-nul", extra=b"ab\x00\x00", main_arg=-1),
    dict(name="empty-extra", extra=b"", main_arg=1, entry="worker_entries:Entries.report"),
]


def test_limits_travel_through_shared_memory_to_the_worker_unchanged(cluster, backend):
    """Each boundary value is encoded into the slot, decoded by the postmaster, handed to
    the forked worker, and reported back by the worker itself (``worker.current()``)."""
    import json
    from pathlib import Path

    from bgwlab import HandleStatus
    from worker_entries import report_path

    for edge in EDGE_SPECS:
        spec = WorkerSpec(**{"entry": "worker_entries:report", **edge})
        h = backend.register_dynamic_worker(spec)
        assert h.wait_for_shutdown(timeout=30) is HandleStatus.STOPPED
        path = Path(report_path(cluster.directory, h.slot, h.generation))
        assert path.exists(), h.explain()
        got = json.loads(path.read_text())
        assert got["name"] == spec.name
        assert bytes.fromhex(got["extra"]) == spec.extra
        assert got["main_arg"] == got["arg"] == spec.main_arg
        assert got["entry"] == spec.entry
        assert (got["slot"], got["generation"]) == (h.slot, h.generation)
        assert got["postmaster_pid"] == got["ppid"] == cluster.postmaster_pid
        assert Path(got["directory"]) == cluster.directory
        if spec.entry.endswith("Entries.report"):
            assert got["via"] == "Entries.report"
        exited = [e for e in h.history() if e.kind == "exited"]
        assert [e.detail["exit_code"] for e in exited] == [0], h.explain()


@pytest.mark.parametrize("restart", [0, 0.25, 86_400])
def test_restart_limits_reach_the_postmaster_unchanged(cluster, backend, restart):
    """The restart interval the postmaster schedules is the one registered; a terminate
    while that restart is pending removes the worker without starting it again."""
    from conftest import wait_until

    from bgwlab import HandleStatus

    # fails on every run: exit 1 -> restart_scheduled(after_s=restart)
    h = backend.register_dynamic_worker(WorkerSpec(name="r", entry="bgwlab.examples:fail",
                                                   restart=restart))
    sched = wait_until(lambda: [e for e in h.history() if e.kind == "restart_scheduled"],
                       timeout=30, what="the restart to be scheduled")
    assert sched[0].detail["after_s"] == restart
    h.terminate()
    assert h.wait_for_shutdown(timeout=30) is HandleStatus.STOPPED
    ev = wait_until(lambda: (lambda ev: ev if any(e.kind == "unregistered" for e in ev) else None)(h.history()),
                    what="unregistered")
    (unreg,) = [e for e in ev if e.kind == "unregistered"]
    forks = [e for e in ev if e.kind == "forked" and e.t_ns < unreg.t_ns]
    if restart < 60:  # may have been restarted before the terminate landed: either reason
        assert unreg.detail["reason"] in ("terminated", "terminated before start"), unreg
    else:  # a day's interval: the restart was still pending, never forked again
        assert len(forks) == 1, h.explain()
        assert unreg.detail["reason"] == "terminated before start", unreg
