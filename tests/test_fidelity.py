"""PostgreSQL's semantics, row by row, against bgwlab's real processes.

Each test names the PostgreSQL function whose behaviour it holds bgwlab to (source:
``src/backend/postmaster/bgworker.c`` and ``postmaster.c``); where bgwlab differs on
purpose (DESIGN §1a), the test says so and checks the difference instead.
"""

from __future__ import annotations

import os
import select
import signal

import psutil
import pytest

from bgwlab import NEVER_RESTART, Cluster, HandleStatus, WorkerSpec

from conftest import wait_until

STARTED, STOPPED = HandleStatus.STARTED, HandleStatus.STOPPED


def events_of(cluster, h, kind=None):
    return [e for e in cluster.events() if (e.slot, e.generation) == (h.slot, h.generation)
            and (kind is None or e.kind == kind)]


def wait_for_event(cluster, h, kind, timeout=10.0):
    return wait_until(lambda: events_of(cluster, h, kind), timeout=timeout, what=f"{kind} of {h}")[0]


def start_sleeper(backend, cluster, **kw):
    """A worker that runs until terminated; returns its handle and pid once its code runs."""
    h = backend.register_dynamic_worker(WorkerSpec(name=kw.pop("name", "sleeper"),
                                                   entry="bgwlab.examples:sleep_forever", **kw))
    status, pid = h.wait_for_startup()
    assert status is STARTED, h.explain()
    wait_for_event(cluster, h, "reached_main")
    return h, pid


def ignores(pid: int, sig: int) -> bool:
    """Whether process `pid` ignores `sig` now (the SigIgn mask of /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigIgn:"))
    return bool(mask & (1 << (sig - 1)))


def exited(cluster, h):
    e = wait_for_event(cluster, h, "exited")
    return e.detail["exit_code"], e.detail["signal"]


# -- BackgroundWorkerMain: a worker's signals ---------------------------------------------------
def test_worker_ignores_sighup_sigint_sigusr1_until_its_code_installs_handlers(cluster, backend):
    """BackgroundWorkerMain: SIGHUP, SIGINT and SIGUSR1 are SIG_IGN (no database connection);
    SIGTERM is bgworker_die (exit 1).  The kernel discards an ignored signal when it is
    sent; a default one would kill the worker first (signals below SIGTERM's number are
    delivered first), and that would be a crash and a crash-restart."""
    h, pid = start_sleeper(backend, cluster)
    fd = os.pidfd_open(pid)
    try:
        for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGUSR1, signal.SIGTERM):
            signal.pidfd_send_signal(fd, sig)
    finally:
        os.close(fd)
    assert h.wait_for_shutdown(timeout=10) is STOPPED
    assert exited(cluster, h) == (1, None), h.explain()
    assert not [e for e in cluster.events() if e.kind == "crash_restart"]
    assert events_of(cluster, h, "unregistered")[0].detail["reason"] == "exit 1, never restart"


def test_sigquit_is_the_immediate_exit_and_a_crash(cluster, backend):
    """SignalHandlerForCrashExit: a worker's SIGQUIT is _exit(2); the postmaster treats any
    exit other than 0 and 1 as a crash (HandleChildCrash) and restarts the cluster."""
    h, pid = start_sleeper(backend, cluster)
    os.kill(pid, signal.SIGQUIT)  # our test's own cluster: the pid is alive (STARTED, reached_main)
    assert h.wait_for_shutdown(timeout=10) is STOPPED
    assert exited(cluster, h) == (2, None), h.explain()
    wait_until(lambda: [e for e in cluster.events() if e.kind == "crash_restart"
                        and e.detail.get("phase") == "end"], what="the crash-restart to end")


# -- ResetBackgroundWorkerCrashTimes -----------------------------------------------------------
def test_crash_restart_starts_every_restartable_worker_at_once_the_culprit_too(cluster, backend):
    """ResetBackgroundWorkerCrashTimes sets rw_crashed_at = 0 for every worker that may
    restart: after a crash-restart they start at once, whatever their restart interval --
    the worker that crashed included.  NEVER_RESTART workers are forgotten."""
    hour = 3600
    other, other_pid = start_sleeper(backend, cluster, name="other", restart=hour)
    never, _ = start_sleeper(backend, cluster, name="never")
    culprit = backend.register_dynamic_worker(
        WorkerSpec(name="culprit", entry="bgwlab.examples:crash_once", main_arg=3_600_000, restart=hour))
    assert never.wait_for_shutdown(timeout=30) is STOPPED  # forgotten in the crash-restart
    for h in (other, culprit):  # each back within seconds, not after an hour
        pids = wait_until(lambda h=h: [e.detail["worker_pid"] for e in events_of(cluster, h, "forked")][1:],
                          timeout=30, what=f"{h.name} forked again")
        assert h.get_pid() == (STARTED, pids[0]), h.explain()
    assert other.get_pid()[1] != other_pid
    assert not events_of(cluster, culprit, "restart_scheduled")  # no interval was waited for
    assert events_of(cluster, never, "unregistered")[0].detail["reason"] == "crash-restart"
    for h in (other, culprit):
        h.terminate()
        assert h.wait_for_shutdown(timeout=10) is STOPPED


def test_request_first_seen_during_a_crash_restart_is_served_after_it(cluster, backend):
    """bgwlab only (DESIGN §1a): PostgreSQL's registrants die in a crash-restart, so it has
    no such request.  Ours survive; a NEVER_RESTART request made while the postmaster
    recovers came after the crash and is served when recovery ends, not forgotten."""
    holdout = backend.register_dynamic_worker(WorkerSpec(
        name="holdout", entry="bgwlab.examples:ignore_term_and_quit", main_arg=60_000))
    status, holdout_pid = holdout.wait_for_startup()
    assert status is STARTED
    wait_until(lambda: ignores(holdout_pid, signal.SIGQUIT), what="the holdout to ignore SIGQUIT")
    crasher = backend.register_dynamic_worker(WorkerSpec(name="crasher", entry="bgwlab.examples:crash",
                                                         main_arg=int(signal.SIGSEGV)))
    # the holdout keeps the postmaster in recovery until its grace period ends (SIGKILL);
    # the crasher's waiter is woken only when recovery ends
    wait_until(lambda: cluster.state() == "crash_recovery", timeout=10, what="crash recovery")
    late = backend.register_dynamic_worker(WorkerSpec(name="late", entry="bgwlab.examples:sleep_forever"))
    assert events_of(cluster, late, "request_seen") or cluster.state() == "crash_recovery"
    status, pid = late.wait_for_startup(timeout=30)
    assert status is STARTED, late.explain()
    seen = wait_for_event(cluster, late, "request_seen")
    end = [e for e in cluster.events() if e.kind == "crash_restart" and e.detail.get("phase") == "end"]
    assert end and seen.t_ns < end[0].t_ns, "the request must have been seen during the recovery"
    assert exited(cluster, holdout) == (None, signal.SIGKILL)
    assert crasher.wait_for_shutdown(timeout=10) is STOPPED
    late.terminate()
    assert late.wait_for_shutdown(timeout=10) is STOPPED


# -- BackgroundWorkerStateChange during a shutdown -------------------------------------------
def test_registering_while_the_cluster_shuts_down_reads_stopped(cluster, backend):
    """BackgroundWorkerStateChange(allow_new_workers=false): a request that reaches a
    postmaster in shutdown is marked for termination and its waiter woken; the handle
    reads STOPPED.  Registering is not an error while the postmaster lives."""
    holdout = backend.register_dynamic_worker(WorkerSpec(
        name="holdout", entry="bgwlab.examples:ignore_term_and_quit", main_arg=60_000))
    status, holdout_pid = holdout.wait_for_startup()
    assert status is STARTED
    wait_until(lambda: ignores(holdout_pid, signal.SIGTERM), what="the holdout to ignore SIGTERM")
    cluster.kill_postmaster(signal.SIGTERM)  # shutdown: waits for the holdout (then SIGKILL)
    wait_until(lambda: cluster.state() == "shutdown", what="the shutdown to begin")
    h = backend.register_dynamic_worker(WorkerSpec(name="late", entry="bgwlab.examples:sleep_forever"))
    assert h.wait_for_startup(timeout=30) == (STOPPED, None), h.explain()
    assert events_of(cluster, h, "unregistered")[0].detail["reason"] == "postmaster shutdown"
    assert not events_of(cluster, h, "forked")


# -- postmaster death: the alive pipe, and bgwlab's optional PR_SET_PDEATHSIG ------------------
def _pidfd_exited(pid: int, timeout: float) -> bool:
    """True once `pid` has exited (a zombie counts), waiting up to `timeout` s."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True  # exited and reaped already
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


