"""PostgreSQL's semantics, row by row, against bgwlab's real processes.

Each test names the PostgreSQL function whose behaviour it holds bgwlab to (source:
``src/backend/postmaster/bgworker.c`` and ``postmaster.c``); where bgwlab differs on
purpose (DESIGN §1a), the test says so and checks the difference instead.
"""

from __future__ import annotations

import copy
import fcntl
import os
import select
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from bgwlab import (NEVER_RESTART, Cluster, Fault, HandleStatus, InvalidWorkerSpec, OutOfWorkerSlots,
                    PostmasterDied, WorkerSpec)
from bgwlab.latch import Latch, dispatcher

from conftest import wait_until
from reliability_helpers import helper, kill9, read_msg

STARTED, STOPPED = HandleStatus.STARTED, HandleStatus.STOPPED
NOT_YET_STARTED, POSTMASTER_DIED = HandleStatus.NOT_YET_STARTED, HandleStatus.POSTMASTER_DIED


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


# -- helpers for the rows below ----------------------------------------------------------------
SEC = 1_000_000_000


def reasons(cluster, h, kind):
    return [e.detail.get("reason") for e in events_of(cluster, h, kind)]


def barrier(backend):
    """The postmaster is single-threaded: once it has started and unregistered a later
    request, it has finished whatever it was doing for the earlier ones."""
    probe = backend.register_dynamic_worker(WorkerSpec(name="barrier", entry="bgwlab.examples:noop",
                                                       notify=False))
    assert probe.wait_for_shutdown(timeout=10) is STOPPED, probe.explain()


def stop_all(*handles):
    for h in handles:
        h.terminate()
    for h in handles:
        assert h.wait_for_shutdown(timeout=10) is STOPPED, h.explain()


def slot_of(backend, h):
    """(in_use, pid, generation) of the handle's slot, as shared memory says now."""
    seg = backend.seg
    return seg.in_use(h.slot), seg.pid(h.slot), seg.generation(h.slot)


def unregistered_then_notified(cluster, h, reason):
    """The slot is freed (``unregistered``) strictly before its registrant is signalled."""
    unreg = wait_for_event(cluster, h, "unregistered")
    assert unreg.detail["reason"] == reason, h.explain()
    notified = wait_until(lambda: [e for e in events_of(cluster, h, "notified")
                                   if e.detail["reason"] == reason], what=f"notified {reason} of {h}")
    assert len(notified) == 1 and unreg.t_ns < notified[0].t_ns, h.explain()
    assert notified[0].detail["target_pid"] == os.getpid()


PM_DELAY = 0.5  # a start the postmaster holds back (Fault.slow_start(where="postmaster"))


def delayed(name, seconds=PM_DELAY, **kw):
    return WorkerSpec(name=name, entry="bgwlab.examples:sleep_forever",
                      fault=Fault.slow_start(seconds, where="postmaster"), **kw)


# -- GetBackgroundWorkerPid ------------------------------------------------------------------
def test_get_pid_reads_each_slot_state_as_postgresql_does(cluster, backend):
    """GetBackgroundWorkerPid: pid -1 is NOT_YET_STARTED; a pid is STARTED; pid 0 (exited,
    even if it will restart), a free slot and a generation mismatch are STOPPED -- read
    from shared memory, checked against what the slot really holds."""
    pending = backend.register_dynamic_worker(delayed("pending", seconds=60))
    assert pending.get_pid() == (NOT_YET_STARTED, None)
    assert slot_of(backend, pending) == (1, -1, pending.generation)

    h, pid = start_sleeper(backend, cluster)
    assert h.get_pid() == (STARTED, pid) and slot_of(backend, h) == (1, pid, h.generation)

    # pid 0: a restartable worker that exited 1 and waits an hour for its restart
    resting = backend.register_dynamic_worker(WorkerSpec(name="resting", entry="bgwlab.examples:fail",
                                                         restart=3600))
    wait_for_event(cluster, resting, "restart_scheduled")
    assert resting.get_pid() == (STOPPED, None), resting.explain()
    assert slot_of(backend, resting) == (1, 0, resting.generation)

    # a free slot (same generation, not in use), then a generation mismatch (slot reused)
    done = backend.register_dynamic_worker(WorkerSpec(name="done", entry="bgwlab.examples:noop"))
    assert done.wait_for_shutdown(timeout=10) is STOPPED
    assert slot_of(backend, done) == (0, 0, done.generation)
    assert done.get_pid() == (STOPPED, None)
    reuse, reuse_pid = start_sleeper(backend, cluster, name="reuse")
    assert reuse.slot == done.slot and reuse.generation != done.generation
    assert done.get_pid() == (STOPPED, None) and reuse.get_pid() == (STARTED, reuse_pid)
    stop_all(pending, h, resting, reuse)


