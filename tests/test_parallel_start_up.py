"""A parallel worker's start-up, made cheaper without changing what it does: a postmaster
that preloads the worker's side rehearses the worker's path in its image (on a private
mapping: nothing outside it is made or left open), which needs a worker's latch to open
its FIFO at its first wait, not when it is made (a setter owes it no byte before)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bgwlab.parallel import ParallelContext, dsm
from bgwlab.parallel import latch as L
from bgwlab.parallel import worker as W
from bgwlab.parallel.latch import (W_IS_SET, W_MAYBE_SLEEPING, Peer, SharedLatch, WorkerLatch,
                                   create_latches)
from bgwlab.procinfo import start_ticks
from parallel_support import cluster_and_backend, no_segment_left  # noqa: F401

DEADLINE = 20.0  # seconds: only ever reached when a wakeup was lost
REC0, REC1 = 64, 64 + L.LATCH_SIZE

pytestmark = pytest.mark.skipif(not L.FENCED, reason="lazy FIFOs and the rehearsal need FENCED")


@pytest.fixture
def seg():
    s = dsm.Segment.create(4096)
    create_latches(s, REC0, 2)
    yield s
    s.destroy()


def fifo_fds(name: str) -> list[str]:
    """Our fds open on /dev/shm/<name>."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").endswith("/" + name):
                out.append(fd)
        except OSError:
            pass
    return out


def test_a_worker_latch_opens_its_fifo_at_its_first_wait_and_is_woken_there(seg):
    """Until it waits, the owner's record says it is awake: a set stores is_set and writes
    nothing, and the FIFO is not open.  Its first wait that may sleep opens it before it
    says so, and a setter in another process then wakes it with one byte."""
    me = WorkerLatch(seg.buf, REC1)
    rec = memoryview(seg.buf)[REC1:REC1 + 16].cast("Q")
    parent, parent_start = os.getpid(), start_ticks(os.getpid())
    pid = -1
    try:
        assert me.fd == -1 and fifo_fds(me.name) == []
        own = Peer(parent, parent_start, seg.buf, REC1)  # a setter of our own latch
        own.set_latch()
        own.close()
        assert rec[W_IS_SET] == 1 and me.fd == -1  # set, and no byte owed: nobody may sleep
        assert me.wait(timeout=DEADLINE) == [] and me.fd == -1  # set: no sleep, no FIFO
        me.reset()
        pid = os.fork()
        if pid == 0:  # the setter: once the owner says it may sleep, set its latch
            code = 1
            try:
                cw = memoryview(seg.buf)[REC1:REC1 + 16].cast("Q")
                end = time.monotonic() + DEADLINE
                while not cw[W_MAYBE_SLEEPING] and time.monotonic() < end:
                    pass
                p = Peer(parent, parent_start, seg.buf, REC1)
                p.set_latch()
                code = 0 if p.woken else 2  # it wrote the FIFO
            finally:
                os._exit(code)
        t0 = time.monotonic()
        me.wait(timeout=DEADLINE)
        assert time.monotonic() - t0 < DEADLINE / 2, "the first wait was not woken"
        assert me.fd >= 0 and fifo_fds(me.name) != [] and rec[W_IS_SET] == 1
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        pid = -1
    finally:
        if pid > 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        rec.release()
        name = me.name
        me.close()
    assert fifo_fds(name) == []


def test_an_eager_latch_still_opens_its_fifo_at_once(seg):
    """The leader's latch (and any SharedLatch) is not lazy: its FIFO is open when made."""
    me = SharedLatch(seg.buf, REC0)
    try:
        assert me.fd >= 0 and fifo_fds(me.name) != []
    finally:
        me.close()
    assert me.fd == -1


def test_the_rehearsal_leaves_nothing_behind():
    """Run in this process: it makes and opens no file, FIFO or segment name, and holds
    no fd afterwards."""
    fds = sorted(os.listdir("/proc/self/fd"))
    names = dsm.list_segments()
    before = W.rehearsed
    W._rehearse(2)
    assert W.rehearsed == before + 2
    assert sorted(os.listdir("/proc/self/fd")) == fds
    assert dsm.list_segments() == names


@pytest.mark.parametrize("postmaster", [True, False], ids=["postmaster", "leader"])
def test_only_a_postmaster_rehearses_at_import(postmaster):
    """Importing the worker's side rehearses in a process that has the postmaster loaded
    (a postmaster preloading it), not in a leader."""
    code = ("import sys; " + ("import bgwlab.postmaster; " if postmaster else "")
            + "import bgwlab.parallel.worker as W; print(W.rehearsed, W.REHEARSALS)")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         check=True, cwd=str(Path(__file__).parent.parent))
    done, planned = map(int, out.stdout.split())
    assert done == (planned if postmaster else 0)


def test_workers_of_a_rehearsed_image_attach_send_and_finish():
    """A cluster whose postmaster preloads (and so rehearsed) the worker's side: its
    workers attach, send and finish as any."""
    gen = cluster_and_backend(4)
    _c, b = next(gen)
    try:
        for _ in range(2):
            with ParallelContext(b, "bgwlab.parallel.examples:first_message", nworkers=4) as pcxt:
                assert pcxt.launch() == 4
                pcxt.wait_for_attach()
                assert sorted(n for n, _m in pcxt.messages()) == [0, 1, 2, 3]
                pcxt.wait_for_finish()
    finally:
        gen.close()
