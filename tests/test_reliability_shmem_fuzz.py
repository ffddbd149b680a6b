"""Untrusted shared memory (issue 5, item 3).

Random bytes are scribbled over the segment -- slot records in use and free, the
in_use and terminate arrays, the backend table, the PMSignal flags and the generation
counter -- while the cluster runs and a legitimate registrant keeps using it.  The
postmaster must never crash, raise, spin or hang; it logs ``slot_rejected`` for what
it refuses, and keeps serving what it can still validate.  Afterwards no slot is
leaked.  The segment is mapped by hand (``DIR/shmem``); the layout is ``bgwlab/shmem.py``.
"""

from __future__ import annotations

import os
import random
import signal
import struct

import pytest

import bgwlab
from bgwlab import Cluster, HandleStatus, OutOfWorkerSlots, shmem
from bgwlab.errors import BgwError

from conftest import wait_until
from reliability_helpers import RawSegment, finish, helper, make_spec, read_msg

STARTED, STOPPED, NOT_YET = HandleStatus.STARTED, HandleStatus.STOPPED, HandleStatus.NOT_YET_STARTED
FUZZ_ROUNDS = int(os.environ.get("BGWLAB_FUZZ_ROUNDS", "400"))


def proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return data[data.rindex(b")") + 2 :].split()[0].decode()


def assert_not_spinning(pid: int, samples: int = 60) -> None:
    """The postmaster sleeps in poll() when nothing is due: most samples must say 'S'.

    A postmaster spinning in a loop of zero-timeout polls is 'R' in nearly every sample.
    """
    seen = []

    def sampled():
        seen.append(proc_state(pid))
        return len(seen) >= samples

    wait_until(sampled, timeout=30, what="state samples", interval=0.003)
    asleep = seen.count("S")
    assert asleep >= samples * 0.6, f"postmaster looks busy: states {''.join(seen)}"


def postmaster_errors(cluster) -> list:
    return [e for e in cluster.events() if e.kind == "postmaster_error"]


def served(cluster, h) -> bool:
    """Was this registration served: started, woke its waiters, ran and exited 0?"""
    s, _ = h.wait_for_startup(timeout=10)
    if s not in (STARTED, STOPPED) or h.wait_for_shutdown(timeout=10) is not STOPPED:
        return False
    exits = [e for e in cluster.events() if e.kind == "exited" and (e.slot, e.generation) == (h.slot, h.generation)]
    return [e.detail["exit_code"] for e in exits] == [0]


def nudge(backend) -> None:
    """What any registrant does after a change: set the PMSignal flag, signal the postmaster."""
    backend._signal_postmaster(shmem.PMSIGNAL_WORKER_CHANGE)


@pytest.fixture
def fuzz_cluster():
    c = Cluster.start(max_workers=16, max_backends=8)
    try:
        yield c
    finally:
        c.stop()


def test_suspect_slot_cleared_before_its_recheck_does_not_spin_the_postmaster(cluster, backend):
    """A scribbler sets in_use on a free slot (garbage spec: the postmaster defers judgement
    for RECHECK_NS) and clears it again before the recheck.  The postmaster must forget
    the suspicion instead of waking every 0 ms to recheck a slot it will never look at."""
    with RawSegment(cluster.directory) as raw:
        slot = 5
        raw.mm[raw.layout.slot_off(slot) : raw.layout.slot_off(slot) + 64] = bytes(range(64))
        raw.mm[raw.layout.in_use_off + slot] = 1
        nudge(backend)
        wait_until(lambda: any(e.kind == "request_seen" for e in cluster.events()) or
                   proc_state(cluster.postmaster_pid) == "S", what="postmaster to look")
        raw.mm[raw.layout.in_use_off + slot] = 0
    assert_not_spinning(cluster.postmaster_pid)
    h = backend.register_dynamic_worker(make_spec("exit0"))
    assert h.wait_for_shutdown(timeout=10) is STOPPED
    assert postmaster_errors(cluster) == []