@pytest.mark.parametrize("pdeathsig", [False, True])
def test_orphans_exit_at_their_next_wait_and_stop_ends_the_rest(pdeathsig):
    """PostmasterIsAlive / WL_POSTMASTER_DEATH: a worker learns of the postmaster's death
    through the alive pipe at its next wait and exits; one that never waits lives on.
    bgwlab's opt-in PR_SET_PDEATHSIG (not in PostgreSQL) kills both at once.  Either way,
    Cluster.stop() leaves nothing behind."""
    c = Cluster.start(max_workers=4, pdeathsig=pdeathsig)
    try:
        b = c.connect()
        waiter, waiter_pid = start_sleeper(b, c, name="waits")
        spinner = b.register_dynamic_worker(WorkerSpec(name="spins", entry="bgwlab.examples:spin_ms",
                                                       main_arg=600_000))
        status, spinner_pid = spinner.wait_for_startup()
        assert status is STARTED
        wait_for_event(c, spinner, "reached_main")
        c.kill_postmaster(signal.SIGKILL)
        assert _pidfd_exited(waiter_pid, 10), "a waiting worker must notice the death"
        if pdeathsig:
            assert _pidfd_exited(spinner_pid, 10)
        else:  # no PR_SET_PDEATHSIG: it has no wait to notice the death in
            assert psutil.Process(spinner_pid).status() != psutil.STATUS_ZOMBIE
        exits = [e for e in c.events() if e.kind == "exited"]
        assert not exits  # nobody was left to log them: the postmaster was gone
    finally:
        c.stop()
    assert _pidfd_exited(spinner_pid, 10), "stop() must end the orphan that never waits"