def test_get_pid_reads_not_yet_started_while_a_failed_fork_awaits_its_retry(cluster, backend):
    """GetBackgroundWorkerPid / do_start_bgworker: a restartable worker whose fork failed
    keeps pid -1 -- NOT_YET_STARTED, not STOPPED -- and its registrant is NOT signalled;
    it is retried after its restart interval (the failure counts as a crash time)."""
    interval = 0.5
    h = backend.register_dynamic_worker(WorkerSpec(name="retry", entry="bgwlab.examples:sleep_forever",
                                                   restart=interval, fault=Fault.fork_failure(times=1)))
    failed = wait_for_event(cluster, h, "fork_failed")
    t_read = time.monotonic_ns()
    status = h.get_pid()
    if t_read < failed.t_ns + interval * SEC:  # (the retry cannot have happened yet)
        assert status == (NOT_YET_STARTED, None), h.explain()
        assert slot_of(backend, h)[:2] == (1, -1)
    assert events_of(cluster, h, "restart_scheduled")[0].detail["after_s"] == interval
    status, pid = h.wait_for_startup()  # no timeout: rides through the failure
    assert status is STARTED, h.explain()
    forked = wait_for_event(cluster, h, "forked")
    assert forked.detail["worker_pid"] == pid
    assert forked.t_ns >= failed.t_ns + interval * SEC, "retried before its restart interval"
    wait_for_event(cluster, h, "notified")  # logged just after the signal that woke us
    notified = events_of(cluster, h, "notified")
    assert [e.detail["reason"] for e in notified] == ["forked"], h.explain()  # none for the failure
    assert not events_of(cluster, h, "unregistered")
    stop_all(h)


# -- WaitForBackgroundWorkerStartup / Shutdown --------------------------------------------------
def test_wait_for_startup_without_timeout_never_returns_not_yet_started(cluster, backend):
    """WaitForBackgroundWorkerStartup: loops until STARTED, STOPPED or POSTMASTER_DIED;
    with no timeout it never returns NOT_YET_STARTED.  bgwlab adds timeout= (a documented
    difference): an expired one returns the current status, NOT_YET_STARTED included."""
    h = backend.register_dynamic_worker(delayed("late"))
    t0 = time.monotonic_ns()
    early = h.wait_for_startup(timeout=0)
    if time.monotonic_ns() < t0 + PM_DELAY * SEC:  # (the postmaster holds the fork back until then)
        assert early == (NOT_YET_STARTED, None), h.explain()
    status, pid = h.wait_for_startup()
    assert status is STARTED and pid > 0, h.explain()
    assert wait_for_event(cluster, h, "forked").detail["worker_pid"] == pid
    stop_all(h)


def test_wait_for_shutdown_returns_at_pid_0_even_for_a_worker_that_will_restart(cluster, backend):
    """WaitForBackgroundWorkerShutdown: the same loop until STOPPED -- and pid 0 reads
    STOPPED, so a restartable worker that exited 1 ends the wait though it stays
    registered and will run again."""
    h = backend.register_dynamic_worker(WorkerSpec(name="fails", entry="bgwlab.examples:fail",
                                                   restart=3600))
    assert h.wait_for_shutdown(timeout=10) is STOPPED, h.explain()
    assert exited(cluster, h) == (1, None)
    assert slot_of(backend, h) == (1, 0, h.generation)  # still registered
    assert not events_of(cluster, h, "unregistered")
    stop_all(h)


