"""Issue 16's wrong STOPPED: a field another process reads is written with one store.

CPython's ``struct.pack_into`` zeroes a field before storing its value.  The postmaster
writes ``pid = -1`` when it accepts a request; a registrant whose first look fell in that
instant read pid 0 and reported STOPPED for a worker that then started.  These tests put
a real writer process on the live fields of a real cluster's segment, rewriting each with
the value it already holds (as the postmaster's crash-recovery and slot-repair paths do),
while this process reads the handle as fast as it can.  With ``pack_into`` the reader
sees STOPPED within milliseconds (about 1 read in 20 on this machine, with both processes
on a CPU of their own); with one store it never may.
"""

from __future__ import annotations

import os
import struct
import time

import pytest

from bgwlab import WorkerSpec, shmem
from bgwlab.backend import NOT_YET_STARTED, STARTED, STOPPED

READS = 1_000_000  # the engine test's budget: bounded by count, not by time


def _writer(path: str, slot: int, gen: int, pid: int, store) -> None:
    """Child: rewrite the slot's live fields with their current values until killed."""
    try:
        seg = shmem.Segment(path)
        while True:
            for _ in range(1000):
                store(seg, slot, gen, pid)
    finally:
        os._exit(1)


def _engine_store(seg, slot, gen, pid):
    seg.set_pid(slot, pid)
    seg.set_generation(slot, gen)
    seg.set_state(shmem.PM_RUNNING)


def _pack_into_store(seg, slot, gen, pid):  # what the accessors did before the fix
    struct.pack_into("<i", seg.mm, seg.layout.slot_off(slot) + shmem.PID_OFF, pid)


def _race(cluster, backend, store, *, reads_max, stop_at_first_wrong):
    """(reads made while the writer ran, wrong answers among them); worker and writer cleaned up."""
    h = backend.register_dynamic_worker(WorkerSpec("steady", "bgwlab.examples:sleep_forever"))
    status, pid = h.wait_for_startup(timeout=30)
    assert status is STARTED, h.explain()
    child = os.fork()
    if child == 0:
        _writer(str(cluster.directory / "shmem"), h.slot, h.generation, pid, store)
    reads = wrong = 0
    deadline = time.monotonic() + 60
    try:
        while reads < reads_max and time.monotonic() < deadline:
            for _ in range(1000):
                if h.get_pid() != (STARTED, pid):
                    wrong += 1
            reads += 1000
            if wrong and stop_at_first_wrong:
                break
        assert os.waitpid(child, os.WNOHANG) == (0, 0), "the writer died early"
    finally:
        os.kill(child, 9)
        os.waitpid(child, 0)
        h.terminate()
        assert h.wait_for_shutdown(timeout=30) is not STARTED
    return reads, wrong


def test_the_engine_never_shows_a_reader_a_transient_value(cluster, backend):
    reads, wrong = _race(cluster, backend, _engine_store, reads_max=READS, stop_at_first_wrong=False)
    assert reads >= 10_000, "the reader barely ran: the test proved nothing"
    assert wrong == 0, f"{wrong} of {reads} reads saw a value nobody meant (a torn or zeroed field)"


def test_the_race_is_real_pack_into_zeroes_first(cluster, backend):
    """The control: the same race with the old accessor does produce wrong STOPPEDs, so the
    test above would fail if the engine still wrote with pack_into."""
    from bgwlab.lab.load import usable_cpus

    if usable_cpus() < 2:
        pytest.skip("the race needs the writer and the reader on two CPUs at once")
    reads, wrong = _race(cluster, backend, _pack_into_store, reads_max=10**12, stop_at_first_wrong=True)
    assert wrong > 0, f"pack_into never showed a transient 0 in {reads} reads (60 s): the race test is blind"


def test_a_registrant_polling_from_its_registration_on_never_reads_stopped(backend):
    """End to end, the case of issue 16: the postmaster writes pid = -1 when it accepts the
    request and the pid when it forks, while the registrant polls get_pid().  The worker
    cannot stop by itself, so every answer before STARTED must be NOT_YET_STARTED.  (Before
    the fix, 91 of 2,000 such registrations read STOPPED first on this machine.)"""
    wrong = []
    for _ in range(300):
        h = backend.register_dynamic_worker(WorkerSpec("steady", "bgwlab.examples:sleep_forever"))
        deadline = time.monotonic() + 30
        while (answer := h.get_pid())[0] is NOT_YET_STARTED and time.monotonic() < deadline:
            pass
        if answer[0] is not STARTED:
            wrong.append((answer, h.explain()))
        h.terminate()
        assert h.wait_for_shutdown(timeout=30) is STOPPED
    assert not wrong, wrong[:3]


def test_closing_a_segment_unmaps_it_although_it_holds_typed_views(cluster):
    """The typed views export the mapping's buffer; close() must release them first, or
    mmap.close() fails (BufferError, swallowed) and the mapping stays for the process's life."""
    seg = shmem.Segment(str(cluster.directory / "shmem"))
    assert seg.state() == shmem.PM_RUNNING
    seg.close()
    assert seg.mm.closed
    with pytest.raises(ValueError):
        seg.pid(0)  # a released view, not a read of unmapped memory
    seg.close()  # idempotent
