"""Status transitions with real processes: start, exit 0, exit 1 + restart, crash-restart, terminate."""

import os
import signal
import stat
import subprocess
import sys
import textwrap

import psutil
import pytest

from bgwlab import (NEVER_RESTART, Cluster, HandleStatus, OutOfWorkerSlots, WorkerSpec, attach)
from bgwlab.shmem import Segment

from conftest import wait_until
from startup_verdicts import check_startup_verdict

STARTED, STOPPED, NOT_YET = HandleStatus.STARTED, HandleStatus.STOPPED, HandleStatus.NOT_YET_STARTED


def spec(entry="bgwlab.examples:sleep_ms", arg=0, **kw):
    return WorkerSpec(name=kw.pop("name", "t"), entry=entry, main_arg=arg, **kw)


def evs_of(cluster, slot, generation):
    return [e for e in cluster.events() if (e.slot, e.generation) == (slot, generation)]


def kinds(cluster, slot=None, generation=None):
    return [e.kind for e in cluster.events()
            if (slot is None or e.slot == slot) and (generation is None or e.generation == generation)]


def test_start_creates_private_directory_and_segment_and_stop_removes_it():
    c = Cluster.start(max_workers=4)
    d = c.directory
    try:
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(d / "shmem").st_mode) == 0o600
        pm = psutil.Process(c.postmaster_pid)
        assert pm.ppid() == os.getpid()
        assert pm.num_threads() == 1
        assert c.state() == "running"
    finally:
        c.stop()
    assert not c.alive and not (d / "shmem").exists()
    assert not psutil.pid_exists(c.postmaster_pid)
    assert "postmaster_stopped" in [e.kind for e in c.events()]


def test_start_in_given_directory_keeps_events_and_refuses_a_second_cluster(tmp_path):
    d = tmp_path / "cl"
    with Cluster.start(max_workers=2, directory=d) as c:
        with pytest.raises(Exception, match="already running"):
            Cluster.start(max_workers=2, directory=d)
        b = c.connect()
        h = b.register_dynamic_worker(spec("bgwlab.examples:noop"))
        assert h.wait_for_shutdown() is STOPPED
    assert (d / "events.jsonl").exists() and not (d / "shmem").exists()


def test_worker_starts_runs_user_code_and_exit0_unregisters(cluster, backend):
    # A worker that runs until terminated: STARTED, and its pid is a live child of the postmaster.
    running = backend.register_dynamic_worker(spec("worker_entries:report_then_sleep", 77,
                                                   extra=b"hello\x00"))
    status, pid = running.wait_for_startup()
    assert status is STARTED and pid > 0
    w = psutil.Process(pid)
    assert w.ppid() == cluster.postmaster_pid
    assert running.get_pid() == (STARTED, pid)
    wait_until(lambda: any(e.kind == "reached_main" and e.pid == pid
                           for e in evs_of(cluster, running.slot, running.generation)),
               what="the worker to reach user code")
    # what the worker received: the extra bytes and main_arg read back from inside it
    report = wait_until(lambda: (lambda p: p.exists() and p)(
        cluster.directory / f"report-{running.slot}-{running.generation}.json"), what="the report")
    got = __import__("json").loads(report.read_text())
    assert (bytes.fromhex(got["extra"]), got["main_arg"], got["pid"]) == (b"hello\x00", 77, pid)
    running.terminate()
    assert running.wait_for_shutdown() is STOPPED
    assert running.get_pid() == (STOPPED, None)
    # A worker that ends by itself with exit 0 (it may be over before we wake: either
    # verdict, checked against the log).
    h = backend.register_dynamic_worker(spec(arg=20, extra=b"hello"))
    forked_pid = check_startup_verdict(cluster, h, h.wait_for_startup())
    assert h.wait_for_shutdown() is STOPPED
    assert h.get_pid() == (STOPPED, None)
    k = kinds(cluster, h.slot, h.generation)
    for kind in ("registered", "request_seen", "forked", "reached_main", "exited", "unregistered"):
        assert kind in k
    (exited,) = [e for e in evs_of(cluster, h.slot, h.generation) if e.kind == "exited"]
    assert exited.detail["worker_pid"] == forked_pid and exited.detail["exit_code"] == 0
    # exit 0: unregistered, the slot is free for the next registration, with a newer generation
    h2 = backend.register_dynamic_worker(spec("bgwlab.examples:noop"))
    assert h2.slot == h.slot and h2.generation > h.generation
    assert h2.wait_for_shutdown() is STOPPED


