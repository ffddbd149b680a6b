"""Scale (issue 5, item 6): 1,024 slots, 32 concurrent registrants, bounded restart storms.

Correctness is asserted; costs are only *measured* and printed (``-s`` shows them; the
figures of record are in the issue's closing note): registration and wait-for-startup
costs at 8 / 64 / 256 / 1,024 slots with all but a few slots occupied, from 1
registrant and from 32 registrant processes at once.
"""

from __future__ import annotations

import errno
import os
import statistics
import threading
import time

import pytest

from bgwlab import Cluster, Fault, HandleStatus, OutOfWorkerSlots, WorkerSpec

from conftest import wait_until
from reliability_helpers import LOST_WAIT_S, RawSegment, finish, helper, make_spec, read_msg

STARTED, STOPPED = HandleStatus.STARTED, HandleStatus.STOPPED
ROUND_TRIPS = int(os.environ.get("BGWLAB_SCALE_ROUND_TRIPS", "15"))


def _ms(ns_list) -> dict:
    if not ns_list:
        return {}
    xs = sorted(ns_list)
    return {"median_ms": round(statistics.median(xs) / 1e6, 3),
            "p90_ms": round(xs[int(0.9 * (len(xs) - 1))] / 1e6, 3), "n": len(xs)}


def _round_trips(backend, n):
    reg, wait = [], []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        h = backend.register_dynamic_worker(make_spec("sleep5"))
        t1 = time.perf_counter_ns()
        s, pid = h.wait_for_startup(timeout=LOST_WAIT_S)
        t2 = time.perf_counter_ns()
        assert s is STARTED and pid > 0 or s is STOPPED  # a 5 ms worker may be over already
        assert h.wait_for_shutdown(timeout=LOST_WAIT_S) is STOPPED
        reg.append(t1 - t0)
        wait.append(t2 - t1)
    return reg, wait


def _fill(backend, n):
    return [backend.register_dynamic_worker(make_spec("parked")) for _ in range(n)]


def _release(held):
    for h in held:
        h.terminate()
    assert all(h.wait_for_shutdown(timeout=LOST_WAIT_S) is STOPPED for h in held)


@pytest.mark.parametrize("slots", [8, 64, 256, 1024])
def test_one_registrant_round_trips_with_almost_every_slot_taken(slots, capsys):
    """All but 4 slots hold registered workers; round trips through the rest work and
    the generation of every handle is fresh.  Prints the costs."""
    with Cluster.start(max_workers=slots, max_backends=64) as cluster:
        b = cluster.connect()
        held = _fill(b, slots - 4)
        assert len({h.slot for h in held}) == slots - 4
        reg, wait = _round_trips(b, ROUND_TRIPS)
        gens = [h.generation for h in held]
        assert len(set(gens)) == len(gens)
        _release(held)
        with RawSegment(cluster.directory) as raw:
            assert raw.used_slots() == []
        b.detach()
    with capsys.disabled():
        print(f"\nscale slots={slots} registrants=1 register {_ms(reg)} wait_for_startup {_ms(wait)}")


def test_1024_slots_32_concurrent_registrants(capsys):
    n_reg, per = 32, 32
    with Cluster.start(max_workers=1024, max_backends=64) as cluster:
        procs = [helper("scale_registrant", cluster.directory, ROUND_TRIPS, per) for _ in range(n_reg)]
        try:
            for p in procs:
                assert read_msg(p, timeout=120)["ready"]
            for p in procs:  # go: all at once
                p.stdin.write("go\n")
                p.stdin.flush()
            trips = [read_msg(p, timeout=300) for p in procs]
            assert all(t["errors"] == 0 for t in trips), trips
            for p in procs:  # fill: 32 x 32 = 1,024 slots from 32 processes at once
                p.stdin.write("fill\n")
                p.stdin.flush()
            fills = [read_msg(p, timeout=300) for p in procs]
            pairs = [tuple(x) for f in fills for x in f["filled"]]
            assert len(pairs) == 1024 and all(f["full"] == 0 for f in fills), [f["full"] for f in fills]
            assert len({s for s, _ in pairs}) == 1024  # every slot, each exactly once
            assert len({g for _, g in pairs}) == 1024  # generations never repeat
            me = cluster.connect()
            with pytest.raises(OutOfWorkerSlots):
                me.register_dynamic_worker(make_spec("exit0"))
            with RawSegment(cluster.directory) as raw:
                assert len(raw.used_slots()) == 1024
                for p in procs:
                    p.stdin.write("release\n")
                    p.stdin.flush()
                released = [read_msg(p, timeout=300)["released"] for p in procs]
                assert released == [per] * n_reg
                assert raw.used_slots() == []
            me.detach()
        finally:
            for p in procs:
                finish(p)
        assert cluster.alive
    reg = [x for t in trips for x in t["reg_ns"]]
    wait = [x for t in trips for x in t["wait_ns"]]
    with capsys.disabled():
        print(f"\nscale slots=1024 registrants={n_reg} register {_ms(reg)} wait_for_startup {_ms(wait)}")


