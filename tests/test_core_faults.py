"""Faults at their real call sites: fork failure, early crash, slow start, bad entry points."""

import errno
import signal
import time

import pytest

from bgwlab import NEVER_RESTART, Fault, HandleStatus, WorkerSpec

from conftest import wait_until
from startup_verdicts import check_startup_verdict

STARTED, STOPPED, NOT_YET = HandleStatus.STARTED, HandleStatus.STOPPED, HandleStatus.NOT_YET_STARTED


def evs(cluster, h, kind=None):
    return [e for e in cluster.events() if e.slot == h.slot and e.generation == h.generation
            and (kind is None or e.kind == kind)]


@pytest.mark.parametrize("err", [errno.EAGAIN, errno.ENOMEM])
def test_fork_failure_of_never_restart_worker_is_forgotten_and_notified(cluster, backend, err):
    h = backend.register_dynamic_worker(WorkerSpec(name="ff", entry="bgwlab.examples:noop",
                                                   fault=Fault.fork_failure(errno=err)))
    assert h.wait_for_startup() == (STOPPED, None)  # woken: the 2015 fix, not a hang
    (failed,) = evs(cluster, h, "fork_failed")
    assert failed.detail["errno"] == err and failed.detail["injected"] is True
    assert evs(cluster, h, "forked") == []
    # the postmaster logs "notified" just after sending the signal: wait for the line
    notified = wait_until(lambda: evs(cluster, h, "notified"), what="the notified event")
    assert [e.detail["reason"] for e in notified] == ["fork failed"]
    assert cluster.alive


def test_fork_failure_of_restartable_worker_retries_and_reads_not_yet_started(cluster, backend):
    h = backend.register_dynamic_worker(WorkerSpec(
        name="ff2", entry="bgwlab.examples:sleep_forever", restart=0.3,
        fault=Fault.fork_failure(errno=errno.EAGAIN, times=2)))
    wait_until(lambda: evs(cluster, h, "fork_failed"), what="first fork failure")
    assert h.get_pid() == (NOT_YET, None)  # pid stays -1 while a retry is pending
    s, pid = h.wait_for_startup()
    assert s is STARTED and pid > 0
    forked = wait_until(lambda: evs(cluster, h, "forked"), what="forked event")  # logged after the signal
    fails = evs(cluster, h, "fork_failed")
    assert len(fails) == 2 and len(forked) == 1
    assert fails[1].t_ns - fails[0].t_ns >= 0.3e9 and forked[0].t_ns - fails[1].t_ns >= 0.3e9
    h.terminate()
    assert h.wait_for_shutdown() is STOPPED


def test_crash_before_main_with_exit_code_1(cluster, backend):
    h = backend.register_dynamic_worker(WorkerSpec(name="cb", entry="bgwlab.examples:noop",
                                                   fault=Fault.slow_start(1.0) | Fault.crash_before_main(exit_code=1)))
    # The fork worked: STARTED (it does not promise user code ran) -- or STOPPED, if the
    # worker was dead (1 s later) before we woke.  Either way the log shows fork and exit 1.
    check_startup_verdict(cluster, h, h.wait_for_startup(), exit_code=1)
    assert h.wait_for_shutdown() is STOPPED
    kinds = [e.kind for e in evs(cluster, h)]
    assert "early_crash" in kinds and "reached_main" not in kinds
    assert evs(cluster, h, "exited")[0].detail["exit_code"] == 1
    assert "crash_restart" not in [e.kind for e in cluster.events()]


def test_crash_before_main_with_signal_is_a_crash(cluster, backend):
    h = backend.register_dynamic_worker(WorkerSpec(name="cs", entry="bgwlab.examples:noop",
                                                   fault=Fault.crash_before_main(signal=signal.SIGSEGV)))
    assert h.wait_for_shutdown() is STOPPED
    (ex,) = evs(cluster, h, "exited")
    assert ex.detail["signal"] == signal.SIGSEGV and ex.detail["crash"] is True
    assert evs(cluster, h, "early_crash")[0].detail["injected"] is True
    wait_until(lambda: any(e.kind == "crash_restart" and e.detail.get("phase") == "end"
                           for e in cluster.events()), what="crash-restart to finish")
    assert cluster.alive and cluster.state() == "running"


def test_slow_start_in_worker_delays_user_code_not_the_fork(cluster, backend):
    h = backend.register_dynamic_worker(WorkerSpec(name="slow", entry="bgwlab.examples:sleep_forever",
                                                   fault=Fault.slow_start(0.5)))
    s, pid = h.wait_for_startup()
    assert s is STARTED  # runs until terminated: it cannot be over yet
    (main,) = wait_until(lambda: evs(cluster, h, "reached_main"), what="the worker to reach user code")
    (forked,) = evs(cluster, h, "forked")
    (attempted,) = evs(cluster, h, "fork_attempted")
    assert forked.detail["worker_pid"] == pid == main.pid
    # "forked" is stamped in the postmaster after fork() returns, which may be later than
    # the child's own start of its sleep; "fork_attempted" is stamped before the fork
    assert main.t_ns - attempted.t_ns >= 0.5e9
    h.terminate()
    assert h.wait_for_shutdown() is STOPPED


def test_slow_start_in_postmaster_delays_the_fork(cluster, backend):
    t0 = time.monotonic()  # before the registration: the delay runs from the postmaster's look
    h = backend.register_dynamic_worker(WorkerSpec(name="slowpm", entry="bgwlab.examples:sleep_forever",
                                                   fault=Fault.slow_start(0.3, where="postmaster")))
    assert h.get_pid()[0] is NOT_YET
    s, _ = h.wait_for_startup()
    assert s is STARTED and time.monotonic() - t0 >= 0.3
    # both are written after the signal that woke us (with the times they happened)
    seen = wait_until(lambda: evs(cluster, h, "request_seen"), what="request_seen event")[0].t_ns
    forked = wait_until(lambda: evs(cluster, h, "forked"), what="forked event")[0].t_ns
    assert forked - seen >= 0.3e9
    h.terminate()
    assert h.wait_for_shutdown() is STOPPED


@pytest.mark.parametrize("entry", ["no_such_module_xyz:main", "bgwlab.examples:no_such_function",
                                   "bgwlab.examples:__doc__"])
def test_unloadable_entry_point_is_an_early_crash_with_traceback(cluster, backend, entry):
    h = backend.register_dynamic_worker(WorkerSpec(name="bad", entry=entry))
    assert h.wait_for_shutdown() is STOPPED
    (ec,) = evs(cluster, h, "early_crash")
    assert ec.detail["injected"] is False and "Traceback" in ec.detail["traceback"]
    assert cluster.alive
    # and the postmaster keeps serving
    h2 = backend.register_dynamic_worker(WorkerSpec(name="ok", entry="bgwlab.examples:noop"))
    assert h2.wait_for_shutdown() is STOPPED


def test_entry_module_next_to_the_caller_is_found(cluster, backend, tmp_path, monkeypatch):
    """Entry modules resolve against the starting process's sys.path and cwd."""
    (tmp_path / "mymod_for_bgwlab.py").write_text(
        "import os\ndef main(arg):\n    open(os.environ.get('X', '') + %r, 'w').write(str(arg))\n"
        % str(tmp_path / "out.txt"))
    from bgwlab import Cluster

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with Cluster.start(max_workers=2) as c:
        b = c.connect()
        h = b.register_dynamic_worker(WorkerSpec(name="mine", entry="mymod_for_bgwlab:main", main_arg=42))
        assert h.wait_for_shutdown() is STOPPED
    assert (tmp_path / "out.txt").read_text() == "42"
