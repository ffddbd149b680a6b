"""``wait_for_startup()`` on a worker that can end by itself at once: either verdict is right.

A worker that returns at once (``noop``), fails, crashes or dies before main may be over
before its registrant wakes; ``wait_for_startup()`` then rightly returns ``(STOPPED, None)``,
as PostgreSQL's ``WaitForBackgroundWorkerStartup`` does when the slot's pid is already 0.
Tests of such workers accept both verdicts and check the one they got against the event
log, so that they still fail when the engine is wrong.  (A test that needs ``STARTED``
uses a worker that cannot have exited yet: ``sleep_forever``, then ``terminate()``.)
"""

from __future__ import annotations

from bgwlab import HandleStatus

from conftest import wait_until

STARTED, STOPPED = HandleStatus.STARTED, HandleStatus.STOPPED


def events_of(cluster, h, kind):
    return [e for e in cluster.events() if e.kind == kind and (e.slot, e.generation) == (h.slot, h.generation)]


def forked_pids(cluster, h) -> list[int]:
    return [e.detail["worker_pid"] for e in events_of(cluster, h, "forked")]


def check_startup_verdict(cluster, h, verdict, exit_code: int | None = None) -> int:
    """Check `verdict` (what ``h.wait_for_startup()`` returned) against the event log.

    ``(STARTED, pid)``: `pid` is a process the postmaster forked for this (slot, generation).
    ``(STOPPED, None)``: the worker was forked and its first process has exited already
    (with `exit_code`, if given).  Anything else fails.  Returns the first forked pid.
    """
    status, pid = verdict
    assert status in (STARTED, STOPPED), f"wait_for_startup() of {h} returned {verdict}"
    # the postmaster logs "forked" just after the signal that may have woken us: wait for the line
    if status is STARTED:
        assert pid is not None and pid > 0, verdict
        pids = wait_until(lambda: (lambda p: p if pid in p else None)(forked_pids(cluster, h)),
                          what=f"a forked event with pid {pid} for {h}")
    else:
        assert pid is None, verdict
        pids = wait_until(lambda: forked_pids(cluster, h), what=f"the forked event of {h}")
        # logged before the slot is released, so before any handle can read STOPPED
        exited = events_of(cluster, h, "exited")
        assert exited and exited[0].detail["worker_pid"] == pids[0], (pids, exited)
        if exit_code is not None:
            assert exited[0].detail["exit_code"] == exit_code, exited[0]
    return pids[0]
