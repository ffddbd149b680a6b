"""Shared fixtures: real clusters, and a leak check after every test.

The pytest process makes itself a child subreaper, so that workers orphaned by a
postmaster killed with SIGKILL are re-parented to it (not to pid 1, which on some
machines never reaps) and the leak check can see and reap them.
"""

from __future__ import annotations

import os
import time

import psutil
import pytest

from bgwlab.latch import dispatcher
from bgwlab.procinfo import set_child_subreaper


def pytest_configure(config):
    set_child_subreaper(True)
    dispatcher.install()  # once per process: its two fds are not a per-test leak


def wait_until(predicate, timeout: float = 5.0, what: str = "condition", interval: float = 0.002):
    """Poll observable state until `predicate()` is truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def reap_zombie_children() -> list[int]:
    """Reap children that have exited (e.g. adopted orphans).  Returns their pids."""
    reaped = []
    for child in psutil.Process().children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(child.pid, os.WNOHANG)
                reaped.append(child.pid)
        except (psutil.NoSuchProcess, ChildProcessError):
            pass
    return reaped


def open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


@pytest.fixture(autouse=True)
def no_leaks(request):
    """After every test: no child process (live or zombie) and no new fd is left behind."""
    fds_before = open_fds()
    children_before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    if request.node.get_closest_marker("allow_leaks"):
        return

    def settled():
        reap_zombie_children()
        now = {p.pid for p in psutil.Process().children(recursive=True)}
        return not (now - children_before)

    try:
        wait_until(settled, timeout=10, what="child processes to exit")
    except AssertionError:
        left = [(p.pid, p.name(), p.status()) for p in psutil.Process().children(recursive=True)
                if p.pid not in children_before]
        for p in psutil.Process().children(recursive=True):
            if p.pid not in children_before:
                p.kill()
        reap_zombie_children()
        pytest.fail(f"test left child processes behind: {left}")
    import gc

    gc.collect()
    leaked = open_fds() - fds_before
    # /proc/self/fd listing itself may show a transient fd; re-check once.
    leaked = {fd for fd in leaked if os.path.exists(f"/proc/self/fd/{fd}")} - fds_before
    if leaked:
        targets = {}
        for fd in leaked:
            try:
                targets[fd] = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                pass
        if targets:
            pytest.fail(f"test leaked file descriptors: {targets}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"_bgwlab_{report.when}_failed", report.failed)
    return report


@pytest.fixture(autouse=True)
def keep_evidence_of_failures(request, monkeypatch):
    """A failed test keeps the evidence of the clusters it started -- event log and
    postmaster output, written to a directory that is not removed -- and its report shows
    them; a passed test leaves nothing.

    ``Cluster.stop()`` still removes the cluster's own directory (tests check that): the
    evidence is read just before.  Set up after module-scoped fixtures, so only clusters
    started by the test itself (and its function-scoped fixtures) are covered.
    """
    import shutil

    from bgwlab import cluster as cluster_mod

    started = []
    real_start = cluster_mod.Cluster.start.__func__
    real_stop = cluster_mod.Cluster.stop

    def start(cls, *args, **kwargs):
        c = real_start(cls, *args, **kwargs)
        started.append(c)
        return c

    def stop(self, *args, **kwargs):
        keep, self.keep_directory = self.keep_directory, True
        try:
            real_stop(self, *args, **kwargs)
        finally:
            self.keep_directory = keep
            if not hasattr(self, "_evidence_log"):
                try:
                    self._evidence_log = (self.directory / "postmaster.log").read_text(errors="replace")
                except OSError as e:
                    self._evidence_log = f"(unreadable: {e})"
            if self._owns_directory and not keep:
                shutil.rmtree(self.directory, ignore_errors=True)

    monkeypatch.setattr(cluster_mod.Cluster, "start", classmethod(start))
    monkeypatch.setattr(cluster_mod.Cluster, "stop", stop)
    yield
    failed = getattr(request.node, "_bgwlab_call_failed", False) or getattr(
        request.node, "_bgwlab_setup_failed", False)
    for c in started:
        if not c._stopped:
            c.stop()
        if failed:
            report_cluster(c, request.node.name)


def report_cluster(c, test_name: str) -> None:
    """Write a failed test's cluster evidence to a kept directory and print it."""
    import re
    import sys
    import tempfile
    from pathlib import Path

    from bgwlab.events import format_events, write_jsonl

    keep = Path(tempfile.gettempdir()) / "bgwlab-evidence" / re.sub(r"[^\w.-]", "_", test_name) / c.directory.name
    keep.mkdir(parents=True, exist_ok=True)
    events = c.events()
    write_jsonl(events, keep / "events.jsonl")
    log = getattr(c, "_evidence_log", "")
    (keep / "postmaster.log").write_text(log)
    sys.stderr.write(f"\n=== bgwlab cluster {c.directory}: evidence kept in {keep}\n"
                     f"--- event log ({len(events)} events; the last 200)\n"
                     f"{format_events(events[-200:])}\n--- postmaster.log (tail)\n{log[-4000:]}\n")


@pytest.fixture
def cluster():
    from bgwlab import Cluster

    c = Cluster.start(max_workers=8)
    try:
        yield c
    finally:
        c.stop()
        assert not c.alive


@pytest.fixture
def backend(cluster):
    b = cluster.connect()
    yield b
    b.detach()
