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


def value_in_child(fn) -> str:
    """What `fn()` returns (str) in a child forked from here, reported through a pipe; the
    child is reaped before this returns."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(w, str(fn()).encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        return os.read(r, 4096).decode()
    finally:
        os.close(r)
        os.waitpid(pid, 0)


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


def _fd_target(fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


# Files a library keeps open for the life of the process by design, not per test:
# matplotlib's FreeType keeps every font file it has drawn with open (per thread).
PROCESS_LIFETIME_FILES = (".ttf", ".otf", ".afm", ".pfb", ".ttc")


def leaks_since(fds_before: set[int], children_before: set[int], what: str) -> list[str]:
    """What appeared since the snapshot and is still there: child processes (waited for up
    to 10 s, then killed and reaped) and open fds.  Returns the complaints (empty: clean)."""
    problems = []

    def settled():
        reap_zombie_children()
        now = {p.pid for p in psutil.Process().children(recursive=True)}
        return not (now - children_before)

    try:
        wait_until(settled, timeout=10, what="child processes to exit")
    except AssertionError:
        left = []
        for p in psutil.Process().children(recursive=True):
            if p.pid not in children_before:
                try:
                    left.append((p.pid, p.name(), p.status(), " ".join(p.cmdline())[:200]))
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
        reap_zombie_children()
        problems.append(f"{what} left child processes behind: {left}")
    import gc

    gc.collect()
    leaked = {fd: _fd_target(fd) for fd in open_fds() - fds_before}
    # the /proc/self/fd listing itself shows a transient fd (gone by the readlink)
    leaked = {fd: t for fd, t in leaked.items()
              if t is not None and not t.endswith(PROCESS_LIFETIME_FILES)}
    if leaked:
        problems.append(f"{what} leaked file descriptors: {leaked}")
    return problems


def latch_problems(latches_before: set, what: str) -> list[str]:
    """Latches registered with the process's SIGUSR1 dispatcher since the snapshot and
    still there: a waiter that never ended (it would also be woken by later tests'
    signals, and count in their checks of the dispatcher)."""
    def settled():
        return not (set(dispatcher._latches) - latches_before)

    try:
        wait_until(settled, timeout=5, what="waiters to end")
    except AssertionError:
        n = len(set(dispatcher._latches) - latches_before)
        return [f"{what} left {n} waiter(s) registered with the signal dispatcher"]
    return []


@pytest.fixture(scope="module", autouse=True)
def no_module_leaks(request):
    """After every module: what its module-scoped fixtures (and tests) left behind.

    Autouse fixtures are set up first within their scope, so this snapshot is taken
    before any module-scoped fixture of the module starts a cluster, a runner or a
    kernel, and checked after the last of them is torn down.  The per-test check below
    cannot see those: their processes and fds already exist when it takes its snapshot.
    """
    fds_before = open_fds()
    children_before = {p.pid for p in psutil.Process().children(recursive=True)}
    latches_before = set(dispatcher._latches)
    yield
    what = f"module {request.module.__name__} (its module-scoped fixtures included)"
    problems = leaks_since(fds_before, children_before, what)
    problems += latch_problems(latches_before, what)
    if problems:
        pytest.fail("; ".join(problems))


@pytest.fixture(autouse=True)
def no_leaks(request):
    """After every test: no child process (live or zombie), no new fd and no registered
    latch is left behind."""
    fds_before = open_fds()
    children_before = {p.pid for p in psutil.Process().children(recursive=True)}
    latches_before = set(dispatcher._latches)
    yield
    if request.node.get_closest_marker("allow_leaks"):
        return
    problems = leaks_since(fds_before, children_before, "test")
    problems += latch_problems(latches_before, "test")
    if problems:
        pytest.fail("; ".join(problems))


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


def our_segments(names) -> set:
    """The /dev/shm segments among `names` that this test run made: their leader is this
    process or a descendant, or is gone (a leader a test killed).  /dev/shm is the
    machine's: the live segments of another run on the same machine are not ours."""
    from bgwlab.parallel import dsm

    me = psutil.Process()
    family = {me.pid} | {p.pid for p in me.children(recursive=True)}
    return {n for n in names if (lambda pid: pid in family or not psutil.pid_exists(pid))(dsm.parse_name(n)[0])}
