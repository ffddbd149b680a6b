"""Issue 12's event-logging changes: a faster encoder that writes the same bytes, several
events in one write(), and a postmaster that logs a start after signalling its registrant
-- with a log that is complete whenever a registrant can know the outcome."""

import json
import os

import pytest

from bgwlab import NEVER_RESTART, Fault, HandleStatus, WorkerSpec, read_events
from bgwlab.eventlog import EventWriter, encode_detail, encode_value
from bgwlab.pg.cgroup import cgroup_available, pids_limit

from conftest import wait_until

STARTED, STOPPED, NOT_YET = HandleStatus.STARTED, HandleStatus.STOPPED, HandleStatus.NOT_YET_STARTED


class _Str(str):
    pass


DETAILS = [
    {},
    {"worker_pid": 123456},
    {"name": "bench-timed", "entry": "bench_entry:timed", "notify": True, "fault": None},
    {"s": 'quote" back\\slash \n tab\t nul\x00 del\x7f é 漢', "neg": -5, "big": 10 ** 30,
     "f": 0.5, "nan": float("nan"), "inf": float("inf"), "no": False, "l": [1, "x", None, [2]],
     "t": (1, 2), "d": {"k": 1, 2: "v"}, "sub": _Str("sub"), "b": b"ab", "o": object},
]


def _reference_line(source, kind, slot, gen, t, pid, detail) -> bytes:
    """The line as the writer formatted it before issue 12 (generic encoder throughout)."""
    d = encode_value(detail) if detail else "{}"
    return (f'{{"t_ns":{t},"kind":"{kind}","source":"{source}","pid":{pid},'
            f'"slot":{slot},"generation":{gen},"detail":{d}}}\n').encode()


@pytest.mark.parametrize("detail", DETAILS, ids=range(len(DETAILS)))
def test_fast_encoder_writes_the_bytes_of_the_generic_one(tmp_path, detail):
    if detail:
        assert encode_detail(detail) == encode_value(detail)
    p = tmp_path / "e.jsonl"
    w = EventWriter(str(p), "postmaster")
    w.emit("forked", 3, 17, t_ns=42, **detail)
    w.write(w.line("forked", 3, 17, t_ns=42, **detail))
    w.close()
    ref = _reference_line("postmaster", "forked", 3, 17, 42, os.getpid(), detail)
    assert p.read_bytes() == ref + ref
    parsed = json.loads(ref)  # (nan and inf are written as null, as before)
    assert parsed["detail"].keys() == detail.keys()


def test_kind_and_keys_that_need_escaping_still_make_valid_json(tmp_path):
    p = tmp_path / "e.jsonl"
    w = EventWriter(str(p), 'src"')
    w.emit('kind"\\', **{'key"\n': 1})
    w.close()
    (e,) = read_events(p)
    assert (e.kind, e.source, e.detail) == ('kind"\\', 'src"', {'key"\n': 1})


def test_several_lines_in_one_write_and_a_disabled_writer_writes_nothing(tmp_path):
    p = tmp_path / "e.jsonl"
    w = EventWriter(str(p), "postmaster")
    lines = w.line("fork_attempted", 1, 2, t_ns=10, attempt=1) + w.line("forked", 1, 2, t_ns=11, worker_pid=7)
    w.write(lines)
    off = EventWriter(str(p), "postmaster", enabled=False)
    assert off.line("forked", 1, 2, worker_pid=7) == b""
    off.write(off.line("forked"))
    assert off.emit("forked", t_ns=5) == 5
    w.close()
    off.close()
    assert [(e.kind, e.t_ns) for e in read_events(p)] == [("fork_attempted", 10), ("forked", 11)]


def _mine(cluster, h, kind=None):
    return [e for e in cluster.events() if (e.slot, e.generation) == (h.slot, h.generation)
            and e.source == "postmaster" and (kind is None or e.kind == kind)]


