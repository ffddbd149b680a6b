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
