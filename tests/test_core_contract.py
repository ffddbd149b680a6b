"""Parts of the public contract that no other test exercises: exit 0 of a restartable
worker, timed-out waits on a live worker, the backend table's limit, dead clusters,
detached and inherited backends, the first attach from a thread, ``log_events=False``
and ``worker.current()``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bgwlab import (BgwError, Cluster, HandleStatus, NotACluster, PostmasterDied, TooManyBackends,
                    WorkerSpec, attach, worker)

from conftest import wait_until
from worker_entries import report_path

STARTED, STOPPED, NOT_YET = HandleStatus.STARTED, HandleStatus.STOPPED, HandleStatus.NOT_YET_STARTED
FOREVER = WorkerSpec(name="forever", entry="bgwlab.examples:sleep_forever")


@pytest.fixture(scope="module")
def shared():
    """One cluster for the tests that only register, wait and terminate their own workers."""
    c = Cluster.start(max_workers=4, max_backends=4)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def b(shared):
    backend = shared.connect()
    try:
        yield backend
    finally:
        backend.detach()


def history_until(h, kind, timeout=10.0):
    """h.history() once it holds an event of `kind` (the postmaster logs after it signals)."""
    return wait_until(lambda: (lambda ev: ev if any(e.kind == kind for e in ev) else None)(h.history()),
                      timeout=timeout, what=f"a {kind} event for {h}")


def test_restartable_worker_that_exits_0_is_unregistered_not_restarted(shared, b):
    """exit 0 means done whatever the restart policy (with NEVER_RESTART, 0 and 1 look alike)."""
    h = b.register_dynamic_worker(WorkerSpec(name="done", entry="worker_entries:count_runs_then_exit0",
                                             restart=0))
    assert h.wait_for_shutdown(timeout=30) is STOPPED
    ev = history_until(h, "unregistered")
    assert [e.detail["exit_code"] for e in ev if e.kind == "exited"] == [0], h.explain()
    assert [e.detail["reason"] for e in ev if e.kind == "unregistered"] == ["exit 0"]
    assert [e.kind for e in ev].count("forked") == 1
    assert "restart_scheduled" not in [e.kind for e in ev]
    runs = (shared.directory / f"runs-{h.slot}-{h.generation}").read_text().split()
    assert len(runs) == 1
    assert b.seg.in_use(h.slot) == 0  # the slot is free: nothing is left to restart


def test_exit1_of_a_restartable_worker_is_restarted_but_terminate_ends_it_for_good(shared, b):
    """restart=0: an exit 1 comes back at once; after terminate() the same exit 1 is final."""
    h = b.register_dynamic_worker(WorkerSpec(name="again", entry="bgwlab.examples:fail_then_run",
                                             main_arg=3_600_000, restart=0))
    # the first run fails on purpose, the second sleeps an hour
    wait_until(lambda: [e.kind for e in h.history()].count("reached_main") == 2, timeout=30,
               what="the restarted run to reach user code")
    status, pid = h.get_pid()
    assert status is STARTED
    h.terminate()
    assert h.wait_for_shutdown(timeout=30) is STOPPED
    ev = history_until(h, "unregistered")
    exits = [e for e in ev if e.kind == "exited"]
    assert [e.detail["exit_code"] for e in exits] == [1, 1], h.explain()  # error, then SIGTERM
    assert exits[1].detail["worker_pid"] == pid
    assert [e.kind for e in ev].count("forked") == 2  # no third run after the terminate
    assert [e.detail["reason"] for e in ev if e.kind == "unregistered"] == ["terminated"]


def test_wait_for_shutdown_timeout_on_a_live_worker_returns_started(shared, b):
    h = b.register_dynamic_worker(FOREVER)
    status, pid = h.wait_for_startup(timeout=30)
    assert status is STARTED
    t0 = time.monotonic()
    assert h.wait_for_shutdown(timeout=0.1) is STARTED  # the current status, not STOPPED
    assert time.monotonic() - t0 >= 0.1  # it waited its timeout out (a lower bound only)
    assert h.get_pid() == (STARTED, pid)
    woke = [e for e in h.history() if e.kind == "woke" and e.detail["wait"] == "shutdown"]
    assert [e.detail["status"] for e in woke] == ["started"]
    h.terminate()
    assert h.wait_for_shutdown(timeout=30) is STOPPED


def test_too_many_backends_then_a_freed_entry_is_reused(shared, b):
    # `b` holds one of the 4 entries; the module's other tests have detached theirs
    others = [shared.connect() for _ in range(3)]
    try:
        with pytest.raises(TooManyBackends, match="max_backends"):
            shared.connect()
        freed = others[1].index
        others[1].detach()
        again = shared.connect()
        others.append(again)
        assert again.index == freed  # the only free entry
        h = again.register_dynamic_worker(WorkerSpec(name="n", entry="bgwlab.examples:noop"))
        assert h.wait_for_shutdown(timeout=30) is STOPPED
    finally:
        for o in others:
            o.detach()


def test_detached_backend_refuses_every_call(shared):
    backend = shared.connect()
    h = backend.register_dynamic_worker(FOREVER)
    assert h.wait_for_startup(timeout=30)[0] is STARTED
    slot, gen = h.slot, h.generation
    backend.detach()
    assert not backend.attached
    with pytest.raises(BgwError, match="detached"):
        backend.register_dynamic_worker(FOREVER)
    with pytest.raises(BgwError, match="detached"):
        h.get_pid()
    with pytest.raises(BgwError, match="detached"):
        h.terminate()
    with pytest.raises(BgwError, match="detached"):
        h.wait_for_startup(timeout=1)
    backend.detach()  # idempotent
    # the worker outlives its registrant's detach; another backend stops it
    other = shared.connect()
    try:
        assert other.handle(slot, gen).get_pid()[0] is STARTED
        other.handle(slot, gen).terminate()
        assert other.handle(slot, gen).wait_for_shutdown(timeout=30) is STOPPED
    finally:
        other.detach()


def test_backend_inherited_by_a_forked_child_refuses_and_leaves_the_parent_attached(shared, b):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what each call did, then leave without cleanup
        out = {}
        try:
            os.close(r)
            for name, call in (("register", lambda: b.register_dynamic_worker(FOREVER)),
                               ("handle_terminate", lambda: b.handle(0, 1).terminate())):
                try:
                    call()
                    out[name] = "no error"
                except BgwError as e:
                    out[name] = str(e)
            b.detach()  # must not free the parent's entry
            out["attached"] = b.attached
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        out = json.loads(f.read() or "{}")
    _, st = os.waitpid(pid, 0)
    assert os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0
    assert "another process" in out["register"] and "another process" in out["handle_terminate"], out
    # the parent's entry is intact: it is still attached, and it still gets notified
    in_use, entry_pid, _, _ = b.seg.backend(b.index)
    assert in_use and entry_pid == os.getpid()
    h = b.register_dynamic_worker(FOREVER)
    assert h.wait_for_startup(timeout=30)[0] is STARTED
    h.terminate()
    assert h.wait_for_shutdown(timeout=30) is STOPPED
    assert any(e.kind == "notified" for e in h.history())


def test_attach_to_a_dead_or_stopped_cluster_is_a_clear_error():
    c = Cluster.start(max_workers=2)
    try:
        c.kill_postmaster()
        wait_until(lambda: not c.alive, what="the postmaster to die")
        with pytest.raises(PostmasterDied, match="not running"):
            attach(c.directory)
        with pytest.raises(PostmasterDied):
            c.connect()
        assert c.state() == "dead"
    finally:
        c.stop()
    with pytest.raises(NotACluster):
        attach(c.directory)
    with pytest.raises(BgwError, match="stopped"):
        c.connect()


FIRST_ATTACH_IN_A_THREAD = r"""
import json, sys, threading
import bgwlab
from bgwlab.latch import dispatcher
out = {}
with bgwlab.Cluster.start(max_workers=2) as c:
    def attach_in_thread(key):
        try:
            b = bgwlab.attach(c.directory)
            h = b.register_dynamic_worker(bgwlab.WorkerSpec(name="t", entry="bgwlab.examples:noop"))
            out[key] = h.wait_for_shutdown(timeout=30).name
            b.detach()
        except bgwlab.BgwError as e:
            out[key] = "BgwError: " + str(e)
    t = threading.Thread(target=attach_in_thread, args=("first",)); t.start(); t.join()
    out["installed_after_first"] = dispatcher._installed
    main = c.connect()                    # the main thread installs the signal handling ...
    t = threading.Thread(target=attach_in_thread, args=("after_main",)); t.start(); t.join()
    main.detach()                         # ... then any thread may attach
