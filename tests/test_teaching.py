"""bgwlab.lab.teaching outside the notebooks: the helpers the lessons stand on."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from bgwlab import Event, HandleStatus, WorkerSpec
from bgwlab.lab import teaching


def test_check_and_check_value_say_right_or_wrong_and_never_raise(capsys):
    assert teaching.check(True, "done") is True
    assert teaching.check(0, "zero", hint="try again") is False
    assert teaching.check(..., "unanswered") is False
    out = capsys.readouterr().out.splitlines()
    assert out == ["✓ done", "✗ zero -- hint: try again", "✗ unanswered"]
    assert teaching.check_value(1.04, 1.0, "close") is True          # within 5 %
    assert teaching.check_value(1.2, 1.0, "far") is False
    assert teaching.check_value(0.001, 0.0, "tiny", abs_tol=0.01) is True
    assert teaching.check_value("STOPPED", "STOPPED", "text") is True
    assert teaching.check_value(True, 1, "a bool is not a number here") is True  # == compares
    assert teaching.check_value(None, 1, "nothing") is False
    assert "not answered yet" in capsys.readouterr().out


def test_claim_raises_with_the_claim_and_predictions_line_up(capsys):
    teaching.claim(True, "holds")
    assert capsys.readouterr().out == "claim holds: holds\n"
    with pytest.raises(teaching.ClaimFailed, match="does not hold on this run: the sky is green"):
        teaching.claim(False, "the sky is green")
    assert issubclass(teaching.ClaimFailed, AssertionError)
    df = teaching.predictions({"a": 1.23456, "b": ...}, {"a": 2.0, "c": HandleStatus.STOPPED})
    assert df.to_dict("records") == [
        {"question": "a", "your prediction": "1.23", "measured": "2"},
        {"question": "b", "your prediction": "(no guess written)", "measured": "(no guess written)"},
        {"question": "c", "your prediction": "(no guess written)", "measured": "STOPPED"}]


def test_event_table_filters_and_times_from_the_first_row():
    evs = [Event(1_000_000, "registered", "backend", 1, 0, 1, {"name": "a"}),
           Event(3_500_000, "forked", "postmaster", 2, 0, 1, {"worker_pid": 9, "traceback": "x"}),
           Event(4_000_000, "registered", "backend", 1, 1, 2, {"name": "b"})]
    t = teaching.event_table(evs, slot=0)
    assert t.kind.tolist() == ["registered", "forked"] and t.t_ms.tolist() == [0.0, 2.5]
    assert t.detail.tolist() == ["name=a", "worker_pid=9"]  # tracebacks left out
    t = teaching.event_table(evs, kinds={"registered"}, since_ns=0)
    assert t.generation.tolist() == [1, 2] and t.t_ms.tolist() == [1.0, 4.0]
    assert teaching.event_table(evs, generation=7).empty


def test_wait_for_event_finds_the_handles_event_or_times_out(cluster, backend):
    h = backend.register_dynamic_worker(WorkerSpec(name="t", entry="bgwlab.examples:sleep_forever"))
    e = teaching.wait_for_event(cluster, "reached_main", h, timeout=30)
    assert (e.kind, e.slot, e.generation, e.source) == ("reached_main", h.slot, h.generation, "worker")
    assert e.pid == h.wait_for_startup()[1]
    with pytest.raises(TimeoutError, match=f"'exited' event for slot {h.slot} generation {h.generation}"):
        teaching.wait_for_event(cluster, "exited", h, timeout=0.05)
    h.terminate()
    ex = teaching.wait_for_event(cluster, "exited", h, timeout=30, where=lambda e: e.detail["exit_code"] == 1)
    assert ex.detail["worker_pid"] == e.pid


def test_exit_watch_reports_an_exit_after_the_start_and_none_for_a_survivor():
    import psutil

    from conftest import wait_until

    done = subprocess.Popen([sys.executable, "-c", "pass"])
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # exited, not reaped yet: its pidfd can still be opened, and is readable at once
        wait_until(lambda: psutil.Process(done.pid).status() == psutil.STATUS_ZOMBIE, timeout=30,
                   what="the short process to exit")
        since = time.monotonic_ns()
        out = teaching.time_until_gone([done.pid, alive.pid], since, timeout=0.2)
        assert set(out) == {done.pid, alive.pid}
        assert out[alive.pid] is None  # still running when the watch gave up
        assert out[done.pid] is not None and out[done.pid] >= 0
    finally:
        alive.kill()
        alive.wait()
        done.wait()


def test_race_demo_loses_the_bare_wakeup_in_the_window_and_never_the_latch():
    df = teaching.race_demo(timeout=0.3, send_after=0.05)
    rows = {(r.waiter, r.signal): r for r in df.itertuples()}
    assert set(rows) == {(w, s) for w in ("bare", "latch") for s in ("in the window", "during the sleep")}
    # the signal lands after the check, before the sleep: the bare select() sleeps it out
    assert rows["bare", "in the window"].lost and rows["bare", "in the window"].woke_at_ms >= 0.9 * 300
    # the latch keeps it: a waiter on it is never lost, and wakes after the signal
    for when in ("in the window", "during the sleep"):
        r = rows["latch", when]
        assert not r.lost and r.woke_at_ms >= r.signal_at_ms, r