STORMS = {
    "exit1": dict(entry="bgwlab.examples:fail"),
    "crash": dict(entry="bgwlab.examples:exit_with", main_arg=3),
    "fork_failure": dict(entry="bgwlab.examples:noop", fault=Fault.fork_failure(errno=errno.EAGAIN)),
}


@pytest.mark.parametrize("storm", sorted(STORMS))
def test_restart_storm_is_bounded_by_the_restart_interval(storm, capsys):
    """A worker that fails every time is restarted no sooner than `restart` seconds after
    each failure -- even while other registrations keep waking the postmaster.  A crash is
    the exception, as in PostgreSQL (ResetBackgroundWorkerCrashTimes): the worker starts
    again at once after each crash-restart cycle, which is what bounds that storm."""
    interval, attempts = 0.25, 5
    with Cluster.start(max_workers=8) as cluster:
        b = cluster.connect()
        h = b.register_dynamic_worker(WorkerSpec(name=f"storm-{storm}", restart=interval, **STORMS[storm]))

        def tried():
            return [e for e in cluster.events()
                    if e.kind == "fork_attempted" and (e.slot, e.generation) == (h.slot, h.generation)]

        stop = threading.Event()
        noise = []

        def keep_postmaster_busy():
            while not stop.is_set():  # the same backend: threads of a process may share it
                x = b.register_dynamic_worker(make_spec("exit0", notify=True))
                noise.append(x.wait_for_shutdown(timeout=LOST_WAIT_S))

        t = threading.Thread(target=keep_postmaster_busy)
        t.start()
        try:
            wait_until(lambda: len(tried()) >= attempts, timeout=attempts * interval * 4 + 10,
                       what=f"{attempts} start attempts")
        finally:
            stop.set()
            t.join()
        h.terminate()
        assert h.wait_for_shutdown(timeout=LOST_WAIT_S) is STOPPED
        evs = cluster.events()
        mine = [e for e in evs if (e.slot, e.generation) == (h.slot, h.generation)]
        starts = [e.t_ns for e in mine if e.kind == "fork_attempted"]
        ends = [e.t_ns for e in mine if e.kind in ("exited", "fork_failed")]
        assert len(starts) >= attempts and len(ends) >= len(starts) - 1
        gaps = [starts[i + 1] - ends[i] for i in range(len(starts) - 1)]
        window = (starts[-1] - starts[0]) / 1e9
        if storm == "crash":  # every restart comes straight after a crash-restart ends
            recovered = [e.t_ns for e in evs if e.kind == "crash_restart" and e.detail.get("phase") == "end"]
            assert len(recovered) >= len(starts) - 1
            for i in range(len(starts) - 1):
                assert any(ends[i] < t <= starts[i + 1] for t in recovered), (i, mine)
            assert not [e for e in mine if e.kind == "restart_scheduled"]  # no interval is waited for
        else:
            assert min(gaps) >= interval * 1e9, f"restarted {min(gaps) / 1e9:.3f}s after a failure"
            assert len(starts) - 1 <= window / interval + 1e-9
        assert all(s is STOPPED for s in noise) and len(noise) > 0
        b.detach()
    with capsys.disabled():
        print(f"\nrestart storm {storm}: interval {interval}s, {len(starts)} attempts in {window:.2f}s "
              f"(bound {window / interval + 1:.1f}), gap after failure min {min(gaps) / 1e6:.1f} ms "
              f"mean {statistics.mean(gaps) / 1e6:.1f} ms; {len(noise)} other round trips meanwhile")