def test_exit1_with_restart_interval_restarts_with_a_new_pid(cluster, backend):
    h = backend.register_dynamic_worker(spec("bgwlab.examples:fail_then_run", 5000, restart=0.2))
    # The first run fails at once: we may wake while it runs (STARTED), after its exit
    # (STOPPED: pid 0 until the restart), or even after the restart (STARTED, second pid).
    first_pid = check_startup_verdict(cluster, h, h.wait_for_startup(), exit_code=1)
    # first run raises -> exit 1 -> pid 0 (STOPPED) until the restart, then STARTED again
    wait_until(lambda: "restart_scheduled" in kinds(cluster, h.slot, h.generation), what="restart_scheduled")
    s, second_pid = wait_until(lambda: (lambda r: r if r[0] is STARTED and r[1] != first_pid else None)(h.get_pid()),
                               what="the restarted worker")
    assert second_pid != first_pid and psutil.Process(second_pid).ppid() == cluster.postmaster_pid
    def mine():
        return [e for e in cluster.events() if e.slot == h.slot and e.generation == h.generation]
    evs = wait_until(lambda: (lambda ev: ev if [e.kind for e in ev].count("forked") == 2 else None)(mine()),
                     what="the second forked event")  # logged just after the signal
    exit1 = next(e for e in evs if e.kind == "exited")
    restart = [e for e in evs if e.kind == "forked"][1]
    assert exit1.detail["exit_code"] == 1
    assert restart.t_ns - exit1.t_ns >= 0.2e9  # not before the restart interval
    h.terminate()
    assert h.wait_for_shutdown() is STOPPED
    assert "unregistered" in kinds(cluster, h.slot, h.generation)


def test_exit1_never_restart_is_unregistered(cluster, backend):
    h = backend.register_dynamic_worker(spec("bgwlab.examples:fail"))
    assert h.wait_for_shutdown() is STOPPED
    evs = [e for e in cluster.events() if e.slot == h.slot and e.generation == h.generation]
    assert any(e.kind == "worker_error" and "RuntimeError" in e.detail["error"] for e in evs)
    assert [e.kind for e in evs].count("forked") == 1
    assert backend.seg.in_use(h.slot) == 0


def test_terminate_running_worker(cluster, backend):
    h = backend.register_dynamic_worker(spec("bgwlab.examples:sleep_forever", restart=0))
    s, pid = h.wait_for_startup()
    assert s is STARTED
    h.terminate()
    assert h.wait_for_shutdown(timeout=10) is STOPPED
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    ev = wait_until(lambda: (lambda ev: ev if "unregistered" in [e.kind for e in ev] else None)(h.history()),
                    what="the unregistered event")
    ex = [e for e in ev if e.kind == "exited"]
    # SIGTERM -> exit 1, which with restart=0 would restart at once: terminate means no restart
    assert [(e.detail["worker_pid"], e.detail["exit_code"]) for e in ex] == [(pid, 1)], h.explain()
    assert [e.kind for e in ev].count("forked") == 1
    assert [e.detail["reason"] for e in ev if e.kind == "unregistered"] == ["terminated"]
    assert "restart_scheduled" not in [e.kind for e in ev]
    assert backend.seg.in_use(h.slot) == 0


