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