def test_waits_return_postmaster_died_and_get_pid_never_does(cluster, backend):
    """WaitForBackgroundWorkerStartup and ...Shutdown return POSTMASTER_DIED when the
    postmaster dies under them; GetBackgroundWorkerPid never does: it reads the slot.
    Registering afterwards: PostgreSQL's RegisterDynamicBackgroundWorker does not check,
    bgwlab raises PostmasterDied at once (a documented difference)."""
    pending = backend.register_dynamic_worker(delayed("pending", seconds=60))
    running, pid = start_sleeper(backend, cluster, name="running")
    n = len(dispatcher._latches)
    with ThreadPoolExecutor(2) as pool:
        startup = pool.submit(pending.wait_for_startup)
        shutdown = pool.submit(running.wait_for_shutdown)
        wait_until(lambda: len(dispatcher._latches) >= n + 2, what="both waits to sleep")
        cluster.kill_postmaster(signal.SIGKILL)
        assert startup.result(timeout=10) == (POSTMASTER_DIED, None)
        assert shutdown.result(timeout=10) is POSTMASTER_DIED
    assert pending.get_pid() == (NOT_YET_STARTED, None)
    assert running.get_pid() == (STARTED, pid)  # the slot's last word; the wait says more
    with pytest.raises(PostmasterDied):
        backend.register_dynamic_worker(WorkerSpec(name="after", entry="bgwlab.examples:noop"))
    assert _pidfd_exited(pid, 10), "the worker exits at its next wait"


def test_a_handle_without_notification_still_wakes(cluster, backend):
    """WaitForBackgroundWorkerStartup needs the caller as bgw_notify_pid, or nothing wakes
    it promptly.  bgwlab (a documented difference): a notify=False handle gets no signal
    (no `notified` event) and its waits look again every 10 ms -- never stuck."""
    h = backend.register_dynamic_worker(WorkerSpec(name="quiet", entry="bgwlab.examples:sleep_forever",
                                                   notify=False))
    status, pid = h.wait_for_startup(timeout=10)
    assert status is STARTED, h.explain()
    stop_all(h)
    wait_for_event(cluster, h, "unregistered")
    assert not events_of(cluster, h, "notified"), h.explain()


# -- TerminateBackgroundWorker -------------------------------------------------------------------
def test_terminate_on_a_stale_handle_does_nothing(cluster, backend):
    """TerminateBackgroundWorker: only if the generation matches.  A handle whose slot was
    reused sets nothing, and the slot's new worker runs on."""
    old = backend.register_dynamic_worker(WorkerSpec(name="old", entry="bgwlab.examples:noop"))
    assert old.wait_for_shutdown(timeout=10) is STOPPED
    new, pid = start_sleeper(backend, cluster, name="new")
    assert new.slot == old.slot
    old.terminate()
    assert backend.seg.terminate(new.slot) == 0
    barrier(backend)
    assert new.get_pid() == (STARTED, pid)
    assert not events_of(cluster, old, "terminate_requested") and not events_of(cluster, new, "terminate_seen")
    stop_all(new)


def test_terminate_before_start_removes_and_notifies(cluster, backend):
    """TerminateBackgroundWorker + BackgroundWorkerStateChange / maybe_start_bgworkers
    (bf740ce9): a worker terminated before it started is never forked; it is forgotten,
    reads STOPPED, and its registrant is signalled."""
    h = backend.register_dynamic_worker(delayed("never", seconds=60))
    wait_for_event(cluster, h, "request_seen")
    calls = dispatcher.handler_calls
    h.terminate()
    assert h.wait_for_startup(timeout=10) == (STOPPED, None), h.explain()
    unregistered_then_notified(cluster, h, "terminated before start")
    wait_until(lambda: dispatcher.handler_calls > calls, what="our SIGUSR1 handler to run")
    assert not events_of(cluster, h, "forked") and not events_of(cluster, h, "fork_attempted")
    assert slot_of(backend, h)[0] == 0