@pytest.mark.parametrize("value", [2, 0x37, 0xFF])
def test_garbage_in_use_byte_is_rejected_not_leaked(cluster, backend, value):
    """in_use is a boolean token; any other value on a free slot is garbage that neither
    registrants (who take 0) nor the postmaster (which takes 1) would ever claim.  The
    postmaster must reclaim it, or the slot is lost for the cluster's lifetime."""
    with RawSegment(cluster.directory) as raw:
        raw.mm[raw.layout.in_use_off + 2] = value
    nudge(backend)
    wait_until(lambda: any(e.kind == "slot_rejected" and e.slot == 2 for e in cluster.events()),
               what="the garbage slot to be rejected")
    held = [backend.register_dynamic_worker(make_spec("parked")) for _ in range(cluster.max_workers)]
    assert sorted(h.slot for h in held) == list(range(cluster.max_workers))
    with pytest.raises(OutOfWorkerSlots):
        backend.register_dynamic_worker(make_spec("parked"))
    for h in held:
        h.terminate()
    assert all(h.wait_for_shutdown(timeout=10) is STOPPED for h in held)
    assert postmaster_errors(cluster) == []


def test_garbage_in_use_byte_on_an_owned_slot_is_restored(cluster, backend):
    h = backend.register_dynamic_worker(make_spec("forever"))
    status, pid = h.wait_for_startup(timeout=10)
    assert status is STARTED
    with RawSegment(cluster.directory) as raw:
        raw.mm[raw.layout.in_use_off + h.slot] = 0x80
        nudge(backend)
        wait_until(lambda: raw.in_use()[h.slot] == 1, what="the postmaster to restore its token")
    assert h.get_pid() == (STARTED, pid)
    h.terminate()
    assert h.wait_for_shutdown(timeout=10) is STOPPED
    assert postmaster_errors(cluster) == []


def test_generation_counter_scribbled_backwards_costs_at_most_one_registration(cluster, backend):
    """Scribbling next_generation down would make every new generation collide with one
    the postmaster already accepted in that slot.  The postmaster rejects the stale one,
    and re-seeds the counter above everything it has accepted, so service resumes."""
    for _ in range(3):
        assert backend.register_dynamic_worker(make_spec("exit0")).wait_for_shutdown(timeout=10) is STOPPED
    with RawSegment(cluster.directory) as raw:
        struct.pack_into("<Q", raw.mm, shmem.NEXT_GEN_OFF, 1)
    outcomes = []
    for _ in range(3):
        h = backend.register_dynamic_worker(make_spec("sleep5"))
        outcomes.append(served(cluster, h))
        if outcomes[-1]:
            break
    assert outcomes[-1], outcomes
    assert len(outcomes) <= 2, outcomes
    rejected = [e for e in cluster.events() if e.kind == "slot_rejected"]
    assert rejected and rejected[0].detail["reason"] == "generation went backwards"
    assert postmaster_errors(cluster) == []


def test_registration_over_a_live_slot_whose_token_was_scribbled_is_woken(cluster, backend):
    """A scribble clears the in_use token of a slot whose worker runs; before the
    postmaster notices, a registrant takes the 'free' slot and writes its own
    registration there (in_use = 1 again, so nothing looks wrong).  That registration
    cannot be served, but its waiter must not hang: when the postmaster frees the slot
    with its own worker, it wakes the registrant named there, which reads STOPPED."""
    f = backend.register_dynamic_worker(make_spec("forever"))
    status, fpid = f.wait_for_startup(timeout=10)
    assert status is STARTED
    os.kill(cluster.postmaster_pid, signal.SIGSTOP)  # so that it cannot notice in between
    try:
        with RawSegment(cluster.directory) as raw:
            raw.mm[raw.layout.in_use_off + f.slot] = 0
        # Another process registers (a signal to *us* would wake its waiter by accident).
        x = helper("one_worker", cluster.directory, "sleep5", "2")
        reg = read_msg(x)
        assert reg["slot"] == f.slot
        os.kill(fpid, signal.SIGTERM)  # the owner stops its worker by pid: f's handle is stale now
    finally:
        os.kill(cluster.postmaster_pid, signal.SIGCONT)
    try:
        res = read_msg(x, timeout=10)  # the helper's wait_for_startup() has no timeout
    finally:
        finish(x)
    assert res["status"] == "stopped", f"the overwritten registration was served?! {res}"
    evs = cluster.events()
    assert [e for e in evs if e.kind == "slot_rejected" and e.generation == reg["generation"]]
    # a served 5 ms worker could read STOPPED too, by the time its registrant woke: the log decides
    assert not [e for e in evs if e.kind == "forked" and (e.slot, e.generation) == (reg["slot"], reg["generation"])]
    assert backend.register_dynamic_worker(make_spec("sleep5")).wait_for_shutdown(timeout=10) is STOPPED
    assert postmaster_errors(cluster) == []


