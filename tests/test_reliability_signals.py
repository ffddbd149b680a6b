"""Signals only where they belong (issue 5, item 4).

A registrant that detached or died is never signalled again -- not even when its pid
is reused by an unrelated process.  Pid reuse is forced for real: each scenario runs in
a fresh PID namespace (``unshare --pid --fork --mount-proc``), where nothing else forks,
and ``/proc/sys/kernel/ns_last_pid`` makes the next process take the dead registrant's
pid.  That process counts every SIGUSR1 it gets.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time

import pytest

from bgwlab import shmem
from bgwlab.eventlog import EventWriter
from bgwlab.events import read_events
from bgwlab.procinfo import start_ticks

from conftest import wait_until
from reliability_helpers import HERE, LOST_WAIT_S, PY, events_of, finish, helper, make_spec, read_msg


def _can_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    r = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True)
    return r.returncode == 0


needs_pidns = pytest.mark.skipif(not _can_unshare(), reason="needs root and unshare(1) for a PID namespace")

SCENARIOS = ["detached_plain", "detached_attach", "died_plain", "died_attach",
             "died_stalled_plain", "died_stalled_attach"]


@needs_pidns
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_reused_pid_of_a_gone_registrant_is_never_signalled(scenario):
    proc = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", PY, str(HERE / "reliability_helpers.py"),
         "pid_reuse", scenario],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["pid_reused"], "could not make a new process take the registrant's pid"
    assert res["p"]["pid"] == res["r"]["pid"] and res["p_start_differs"]
    # The worker really ran and changed state while the pid belonged to P.
    assert res["worker_pid"] and res["exited"], res
    # P (plain, or even attached in R's old backend entry) never got a SIGUSR1.
    assert res["p_sigusr1"] == 0, res
    if scenario.endswith("_attach"):
        assert res["p"]["backend"] == res["r"]["backend"]  # it took R's entry: same index, same pid
    # Only the legitimate notification (to R, alive and attached, at fork) was ever sent.
    expected_notified = 0 if scenario.startswith("died_stalled") else 1
    assert len(res["notified_targets"]) == expected_notified, res
    # ... and the postmaster said it dropped the rest.
    assert res["notify_dropped"], res


def test_detached_registrant_gets_no_signal_while_its_worker_keeps_restarting(cluster):
    """Without pid reuse: R detaches (while the postmaster is stopped, so that no
    notification can be in flight), its worker keeps failing and restarting; no
    notification goes to R after its detach, and the drop is logged."""
    r = helper("one_worker", cluster.directory, "exit1_restart", "1")
    try:
        info = read_msg(r)
        slot, gen = info["slot"], info["generation"]
        os.kill(cluster.postmaster_pid, signal.SIGSTOP)
        try:
            r.stdin.write("detach\n")
            r.stdin.flush()
            assert read_msg(r)["detached"]
        finally:
            os.kill(cluster.postmaster_pid, signal.SIGCONT)
        evs = cluster.events()
        (detach,) = [e for e in evs if e.kind == "backend_detached" and e.pid == info["pid"]]
        forks_before = len(events_of(evs, slot, gen, "forked"))
        wait_until(lambda: len(events_of(cluster.events(), slot, gen, "forked")) >= forks_before + 3,
                   timeout=10, what="three more restarts after the detach")
        evs = cluster.events()
        late = [e for e in events_of(evs, slot, gen, "notified") if e.t_ns > detach.t_ns]
        assert late == []
        assert events_of(evs, slot, gen, "notify_dropped")
        assert r.poll() is None  # R is alive: it simply is no longer a target
    finally:
        finish(r)
    me = cluster.connect()
    h = me.handle(slot, gen)
    h.terminate()
    wait_until(lambda: h.get_pid()[0].value == "stopped", what="worker to stop")
    me.detach()


def test_notify_to_a_registrant_that_exited_unnoticed_is_dropped_not_an_error(tmp_path):
    """The postmaster holds a pidfd of a registrant that has exited and been reaped, but
    it has not yet seen the pidfd become readable (it happens between two polls).  The
    notification must be dropped and logged, and the rest of the loop step must go on."""
    from bgwlab import postmaster as pm_mod

    pm = pm_mod.Postmaster(str(tmp_path), {"max_workers": "2", "max_backends": "2"})
    pm.seg = shmem.Segment(str(tmp_path / "shmem"), create=True, max_workers=2, max_backends=2)
    pm.events = EventWriter(str(tmp_path / "events.jsonl"), "postmaster")
    pm.poller = select.poll()
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        start = start_ticks(child.pid)
        pm.seg.set_backend(0, 1, child.pid, start, os.getuid())
        assert pm.backend_pidfd(0, child.pid, start) is not None
    finally:
        child.kill()
        child.wait()
        child.stdin.close()
    target = (0, child.pid, start)
    raw = shmem.encode_spec(make_spec("exit1_restart"), 7, target)
    rw = pm_mod.RegisteredWorker(1, 7, shmem.decode_spec(raw, 7), raw, 0)
    rw.notify = target
    pm.workers[1] = rw
    try:
        assert pm.notify(rw, "exited") == 0
        assert rw.notify is None and pm.backends == {}
        dropped = [e for e in read_events(tmp_path / "events.jsonl") if e.kind == "notify_dropped"]
        assert dropped and dropped[0].slot == 1 and dropped[0].detail["notify_pid"] == child.pid
    finally:
        for _pid, _start, fd in pm.backends.values():
            os.close(fd)
        pm.events.close()
        pm.seg.close()


def test_postmaster_never_signals_a_table_entry_it_cannot_verify(cluster, backend):
    """A forged backend-table entry (pid of an unrelated live process, wrong start time)
    named as notify target is refused: the unrelated process gets nothing."""
    p = helper("sigusr1_counter")
    try:
        assert read_msg(p)["ready"]
        from reliability_helpers import RawSegment

        with RawSegment(cluster.directory) as raw:
            # Forge entry 5 for P with a bogus start time, then a slot that notifies it.
            off = raw.layout.backend_off(5)
            shmem.BACKEND.pack_into(raw.mm, off, 1, p.pid, 12345, os.getuid())
        h = backend.register_dynamic_worker(make_spec("exit0"))
        # Rewrite the spec of a fresh registration to notify the forged entry, under the lock.
        with backend._locked():
            seg = backend.seg
            slot = seg.in_use_array().find(0)
            gen = seg.next_generation()
            seg.set_next_generation(gen + 1)
            seg.write_spec(slot, shmem.encode_spec(make_spec("exit0"), gen, (5, p.pid, 12345)))
            seg.set_generation(slot, gen)
            seg.set_pid(slot, -1)
            seg.set_terminate(slot, 0)
            seg.set_in_use(slot, 1)
        backend._signal_postmaster(shmem.PMSIGNAL_WORKER_CHANGE)
        assert h.wait_for_shutdown(timeout=LOST_WAIT_S).value == "stopped"
        forged = backend.handle(slot, gen)
        wait_until(lambda: forged.get_pid()[0].value == "stopped", what="forged worker to finish")
        probe = backend.register_dynamic_worker(make_spec("exit0"))
        assert probe.wait_for_shutdown(timeout=LOST_WAIT_S).value == "stopped"  # barrier
        p.stdin.write("count\n")
        p.stdin.flush()
        assert read_msg(p)["sigusr1"] == 0
        evs = cluster.events()
        assert events_of(evs, slot, gen, "exited")  # the worker did run
        assert events_of(evs, slot, gen, "notify_dropped")
        assert not events_of(evs, slot, gen, "notified")
    finally:
        finish(p)


def test_a_signal_to_a_newborn_worker_never_reaches_the_postmaster(cluster, backend):
    """A worker signalled in its first microseconds -- before it has dropped the
    postmaster's signal handlers and wakeup fd -- must not make the postmaster believe
    that *it* got the signal (SIGTERM to a newborn worker must not shut the cluster down)."""
    seg = backend.seg
    rounds = 0
    for rounds in range(1, 41):
        h = backend.register_dynamic_worker(make_spec("forever", notify=False))
        pid = 0
        deadline = time.monotonic() + 10
        while pid <= 0 and time.monotonic() < deadline:  # spin: signal it as soon as it exists
            pid = seg.pid(h.slot) if seg.generation(h.slot) == h.generation else 0
        assert pid > 0
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: h.get_pid()[0].value == "stopped", what="the signalled worker to stop")
        assert cluster.state() == "running", f"the postmaster took round {rounds}'s SIGTERM for its own"
    kinds = [e.kind for e in cluster.events()]
    assert "postmaster_stopping" not in kinds
    assert kinds.count("exited") == rounds


def test_a_terminate_that_lands_while_a_worker_exits_stays_in_the_worker(cluster, backend):
    """SIGTERM raises an exception in a worker.  If it lands after user code, while the
    worker is on its way out, it must not unwind the forked child back into the
    postmaster's own code (where the child would mark the shared segment 'stopped' and
    every registrant would be told that the cluster is shutting down)."""
    from bgwlab import WorkerSpec

    h = backend.register_dynamic_worker(WorkerSpec(name="late-term", entry="reliability_helpers:sigterm_while_exiting"))
    assert h.wait_for_shutdown(timeout=LOST_WAIT_S).value == "stopped"
    (ex,) = events_of(cluster.events(), h.slot, h.generation, "exited")
    assert ex.detail["crash"] is False
    assert cluster.state() == "running"
    after = backend.register_dynamic_worker(make_spec("exit0"))  # not "the cluster is shutting down"
    assert after.wait_for_shutdown(timeout=LOST_WAIT_S).value == "stopped"
    assert not [e for e in cluster.events() if e.kind in ("postmaster_stopping", "postmaster_error")]