# -- RegisterDynamicBackgroundWorker -----------------------------------------------------------
def test_an_invalid_spec_is_refused_before_a_slot_is_used(cluster, backend):
    """RegisterDynamicBackgroundWorker / SanityCheckBackgroundWorker: an invalid spec is an
    error, and no slot or generation is consumed.  The restart interval: PostgreSQL allows
    integer seconds up to USECS_PER_DAY / 1000 = 86,400,000 (a unit slip); bgwlab allows
    0..86,400 s with fractions (a documented difference)."""
    seg = backend.seg
    in_use, next_gen = bytes(seg.in_use_array()), seg.next_generation()
    good = WorkerSpec(name="ok", entry="bgwlab.examples:noop")
    for field, value in [("name", "n" * 96), ("name", ""), ("entry", "no_colon"), ("extra", b"x" * 129),
                         ("restart", 86_401), ("restart", -2), ("restart", 86_400_000),
                         ("main_arg", 2**63), ("notify", 1)]:
        forced = copy.copy(good)
        object.__setattr__(forced, field, value)  # past the frozen dataclass's own check
        with pytest.raises(InvalidWorkerSpec):
            backend.register_dynamic_worker(forced)
        with pytest.raises(InvalidWorkerSpec):
            good.replace(**{field: value})
    assert (bytes(seg.in_use_array()), seg.next_generation()) == (in_use, next_gen)
    assert not [e for e in cluster.events() if e.kind == "registered"]
    WorkerSpec(name="n" * 95, entry="bgwlab.examples:noop", restart=86_400, extra=b"x" * 128)
    h = backend.register_dynamic_worker(good.replace(restart=0.25))
    assert h.generation == next_gen and in_use[h.slot] == 0
    assert h.wait_for_shutdown(timeout=10) is STOPPED


def test_no_free_slot_raises_out_of_worker_slots(cluster, backend):
    """RegisterDynamicBackgroundWorker returns false when every slot is in use; bgwlab
    raises OutOfWorkerSlots instead (a documented difference), consuming nothing."""
    hs = [backend.register_dynamic_worker(WorkerSpec(name=f"w{i}", entry="bgwlab.examples:sleep_forever"))
          for i in range(backend.seg.max_workers)]
    next_gen = backend.seg.next_generation()
    with pytest.raises(OutOfWorkerSlots):
        backend.register_dynamic_worker(WorkerSpec(name="one_too_many", entry="bgwlab.examples:noop"))
    assert backend.seg.next_generation() == next_gen
    assert len([e for e in cluster.events() if e.kind == "registered"]) == len(hs)
    stop_all(*hs)


def test_generation_is_bumped_when_a_slot_is_reused(cluster, backend):
    """RegisterDynamicBackgroundWorker: slot->generation++ on reuse, so the old handle no
    longer matches.  (bgwlab keeps one counter for the cluster: still strictly larger.)"""
    first = backend.register_dynamic_worker(WorkerSpec(name="first", entry="bgwlab.examples:noop"))
    assert first.wait_for_shutdown(timeout=10) is STOPPED
    second = backend.register_dynamic_worker(WorkerSpec(name="second", entry="bgwlab.examples:noop"))
    assert second.slot == first.slot and second.generation > first.generation
    assert second.wait_for_shutdown(timeout=10) is STOPPED
    assert [e.detail["name"] for e in events_of(cluster, second, "request_seen")] == ["second"]


# -- when the notify pid gets SIGUSR1 ----------------------------------------------------------
def test_notify_after_a_successful_fork_with_the_pid_recorded_first(cluster, backend):
    """do_start_bgworker: the pid is written to the slot before the registrant is
    signalled, so the first wakeup already reads STARTED with that pid."""
    latch = Latch()
    dispatcher.add(latch)
    try:
        latch.reset()
        h = backend.register_dynamic_worker(WorkerSpec(name="w", entry="bgwlab.examples:sleep_forever"))
        deadline = time.monotonic() + 10
        while not latch.is_set() and time.monotonic() < deadline:
            dispatcher.wait(latch, 0.5)
        assert latch.is_set(), "no SIGUSR1 after the fork"
        status, pid = h.get_pid()  # on the first wakeup, nothing else
    finally:
        dispatcher.remove(latch)
        latch.close()
    assert status is STARTED, h.explain()
    forked = wait_for_event(cluster, h, "forked")
    notified = wait_for_event(cluster, h, "notified")
    assert forked.detail["worker_pid"] == pid and notified.detail["reason"] == "forked"
    assert forked.t_ns < notified.t_ns
    stop_all(h)