def test_scribbled_header_identity_is_refused_cleanly_and_postmaster_survives(cluster, backend):
    """Magic, layout version and sizes scribbled: new joiners get NotACluster (a clear
    error, never a crash or a mis-sized mapping); the postmaster neither reads nor needs
    them, and keeps running the worker it has."""
    h = backend.register_dynamic_worker(make_spec("forever"))
    assert h.wait_for_startup(timeout=10)[0] is STARTED
    with RawSegment(cluster.directory) as raw:
        saved = raw.mm[0:24]
        for garbage in (b"\0" * 8, b"NOTBGWLB", struct.pack("<8sIII", shmem.MAGIC, 1, 2**31, 2**31)):
            raw.mm[0 : len(garbage)] = garbage
            with pytest.raises(bgwlab.NotACluster):
                bgwlab.attach(cluster.directory)
            raw.mm[0:24] = saved
        nudge(backend)
    assert cluster.alive and h.get_pid()[0] is STARTED
    assert_not_spinning(cluster.postmaster_pid)
    h.terminate()
    assert h.wait_for_shutdown(timeout=10) is STOPPED


def test_random_scribbles_while_the_cluster_serves(fuzz_cluster):
    cluster = fuzz_cluster
    rng = random.Random(int(os.environ.get("BGWLAB_FUZZ_SEED", "20240605")))
    b = cluster.connect()
    raw = RawSegment(cluster.directory)
    L = raw.layout
    regions = raw.regions()
    own_backend = (L.backend_off(b.index), L.backend_off(b.index) + shmem.BACKEND_SIZE)
    stats = dict(rounds=0, scribbles=0, registrations=0, started=0, stopped=0, refused=0,
                 unresolved=0, by_region={})
    forever = []
    try:
        for r in range(FUZZ_ROUNDS):
            stats["rounds"] += 1
            while len(forever) < 3:  # keep some slots in use, with running workers in them
                try:
                    forever.append(b.register_dynamic_worker(make_spec("forever")))
                except (OutOfWorkerSlots, BgwError):
                    break
            for _ in range(rng.randint(1, 3)):
                what = rng.choices(["slots", "in_use", "terminate", "counters", "backends", "header"],
                                   weights=[40, 15, 10, 10, 10, 15])[0]
                if what == "counters":
                    off = rng.choice([shmem.NEXT_GEN_OFF, shmem.PMSIGNAL_OFF, shmem.PMSIGNAL_OFF + 1,
                                      shmem.NEXT_GEN_OFF + 8])
                    if off == shmem.NEXT_GEN_OFF:
                        struct.pack_into("<Q", raw.mm, off, rng.randrange(0, 2**62))
                    else:
                        raw.mm[off] = rng.randrange(256)
                elif what == "backends":
                    i = rng.randrange(L.max_backends)
                    if i == b.index:
                        continue
                    raw.scribble(rng, L.backend_off(i), L.backend_off(i) + shmem.BACKEND_SIZE)
                elif what == "header":  # past the identity and state fields (see the test above)
                    raw.scribble(rng, shmem.NEXT_GEN_OFF + 16, shmem.PAGE)
                else:
                    raw.scribble(rng, *regions[what])
                stats["scribbles"] += 1
                stats["by_region"][what] = stats["by_region"].get(what, 0) + 1
            assert raw.mm[own_backend[0]] == 1
            if rng.random() < 0.3:  # the scribbler pokes the postmaster too
                os.kill(cluster.postmaster_pid, signal.SIGUSR1)
            if r % 3 == 0:
                kind = rng.choice(["exit0", "sleep", "exit1", "fork_fail", "early_exit1", "bad_entry"])
                try:
                    h = b.register_dynamic_worker(make_spec(kind))
                except (OutOfWorkerSlots, BgwError):
                    stats["refused"] += 1
                else:
                    stats["registrations"] += 1
                    s, _ = h.wait_for_startup(timeout=2)
                    stats["started"] += s is STARTED
                    s2 = h.wait_for_shutdown(timeout=2)
                    stats["stopped"] += s2 is STOPPED
                    # A registration written into a slot whose in_use token a scribble
                    # cleared while the postmaster's worker still runs there is served
                    # only when that worker ends: counted, not failed.
                    stats["unresolved"] += s2 is not STOPPED
            forever = [h for h in forever if h.get_pid()[0] is not STOPPED]
            if r % 50 == 49:
                assert cluster.alive, f"postmaster died in round {r}"
                assert postmaster_errors(cluster) == []
        # -- scribbling is over: the postmaster must still serve and must leak nothing --------
        assert cluster.alive
        for h in forever:
            h.terminate()
        served_after = None
        for attempt in range(20):
            try:
                h = b.register_dynamic_worker(make_spec("sleep5"))
            except (OutOfWorkerSlots, BgwError):
                nudge(b)
                continue
            if served(cluster, h):
                served_after = attempt
                break
        assert served_after is not None, "the postmaster no longer serves a clean registration"
        # Workers whose handle a scribbled generation invalidated cannot be terminated
        # through it any more; their owner stops them by pid, and the postmaster must
        # then free their slots like any other.
        stats["unreachable_workers"] = len(cluster.worker_pids())
        for pid in cluster.worker_pids():
            os.kill(pid, signal.SIGTERM)

        def all_free():
            nudge(b)  # as the next registrant would: the postmaster rescans on every nudge
            return not raw.used_slots()

        try:
            wait_until(all_free, timeout=20, interval=0.05, what="every slot to be freed")
        except AssertionError:
            used = raw.used_slots()
            detail = {i: [(e.kind, e.generation, e.detail) for e in cluster.events() if e.slot == i][-4:]
                      for i in used}
            raise AssertionError(f"slots {used} never freed; workers {cluster.worker_pids()}; "
                                 f"generations {[raw.generation(i) for i in used]}; {detail}") from None
        assert not cluster.worker_pids()
        assert_not_spinning(cluster.postmaster_pid)
        evs = cluster.events()
        assert [e for e in evs if e.kind == "postmaster_error"] == []
        rejected = [e for e in evs if e.kind == "slot_rejected"]
        assert rejected, "scribbles were never noticed"
        stats["slot_rejected"] = len(rejected)
        stats["served_after"] = served_after
        print(f"\nshmem fuzz: {stats}")
        # The run did what it claims: it scribbled every region, and the registrant was
        # served throughout -- most attempts got a slot (garbage in_use bytes are
        # reclaimed, or refusals would pile up), workers started and their waits ended.
        assert set(stats["by_region"]) == {"slots", "in_use", "terminate", "counters", "backends",
                                           "header"}, stats
        attempts = stats["registrations"] + stats["refused"]
        assert attempts == len(range(0, FUZZ_ROUNDS, 3)), stats
        assert stats["refused"] < stats["registrations"], stats
        assert stats["started"] >= 1 and stats["stopped"] >= stats["registrations"] // 2, stats
        assert stats["stopped"] + stats["unresolved"] == stats["registrations"], stats
    finally:
        raw.close()
        b.detach()


def test_header_fields_are_where_the_layout_declares_them(cluster, backend):
    """A tool (or a fuzzer) reading the header by its declared layout sees the truth:
    the state accessor and the HEADER struct agree on where the state lives, and the
    postmaster's pid is not overwritten by it."""
    with RawSegment(cluster.directory) as raw:
        (magic, version, mw, mb, state, pm_pid, pm_uid, _start, next_gen, _crashes) = shmem.HEADER.unpack_from(raw.mm, 0)
    assert (magic, version, mw, mb) == (shmem.MAGIC, shmem.LAYOUT_VERSION, cluster.max_workers, cluster.max_backends)
    assert state == shmem.PM_RUNNING and backend.seg.state() == state
    assert pm_pid == cluster.postmaster_pid and pm_uid == os.geteuid()
    assert next_gen == backend.seg.next_generation()