def test_terminate_before_start_removes_worker_and_notifies(cluster, backend):
    from bgwlab import Fault

    h = backend.register_dynamic_worker(spec(fault=Fault.slow_start(30, where="postmaster")))
    wait_until(lambda: "request_seen" in kinds(cluster, h.slot), what="request_seen")
    assert h.get_pid() == (NOT_YET, None)
    h.terminate()
    assert h.wait_for_startup(timeout=10) == (STOPPED, None)
    k = wait_until(lambda: (lambda k: k if "notified" in k else None)(kinds(cluster, h.slot, h.generation)),
                   what="the notified event")  # logged just after the signal is sent
    assert "forked" not in k and "unregistered" in k


def test_stale_handle_reads_stopped_and_terminate_is_a_noop():
    with Cluster.start(max_workers=2) as c:
        b = c.connect()
        h1 = b.register_dynamic_worker(spec("bgwlab.examples:sleep_forever"))
        h2 = b.register_dynamic_worker(spec("bgwlab.examples:sleep_forever"))
        assert h1.wait_for_startup()[0] is STARTED and h2.wait_for_startup()[0] is STARTED
        with pytest.raises(OutOfWorkerSlots, match="max_workers"):
            b.register_dynamic_worker(spec())
        h1.terminate()
        assert h1.wait_for_shutdown() is STOPPED
        h3 = b.register_dynamic_worker(spec("bgwlab.examples:sleep_forever"))
        assert h3.slot == h1.slot and h3.generation != h1.generation
        s3, pid3 = h3.wait_for_startup()
        assert s3 is STARTED
        assert h1.get_pid() == (STOPPED, None)  # stale: never another worker's pid
        h1.terminate()  # no-op on the new occupant
        assert b.seg.terminate(h3.slot) == 0
        assert h3.get_pid() == (STARTED, pid3)
        h2.terminate(), h3.terminate()
        assert h2.wait_for_shutdown() is STOPPED and h3.wait_for_shutdown() is STOPPED


def test_crash_restart_cycle(cluster, backend):
    keep = backend.register_dynamic_worker(spec("bgwlab.examples:sleep_forever", restart=0, name="keep"))
    forget = backend.register_dynamic_worker(spec("bgwlab.examples:sleep_forever", name="forget"))
    (_, keep_pid), (_, forget_pid) = keep.wait_for_startup(), forget.wait_for_startup()
    crasher = backend.register_dynamic_worker(spec("bgwlab.examples:crash", int(signal.SIGSEGV)))
    assert crasher.wait_for_shutdown() is STOPPED
    # NEVER_RESTART workers are forgotten, and their waiters woken
    assert forget.wait_for_shutdown(timeout=10) is STOPPED
    # restartable ones come back with a new pid, in the same slot and generation
    s, new_pid = wait_until(lambda: (lambda r: r if r[0] is STARTED and r[1] != keep_pid else None)(keep.get_pid()),
                            what="restart after crash")
    assert new_pid != keep_pid
    ev = cluster.events()
    begin = [e for e in ev if e.kind == "crash_restart" and e.detail.get("phase") == "begin"]
    assert len(begin) == 1 and begin[0].detail["signal"] == signal.SIGSEGV
    killed = [e for e in ev if e.kind == "exited" and e.detail.get("worker_pid") in (keep_pid, forget_pid)]
    # SIGQUIT's handler is PostgreSQL's SignalHandlerForCrashExit: _exit(2), no cleanup
    assert [(e.detail["exit_code"], e.detail["signal"]) for e in killed] == [(2, None), (2, None)]
    # generations never go back: a registration after the crash gets a larger one
    later = backend.register_dynamic_worker(spec("bgwlab.examples:noop"))
    assert later.generation > max(keep.generation, forget.generation, crasher.generation)
    assert later.wait_for_shutdown() is STOPPED
    keep.terminate()
    assert keep.wait_for_shutdown() is STOPPED
    assert cluster.alive