def test_every_non_crash_exit_unregisters_before_notifying(cluster, backend):
    """CleanupBackgroundWorker / ForgetBackgroundWorker: a worker that will not restart is
    unregistered *before* its registrant is signalled, so the waiter can reuse the slot at
    once -- with every slot in use, the next registration right after the wait succeeds."""
    n = backend.seg.max_workers
    hs = [backend.register_dynamic_worker(WorkerSpec(name=f"w{i}", entry="bgwlab.examples:sleep_forever"))
          for i in range(n - 1)]
    for i, (entry, how) in enumerate([("bgwlab.examples:noop", "exit 0"),
                                      ("bgwlab.examples:fail", "exit 1, never restart"),
                                      ("bgwlab.examples:sleep_forever", "terminated")]):
        last = backend.register_dynamic_worker(WorkerSpec(name=f"last{i}", entry=entry))
        if how == "terminated":
            assert last.wait_for_startup(timeout=10)[0] is STARTED
            last.terminate()
        assert last.wait_for_shutdown(timeout=10) is STOPPED, last.explain()
        hs.append(backend.register_dynamic_worker(  # no OutOfWorkerSlots: the slot is free already
            WorkerSpec(name=f"next{i}", entry="bgwlab.examples:sleep_forever")))
        unregistered_then_notified(cluster, last, how)
        stop_all(hs.pop())
    stop_all(*hs)


def test_never_restart_fork_failure_is_forgotten_and_notified(cluster, backend):
    """maybe_start_bgworkers (28724fd9): a BGW_NEVER_RESTART worker whose fork failed is
    forgotten, reads STOPPED and its registrant is signalled -- no waiter hangs.  (bgwlab
    does it in the same pass, PostgreSQL on the next: a documented difference.)"""
    h = backend.register_dynamic_worker(WorkerSpec(name="nofork", entry="bgwlab.examples:noop",
                                                   fault=Fault.fork_failure()))
    assert h.wait_for_startup() == (STOPPED, None), h.explain()
    unregistered_then_notified(cluster, h, "fork failed")
    assert wait_for_event(cluster, h, "fork_failed").t_ns < events_of(cluster, h, "unregistered")[0].t_ns
    assert not events_of(cluster, h, "forked")


def test_unstarted_workers_dropped_at_shutdown_are_notified(cluster, backend):
    """ForgetUnstartedBackgroundWorkers: at shutdown a worker not yet started is dropped and
    its registrant signalled; the handle reads STOPPED (not POSTMASTER_DIED: the slot says so)."""
    h = backend.register_dynamic_worker(delayed("pending", seconds=60))
    wait_for_event(cluster, h, "request_seen")
    cluster.kill_postmaster(signal.SIGTERM)
    assert h.wait_for_shutdown(timeout=10) is STOPPED, h.explain()
    unregistered_then_notified(cluster, h, "postmaster shutdown")
    assert not events_of(cluster, h, "forked")


# -- exits ------------------------------------------------------------------------------------
def test_exit_0_unregisters_and_never_restarts_even_a_restartable_worker(cluster, backend):
    """CleanupBackgroundWorker: exit status 0 means done -- unregistered and never
    restarted, whatever the restart interval."""
    h = backend.register_dynamic_worker(WorkerSpec(name="once", entry="worker_entries:count_runs_then_exit0",
                                                   restart=0))
    assert h.wait_for_shutdown(timeout=10) is STOPPED, h.explain()
    unregistered_then_notified(cluster, h, "exit 0")
    barrier(backend)
    with open(os.path.join(cluster.directory, f"runs-{h.slot}-{h.generation}")) as f:
        assert len(f.read().split()) == 1
    assert len(events_of(cluster, h, "forked")) == 1 and not events_of(cluster, h, "restart_scheduled")


def test_exit_1_restarts_after_the_interval_unless_terminated(cluster, backend):
    """CleanupBackgroundWorker / maybe_start_bgworkers: exit 1 sets pid 0, signals the
    registrant and restarts the worker once its restart interval has passed; a worker
    that was asked to terminate (SIGTERM -> exit 1) is unregistered instead."""
    interval = 0.5
    h = backend.register_dynamic_worker(WorkerSpec(name="again", entry="bgwlab.examples:fail_then_run",
                                                   main_arg=600_000, restart=interval))
    first = wait_for_event(cluster, h, "exited")
    assert (first.detail["exit_code"], first.detail["crash"]) == (1, False)
    notified = wait_for_event(cluster, h, "notified")  # "forked" of the first run
    wait_until(lambda: "exited" in reasons(cluster, h, "notified"), what="the exit notification")
    assert notified.detail["reason"] == "forked"
    pids = wait_until(lambda: [e for e in events_of(cluster, h, "forked")][1:], what="the restart")
    assert pids[0].t_ns >= first.t_ns + interval * SEC, h.explain()
    assert h.get_pid() == (STARTED, pids[0].detail["worker_pid"])
    assert not [e for e in cluster.events() if e.kind == "crash_restart"]
    wait_for_event(cluster, h, "reached_main")
    stop_all(h)
    assert events_of(cluster, h, "unregistered")[0].detail["reason"] == "terminated"
    assert len(events_of(cluster, h, "forked")) == 2


