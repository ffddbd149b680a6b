"""The postmaster's two fork paths (bgwlab/forkpath.py): the Python reference and the C one.

Both must do the same thing -- fork, publish the pid, signal the registrant, run the
interpreter's at-fork hooks, fail a refused fork as os.fork() does -- and the choice must
be visible (cluster.fork_path, the postmaster_started event) and refused early when "c"
cannot be had.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import psutil
import pytest

from bgwlab import NEVER_RESTART, Cluster, ForkPathUnavailable, HandleStatus, WorkerSpec
from bgwlab import forkpath
from bgwlab.pg.cgroup import cgroup_available, pids_limit

from conftest import wait_until

STARTED, STOPPED = HandleStatus.STARTED, HandleStatus.STOPPED


def _c_available() -> str:
    try:
        forkpath.build()
    except ForkPathUnavailable as e:
        return str(e)
    return ""


C_WHY_NOT = _c_available()  # (make test installs gcc: in CI the C path is always tested)
needs_c = pytest.mark.skipif(bool(C_WHY_NOT), reason=f"no C fork path here: {C_WHY_NOT}")
PATHS = (pytest.param("c", marks=needs_c), "python")
ATFORK_LOG = "BGWLAB_TEST_ATFORK_LOG"  # read by forkpath_preload.py, in the postmaster


def _started_event(cluster):
    (ev,) = [e for e in cluster.events() if e.kind == "postmaster_started"]
    return ev


def _mine(cluster, h):
    return [e for e in cluster.events() if e.slot == h.slot and e.generation == h.generation]


@pytest.mark.parametrize("path", PATHS)
def test_both_paths_fork_publish_the_pid_and_notify(path):
    with Cluster.start(max_workers=4, fork_path=path) as c:
        assert c.fork_path == path and c.fork_path_note == ""
        assert _started_event(c).detail["fork_path"] == path
        b = c.connect()
        try:
            for _ in range(5):
                h = b.register_dynamic_worker(WorkerSpec(
                    name="w", entry="bgwlab.examples:sleep_forever", restart=NEVER_RESTART))
                status, pid = h.wait_for_startup(timeout=10)
                assert status is STARTED and pid > 0
                assert psutil.Process(pid).ppid() == c.postmaster_pid  # the published pid is the child
                evs = wait_until(lambda: (lambda ev: ev if {"forked", "notified"} <= {e.kind for e in ev}
                                          else None)(_mine(c, h)), what="forked and notified logged")
                (forked,) = [e for e in evs if e.kind == "forked"]
                (notified,) = [e for e in evs if e.kind == "notified"]
                assert forked.detail["worker_pid"] == pid
                assert notified.detail["target_pid"] == os.getpid()
                assert forked.t_ns <= notified.t_ns  # the pid was there before the signal
                h.terminate()
                assert h.wait_for_shutdown(timeout=10) is STOPPED
        finally:
            b.detach()


@pytest.mark.parametrize("path", PATHS)
def test_both_paths_run_the_interpreters_at_fork_hooks(path, tmp_path, monkeypatch):
    """os.register_at_fork's before / after_in_parent / after_in_child hooks run once per
    fork on both paths (the C one calls PyOS_BeforeFork / _AfterFork_Parent / _Child)."""
    log = tmp_path / "atfork.log"
    monkeypatch.setenv(ATFORK_LOG, str(log))
    with Cluster.start(max_workers=4, fork_path=path, preload=("bgwlab.examples", "forkpath_preload")) as c:
        b = c.connect()
        try:
            pids = []
            for _ in range(3):
                h = b.register_dynamic_worker(WorkerSpec(name="w", entry="bgwlab.examples:noop",
                                                         restart=NEVER_RESTART))
                status, pid = h.wait_for_startup(timeout=10)
                assert h.wait_for_shutdown(timeout=10) is STOPPED
                pids.append(pid)
        finally:
            b.detach()
    lines = log.read_text().split()
    pm = str(c.postmaster_pid)
    assert lines.count(f"before:{pm}") == 3 and lines.count(f"parent:{pm}") == 3, lines
    assert sorted(x for x in lines if x.startswith("child:")) == sorted(f"child:{p}" for p in pids if p)


CGROUP_OK, CGROUP_WHY = cgroup_available()


@pytest.mark.skipif(not CGROUP_OK, reason=f"genuine fork failures need a pids cgroup: {CGROUP_WHY}")
@pytest.mark.parametrize("path", PATHS)
def test_both_paths_fail_a_refused_fork_and_carry_on(path):
    with Cluster.start(max_workers=4, fork_path=path) as c:
        b = c.connect()
        try:
            spec = WorkerSpec(name="g", entry="bgwlab.examples:noop", restart=NEVER_RESTART)
            with pids_limit(c.postmaster_pid):
                h = b.register_dynamic_worker(spec)
                assert h.wait_for_startup(timeout=10) == (STOPPED, None)
            evs = wait_until(lambda: (lambda ev: ev if any(e.kind == "fork_failed" for e in ev)
                                      else None)(_mine(c, h)), what="fork_failed logged")
            (failed,) = [e for e in evs if e.kind == "fork_failed"]
            assert failed.detail["errno"] == 11 and failed.detail["injected"] is False
            h2 = b.register_dynamic_worker(spec)  # the limit is gone: the next one starts
            assert h2.wait_for_startup(timeout=10)[0] is STARTED
            assert h2.wait_for_shutdown(timeout=10) is STOPPED
        finally:
            b.detach()


def test_an_unknown_fork_path_is_refused_before_anything_starts():
    before = set(psutil.Process().children())
    with pytest.raises(ValueError, match="fork_path"):
        Cluster.start(fork_path="fast")
    assert set(psutil.Process().children()) == before


@pytest.mark.parametrize("cc", ["/nonexistent/cc", "false"])
def test_c_without_a_working_compiler_is_refused_and_auto_says_why(cc, tmp_path, monkeypatch):
    monkeypatch.setenv("BGWLAB_CACHE_DIR", str(tmp_path / "cache"))  # nothing built there yet
    monkeypatch.setenv("CC", cc)
    import tempfile

    before = set(psutil.Process().children())
    dirs = set(Path(tempfile.gettempdir()).glob("bgwlab-*"))
    with pytest.raises(ForkPathUnavailable, match="not found|failed"):
        Cluster.start(fork_path="c")
    assert set(psutil.Process().children()) == before  # refused before a postmaster started
    assert set(Path(tempfile.gettempdir()).glob("bgwlab-*")) == dirs  # and its directory gone
    with Cluster.start(fork_path="auto", directory=tmp_path / "c2") as c:
        assert c.fork_path == "python"
        assert "compiler" in c.fork_path_note or "failed" in c.fork_path_note
        ev = _started_event(c)
        assert ev.detail["fork_path"] == "python" and ev.detail["fork_path_note"]
        b = c.connect()
        try:  # and the Python path works
            h = b.register_dynamic_worker(WorkerSpec(name="w", entry="bgwlab.examples:noop",
                                                     restart=NEVER_RESTART))
            assert h.wait_for_startup(timeout=10)[0] in (STARTED, STOPPED)
            assert h.wait_for_shutdown(timeout=10) is STOPPED
        finally:
            b.detach()


@needs_c
def test_the_build_is_cached_once_per_source(tmp_path, monkeypatch):
    monkeypatch.setenv("BGWLAB_CACHE_DIR", str(tmp_path))
    d = forkpath.build()
    built = list(d.iterdir())
    import sysconfig

    assert [p.name for p in built] == [forkpath.MODULE + sysconfig.get_config_var("EXT_SUFFIX")]  # (no temp file left)
    mtime = built[0].stat().st_mtime_ns
    assert forkpath.build() == d and built[0].stat().st_mtime_ns == mtime  # not compiled again


@needs_c
def test_bad_arguments_fork_nothing(tmp_path, monkeypatch):
    """The C function checks its arguments before fork(): a wrong view or word raises here,
    in this (test) process, and no child appears."""
    import importlib.util

    monkeypatch.setenv("BGWLAB_CACHE_DIR", str(tmp_path))
    d = forkpath.build()
    (so,) = d.glob(forkpath.MODULE + "*")
    spec = importlib.util.spec_from_file_location(forkpath.MODULE, so)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    fn = mod.fork_publish_notify
    words = memoryview(bytearray(64)).cast("i")
    before = set(psutil.Process().children())
    with pytest.raises(IndexError):
        fn(words, 16, -1, 10)
    with pytest.raises(IndexError):
        fn(words, -1, -1, 10)
    with pytest.raises(TypeError):
        fn(memoryview(bytearray(64)).cast("I"), 0, -1, 10)  # unsigned: not the pid field's type
    with pytest.raises((TypeError, BufferError)):
        fn(memoryview(bytes(64)).cast("i"), 0, -1, 10)  # read-only
    with pytest.raises(TypeError):
        fn(words, 0, -1)
    assert set(psutil.Process().children()) == before
    assert bytes(words.cast("B")) == bytes(64)  # nothing published


def test_a_start_that_raises_neither_spins_nor_strands_its_registrant(tmp_path, monkeypatch):
    """A bug in the start path (here: start_worker made to raise for workers named "bug",
    by forkpath_preload.py) is logged; the worker is a failed start (STOPPED), and the
    postmaster goes on starting the others."""
    monkeypatch.setenv("BGWLAB_TEST_RAISE_ON", "bug")
    with Cluster.start(max_workers=4, preload=("bgwlab.examples", "forkpath_preload")) as c:
        b = c.connect()
        try:
            h = b.register_dynamic_worker(WorkerSpec(name="bug", entry="bgwlab.examples:noop",
                                                     restart=NEVER_RESTART))
            assert h.wait_for_startup(timeout=10) == (STOPPED, None)
            errors = [e for e in _mine(c, h) if e.kind == "postmaster_error"]
            assert errors and "RuntimeError" in errors[0].detail["error"]
            assert any(e.kind == "unregistered" and "start failed" in e.detail["reason"] for e in _mine(c, h))
            ok = b.register_dynamic_worker(WorkerSpec(name="ok", entry="bgwlab.examples:noop",
                                                      restart=NEVER_RESTART))
            assert ok.wait_for_startup(timeout=10)[0] in (STARTED, STOPPED)
            assert ok.wait_for_shutdown(timeout=10) is STOPPED
            # not spinning: the postmaster sleeps now (its state, not a fixed sleep)
            wait_until(lambda: psutil.Process(c.postmaster_pid).status() == psutil.STATUS_SLEEPING,
                       what="the postmaster asleep")
        finally:
            b.detach()
    assert sys.modules.get("forkpath_preload") is None  # (loaded only in the postmaster)


@pytest.mark.skipif(not os.environ.get("CI"), reason="CI only: elsewhere a machine may lack a compiler")
def test_ci_tests_the_c_path():
    """In CI (make test installs gcc) the C path's tests must run, not skip."""
    assert C_WHY_NOT == "", C_WHY_NOT