def test_crash_with_restart_after_crash_off_stops_the_cluster():
    with Cluster.start(max_workers=2, restart_after_crash=False) as c:
        b = c.connect()
        h = b.register_dynamic_worker(spec("bgwlab.examples:crash", int(signal.SIGABRT)))
        check_startup_verdict(c, h, h.wait_for_startup())
        # the slot's pid is 0 before the shutdown begins: STOPPED, not POSTMASTER_DIED
        assert h.wait_for_shutdown() is STOPPED
        wait_until(lambda: not c.alive, what="postmaster exit")
        ev = c.events()
        (ex,) = [e for e in ev if e.kind == "exited" and (e.slot, e.generation) == (h.slot, h.generation)]
        assert ex.detail["signal"] == signal.SIGABRT and ex.detail["crash"] is True
        assert "crash_restart" not in [e.kind for e in ev]  # no recovery: a shutdown instead
        (stopping,) = [e for e in ev if e.kind == "postmaster_stopping"]
        assert "restart_after_crash is off" in stopping.detail["reason"]


def test_second_process_attaches_registers_and_waits(cluster):
    code = textwrap.dedent(f"""
        import bgwlab
        b = bgwlab.attach({str(cluster.directory)!r})
        h = b.register_dynamic_worker(bgwlab.WorkerSpec(name="other", entry="bgwlab.examples:sleep_forever"))
        s, pid = h.wait_for_startup()
        h.terminate()
        print(s.name, pid, h.wait_for_shutdown().name, b.index)
        b.detach()
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    s, pid, s2, idx = out.stdout.split()
    assert (s, s2) == ("STARTED", "STOPPED") and int(pid) > 0
    attached = [e for e in cluster.events() if e.kind == "backend_attached"]
    assert any(e.pid != os.getpid() for e in attached)


def test_attach_to_a_directory_without_cluster_is_a_clear_error(tmp_path):
    from bgwlab import NotACluster

    with pytest.raises(NotACluster, match="Cluster.start"):
        attach(tmp_path)


def test_postmaster_shuts_down_when_its_starter_exits(tmp_path):
    code = textwrap.dedent(f"""
        import bgwlab, sys
        c = bgwlab.Cluster.start(max_workers=2, directory={str(tmp_path / 'c')!r})
        b = c.connect()
        h = b.register_dynamic_worker(bgwlab.WorkerSpec(name="s", entry="bgwlab.examples:sleep_forever"))
        print(c.postmaster_pid, h.wait_for_startup()[1], flush=True)
        import os; os._exit(0)   # no stop(): the postmaster must notice on its own
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    pm_pid, worker_pid = map(int, out.stdout.split())
    # both are re-parented to us (child subreaper); wait for them to exit and reap them
    def gone(pid):
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True
    wait_until(lambda: gone(pm_pid) and gone(worker_pid), timeout=10, what="postmaster and worker exit")
    seg_state = [l for l in (tmp_path / "c" / "events.jsonl").read_text().splitlines() if "postmaster_stopping" in l]
    assert seg_state and "started the cluster exited" in seg_state[0]


def test_script_that_exits_with_a_running_cluster_stops_it_cleanly(tmp_path):
    code = textwrap.dedent(f"""
        from bgwlab import Cluster, WorkerSpec
        c = Cluster.start(max_workers=2, directory={str(tmp_path / 'c')!r})
        b = c.connect()
        h = b.register_dynamic_worker(WorkerSpec(name="w", entry="bgwlab.examples:sleep_forever"))
        print(c.postmaster_pid, h.wait_for_startup()[1], flush=True)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, (out.returncode, out.stderr)  # not killed by a late SIGUSR1
    pm_pid, worker_pid = map(int, out.stdout.split())
    assert not psutil.pid_exists(pm_pid) and not psutil.pid_exists(worker_pid)
    assert not (tmp_path / "c" / "shmem").exists()