def test_any_other_exit_is_a_crash_that_stops_every_child(cluster, backend):
    """HandleChildCrash: an exit status other than 0 or 1 is a crash: every other child is
    SIGQUIT (exit 2), nobody is notified at the exit itself, NEVER_RESTART workers are
    forgotten.  bgwlab differs on purpose (DESIGN §1a): its registrants survive, are
    signalled when the cycle ends, and generations never repeat."""
    bystander, _ = start_sleeper(backend, cluster, name="bystander")
    culprit = backend.register_dynamic_worker(WorkerSpec(name="culprit", entry="bgwlab.examples:exit_with",
                                                         main_arg=3))
    assert culprit.wait_for_shutdown(timeout=30) is STOPPED and bystander.wait_for_shutdown(timeout=30) is STOPPED
    assert exited(cluster, culprit) == (3, None) and exited(cluster, bystander) == (2, None)
    begin, end = (wait_until(lambda p=p: [e for e in cluster.events() if e.kind == "crash_restart"
                                          and e.detail.get("phase") == p], what=p)[0] for p in ("begin", "end"))
    assert begin.detail["exit_code"] == 3
    for h in (culprit, bystander):
        notified = events_of(cluster, h, "notified")  # nothing at the crash itself
        assert [e.detail["reason"] for e in notified] == ["forked", "crash-restart"], h.explain()
        assert notified[1].t_ns > begin.t_ns
        assert events_of(cluster, h, "unregistered")[0].detail["reason"] == "crash-restart"
    assert backend.attached  # the registrant lived through it (PostgreSQL's would not)
    after, _ = start_sleeper(backend, cluster, name="after")
    assert after.generation > max(culprit.generation, bystander.generation)
    stop_all(after)


# -- who writes what ---------------------------------------------------------------------------
def test_a_registrant_dying_with_the_registration_lock_does_not_wedge_anything(cluster, backend):
    """The postmaster takes no lock (bgworker.c's header comment): while a registrant
    holds the registration lock, workers still exit and waiters are still woken; when the
    holder dies (kill -9), the lock dies with it and registering works again."""
    h, pid = start_sleeper(backend, cluster)
    holder = helper("lock_holder", cluster.directory, "lock")
    try:
        assert read_msg(holder)["locked"]
        fd = os.open(cluster.directory / "registration.lock", os.O_RDWR | os.O_CLOEXEC)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        os.kill(pid, signal.SIGTERM)  # (our own cluster's worker, STARTED and alive)
        assert h.wait_for_shutdown(timeout=10) is STOPPED, h.explain()
        unregistered_then_notified(cluster, h, "exit 1, never restart")
    finally:
        kill9(holder)
    late, _ = start_sleeper(backend, cluster, name="late")
    stop_all(late)


def test_a_dead_registrant_is_never_signalled(cluster, backend):
    """PostmasterMarkPIDForWorkerNotify accepts only a live child as notify pid, but
    BackgroundWorkerStateChange signals the raw bgw_notify_pid of a registration
    terminated before the postmaster saw it.  bgwlab validates on every path (stricter,
    a documented difference): a registrant killed before its request was seen gets
    nothing, and the drop is logged."""
    pm = psutil.Process(cluster.postmaster_pid)
    pm.suspend()
    try:
        r = helper("one_worker", cluster.directory, "forever", "0")
        try:
            info = read_msg(r)
        finally:
            kill9(r)
        h = backend.handle(info["slot"], info["generation"])
        h.terminate()
    finally:
        pm.resume()
    assert h.wait_for_shutdown(timeout=10) is STOPPED, h.explain()
    unreg = wait_for_event(cluster, h, "unregistered")
    assert unreg.detail["reason"] == "terminated before start"
    dropped = events_of(cluster, h, "notify_dropped")
    assert dropped and dropped[0].detail["notify_pid"] == info["pid"], h.explain()
    barrier(backend)
    assert not events_of(cluster, h, "notified") and not events_of(cluster, h, "forked"), h.explain()