def test_a_start_is_logged_after_the_signal_and_completely(cluster, backend):
    """request_seen, fork_attempted, forked, notified: written after the signal, each with
    the time it happened, in causal order."""
    h = backend.register_dynamic_worker(WorkerSpec(name="logged", entry="bgwlab.examples:noop"))
    status, pid = h.wait_for_startup()
    assert status in (STARTED, STOPPED)
    kinds = ("request_seen", "fork_attempted", "forked", "notified")
    evs = wait_until(lambda: (lambda ev: ev if all(any(e.kind == k for e in ev) for k in kinds) else None)(
        _mine(cluster, h)), what="the start's four events")
    first = {k: next(e for e in evs if e.kind == k) for k in kinds}
    t = [first[k].t_ns for k in kinds]
    assert t == sorted(t), h.explain()
    assert first["request_seen"].detail == {"name": "logged"}
    assert first["forked"].detail["worker_pid"] == pid or status is STOPPED
    assert first["notified"].detail == {"target_pid": os.getpid(), "reason": "forked"}
    assert [e.kind for e in evs].count("request_seen") == 1
    assert h.wait_for_shutdown() is STOPPED


def test_a_failed_fork_is_in_the_log_as_soon_as_stopped_is_known(cluster, backend):
    spec = WorkerSpec(name="nofork", entry="bgwlab.examples:noop", fault=Fault.fork_failure())
    for _ in range(20):
        h = backend.register_dynamic_worker(spec)
        assert h.wait_for_startup() == (STOPPED, None)
        evs = _mine(cluster, h)  # read at once: no waiting
        kinds = [e.kind for e in evs]
        for k in ("request_seen", "fork_attempted", "fork_failed", "unregistered"):
            assert kinds.count(k) == 1, (k, h.explain())
        t = [next(e for e in evs if e.kind == k).t_ns
             for k in ("request_seen", "fork_attempted", "fork_failed", "unregistered")]
        assert t == sorted(t), h.explain()
    notified = wait_until(lambda: _mine(cluster, h, "notified"), what="notified (logged after the signal)")
    assert notified[0].t_ns > next(e for e in evs if e.kind == "unregistered").t_ns


def test_a_delayed_start_logs_request_seen_before_its_fork(cluster, backend):
    h = backend.register_dynamic_worker(WorkerSpec(name="later", entry="bgwlab.examples:sleep_forever",
                                                   fault=Fault.slow_start(30, where="postmaster")))
    (seen,) = wait_until(lambda: _mine(cluster, h, "request_seen"), what="request_seen of a delayed start")
    assert seen.detail == {"name": "later"}
    assert h.get_pid() == (NOT_YET, None) and not _mine(cluster, h, "fork_attempted")
    h.terminate()
    assert h.wait_for_startup(timeout=10) == (STOPPED, None)
    kinds = [e.kind for e in _mine(cluster, h)]
    assert kinds.count("request_seen") == 1 and "unregistered" in kinds


def test_a_retried_fork_failure_logs_each_attempt(cluster, backend):
    h = backend.register_dynamic_worker(WorkerSpec(
        name="retry", entry="bgwlab.examples:sleep_forever", restart=0.2,
        fault=Fault.fork_failure(times=2)))
    status, pid = h.wait_for_startup()
    assert status is STARTED
    evs = wait_until(lambda: (lambda ev: ev if any(e.kind == "forked" for e in ev) else None)(_mine(cluster, h)),
                     what="forked after two failures")
    kinds = [e.kind for e in evs]
    assert kinds.count("request_seen") == 1 and kinds.count("fork_failed") == 2
    assert kinds.count("restart_scheduled") == 2 and kinds.count("fork_attempted") == 3
    h.terminate()
    assert h.wait_for_shutdown() is STOPPED


CGROUP_OK, CGROUP_WHY = cgroup_available()


@pytest.mark.skipif(not CGROUP_OK, reason=f"genuine fork failures need a pids cgroup: {CGROUP_WHY}")
def test_genuine_fork_failures_are_in_the_log_as_soon_as_stopped_is_known(cluster, backend):
    spec = WorkerSpec(name="g", entry="bgwlab.examples:noop", restart=NEVER_RESTART, notify=True)
    with pids_limit(cluster.postmaster_pid):
        for _ in range(20):
            h = backend.register_dynamic_worker(spec)
            assert h.wait_for_startup(timeout=10) == (STOPPED, None)
            evs = _mine(cluster, h)
            kinds = [e.kind for e in evs]
            assert all(kinds.count(k) == 1 for k in ("request_seen", "fork_attempted", "fork_failed",
                                                     "unregistered")), h.explain()
            (failed,) = [e for e in evs if e.kind == "fork_failed"]
            assert failed.detail["injected"] is False and failed.detail["errno"] == 11