print(json.dumps(out))
"""


def test_first_attach_from_a_thread_raises_and_says_what_to_do():
    out = subprocess.run([sys.executable, "-c", FIRST_ATTACH_IN_A_THREAD], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["first"].startswith("BgwError") and "main thread" in res["first"], res
    assert res["installed_after_first"] is False
    assert res["after_main"] == "STOPPED", res


def test_log_events_false_records_nothing_and_changes_nothing_else(tmp_path):
    d = tmp_path / "quiet"
    with Cluster.start(max_workers=2, directory=d, log_events=False) as c:
        quiet = c.connect(log_events=False)
        h = quiet.register_dynamic_worker(WorkerSpec(name="q", entry="worker_entries:report", main_arg=7))
        assert h.wait_for_shutdown(timeout=30) is STOPPED
        report = json.loads(Path(report_path(c.directory, h.slot, h.generation)).read_text())
        assert report["main_arg"] == 7  # the worker ran
        assert c.events() == []
        loud = c.connect()  # a backend may still log on its own
        h2 = loud.register_dynamic_worker(WorkerSpec(name="l", entry="bgwlab.examples:noop"))
        assert h2.wait_for_shutdown(timeout=30) is STOPPED
        assert {e.source for e in c.events()} == {"backend"}
        assert {e.kind for e in c.events()} >= {"registered", "woke"}
    assert {e.source for e in c.events()} == {"backend"}  # nothing from postmaster or worker


def test_worker_current_outside_a_worker_is_an_error_and_inside_names_the_worker(shared, b):
    with pytest.raises(RuntimeError, match="only inside a background worker"):
        worker.current()
    h = b.register_dynamic_worker(WorkerSpec(name="me", entry="worker_entries:report_then_sleep",
                                             main_arg=-5, extra=b"\x01\x02"))
    status, pid = h.wait_for_startup(timeout=30)
    assert status is STARTED
    path = Path(report_path(shared.directory, h.slot, h.generation))
    wait_until(path.exists, timeout=30, what="the worker's report")
    got = json.loads(path.read_text())
    assert (got["name"], got["main_arg"], bytes.fromhex(got["extra"])) == ("me", -5, b"\x01\x02")
    assert (got["slot"], got["generation"], got["pid"]) == (h.slot, h.generation, pid)
    h.terminate()
    assert h.wait_for_shutdown(timeout=30) is STOPPED
