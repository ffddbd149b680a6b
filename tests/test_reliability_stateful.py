"""Stateful property tests of the slot protocol, with real processes (issue 5, item 1).

Hypothesis drives random sequences of: register (a worker that runs until stopped,
exits 0, exits 1 once or over and over, crashes, has its fork fail once or always,
starts slowly in the worker or in the postmaster, or is parked before its fork),
terminate (also through stale handles), waits with and without timeouts, background
waiters that block with no timeout, postmaster stalls, and slot exhaustion.

After every step:

* generations never repeat and never go backwards;
* a handle never reports another worker's pid: a STARTED pid is one the postmaster
  forked for exactly that (slot, generation), and no two handles report the same pid;
* every waiter returns once its answer is known, with an answer it may give;
* no slot leaks: every slot in use belongs to a handle that is not finished, and a
  finished handle's slot is released; a finished handle reads STOPPED forever;
* a terminate through a stale handle never stops the slot's next occupant;
* no zombie: every exited worker is reaped;
* the postmaster is alive.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from bgwlab import Cluster, HandleStatus, OutOfWorkerSlots

from conftest import wait_until
from reliability_helpers import assert_zombies_get_reaped, make_spec

STARTED, STOPPED, NOT_YET = HandleStatus.STARTED, HandleStatus.STOPPED, HandleStatus.NOT_YET_STARTED
MAX_WORKERS = 4
KINDS = ["forever", "exit0", "sleep", "exit1", "exit1_restart", "crash", "crash_signal",
         "early_exit1", "fork_fail", "fork_fail_once", "slow_start", "pm_slow", "parked",
         "bad_entry"]
RESTARTABLE = {"exit1_restart", "fork_fail_once"}
NEVER_STARTS_ALONE = {"parked"}  # NOT_YET_STARTED until terminated
NEVER_ENDS_ALONE = {"forever", "parked", "exit1_restart"}
WAIT_S = 8.0  # a bounded wait that hits this is a lost wakeup


@dataclass
class Tracked:
    kind: str
    handle: object
    registered_ns: int
    terminated: bool = False
    finished: bool = False  # observed: STOPPED for good (the slot is or will be released)
    pids: set = field(default_factory=set)


@dataclass
class Waiter:
    tracked: Tracked
    what: str
    thread: threading.Thread
    result: list


class SlotProtocol(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.cluster = Cluster.start(max_workers=MAX_WORKERS, max_backends=8)
        self.backend = self.cluster.connect()
        self.seg = self.backend.seg
        self.tracked: list[Tracked] = []
        self.waiters: list[Waiter] = []
        self.max_generation = 0
        self.refusals = 0

    # -- helpers ------------------------------------------------------------------------------
    def held(self, t: Tracked) -> bool:
        h = t.handle
        return bool(self.seg.in_use(h.slot)) and self.seg.generation(h.slot) == h.generation

    def crash_restarts_since(self, t_ns: int) -> int:
        return sum(1 for e in self.cluster.events()
                   if e.kind == "crash_restart" and e.detail.get("phase") == "begin" and e.t_ns >= t_ns)

    def refresh(self, t: Tracked):
        """Read a handle; mark it finished when STOPPED can no longer change."""
        status, pid = t.handle.get_pid()
        if t.finished:
            assert (status, pid) == (STOPPED, None), f"finished handle {t.handle} came back: {status}"
            return status, pid
        if status is STARTED:
            t.pids.add(pid)
        if status is STOPPED and (t.kind not in RESTARTABLE or t.terminated or not self.held(t)):
            t.finished = True
        return status, pid

    def pick(self, i: int, pred=lambda t: True) -> Tracked | None:
        """The i-th candidate (mod their number).  Hypothesis draws `i` the same way
        whatever the state, so that a replayed sequence draws the same data even when
        timing changed which registrations were refused."""
        cands = [t for t in self.tracked if pred(t)]
        return cands[i % len(cands)] if cands else None

    # -- rules ---------------------------------------------------------------------------------
    @rule(kind=st.sampled_from(KINDS))
    def register(self, kind):
        before = [t for t in self.tracked if self.held(t)]
        try:
            h = self.backend.register_dynamic_worker(make_spec(kind))
        except OutOfWorkerSlots:
            # Only this test registers, and slots are only freed meanwhile: every slot
            # was held by one of ours when we looked.
            self.refusals += 1
            assert len(before) == MAX_WORKERS, f"refused with only {len(before)} slots held"
            return
        assert h.generation > self.max_generation, "generation went backwards or repeated"
        self.max_generation = h.generation
        self.tracked.append(Tracked(kind, h, h.registered_ns))

    @rule()
    def exhaust_slots(self):
        """Fill every free slot with a parked worker; the next registration must be refused,
        and only then.  Then give the parked slots back, so that the sequence can go on."""
        t0 = time.monotonic_ns()
        parked, refused = [], False
        try:
            for _ in range(2 * MAX_WORKERS + 1):
                held = sum(self.held(t) for t in self.tracked) + sum(
                    self.seg.in_use(h.slot) and self.seg.generation(h.slot) == h.generation for h in parked)
                try:
                    parked.append(self.backend.register_dynamic_worker(make_spec("parked")))
                except OutOfWorkerSlots:
                    assert held == MAX_WORKERS, f"refused with only {held} slots held"
                    refused = True
                    break
                assert parked[-1].generation > self.max_generation
                self.max_generation = parked[-1].generation
            if not refused or len(parked) > MAX_WORKERS:
                # Only a crash-restart (which forgets NEVER_RESTART workers) frees slots
                # that parked workers hold.
                assert self.crash_restarts_since(t0) > 0, f"{len(parked)} registrations fit in {MAX_WORKERS} slots"
        finally:
            for h in parked:
                h.terminate()
            for h in parked:
                assert h.wait_for_shutdown(timeout=WAIT_S) is STOPPED
                assert not (self.seg.in_use(h.slot) and self.seg.generation(h.slot) == h.generation)

    @rule(i=st.integers(0, 1 << 16))
    def terminate(self, i):
        t = self.pick(i)  # also finished ones: a stale handle must be a no-op
        if t is None:
            return
        t.handle.terminate()
        t.terminated = True

    @rule(i=st.integers(0, 1 << 16))
    def wait_for_startup(self, i):
        t = self.pick(i, lambda t: t.kind not in NEVER_STARTS_ALONE or t.terminated)
        if t is None:
            return
        t0 = time.monotonic()
        status, pid = t.handle.wait_for_startup(timeout=WAIT_S)
        # A bounded wait returns the current status when it times out: only the elapsed
        # time tells a wakeup from a timeout (WAIT_S is ~1000x any real wakeup).
        assert time.monotonic() - t0 < WAIT_S, f"startup wait of {t.kind} was never woken ({status})"
        assert status in (STARTED, STOPPED), f"startup wait of {t.kind} returned {status}"
        if status is STARTED:
            t.pids.add(pid)

    @rule(i=st.integers(0, 1 << 16))
    def wait_for_shutdown(self, i):
        t = self.pick(i, lambda t: t.kind not in NEVER_ENDS_ALONE or t.terminated)
        if t is None:
            return
        t0 = time.monotonic()
        status = t.handle.wait_for_shutdown(timeout=WAIT_S)
        assert time.monotonic() - t0 < WAIT_S, f"shutdown wait of {t.kind} was never woken ({status})"
        assert status is STOPPED, f"shutdown wait of {t.kind} (terminated={t.terminated}) returned {status}"

    @rule(i=st.integers(0, 1 << 16), what=st.sampled_from(["startup", "shutdown"]))
    def background_waiter(self, i, what):
        """A thread that waits with no timeout at all: it must come back by itself."""
        t = self.pick(i)
        if t is None or len(self.waiters) >= 40:
            return
        result = []
        fn = t.handle.wait_for_startup if what == "startup" else t.handle.wait_for_shutdown
        th = threading.Thread(target=lambda: result.append(fn()), daemon=True)
        th.start()
        self.waiters.append(Waiter(t, what, th, result))

    @rule(kind=st.sampled_from(["exit0", "forever", "fork_fail", "exit1"]))
    def register_while_postmaster_stalled(self, kind):
        os.kill(self.cluster.postmaster_pid, signal.SIGSTOP)
        try:
            self.register(kind)
        finally:
            os.kill(self.cluster.postmaster_pid, signal.SIGCONT)

    # -- invariants -----------------------------------------------------------------------------
    @invariant()
    def postmaster_alive(self):
        assert self.cluster.alive
        assert self.cluster.state() in ("running", "crash_recovery")

    @invariant()
    def generations_unique(self):
        gens = [t.handle.generation for t in self.tracked]
        assert len(gens) == len(set(gens))
        assert gens == sorted(gens)

    @invariant()
    def pids_belong_to_their_handle(self):
        current = {}
        for t in self.tracked:
            status, pid = self.refresh(t)
            if status is STARTED:
                assert pid not in current, f"pid {pid} reported by {current.get(pid)} and {t.handle}"
                current[pid] = t.handle
        for t in self.tracked:
            h = t.handle

            def forked_here():
                evs = self.cluster.events()
                return t.pids <= {e.detail["worker_pid"] for e in evs if e.kind == "forked"
                                  and (e.slot, e.generation) == (h.slot, h.generation)}

            wait_until(forked_here, timeout=5, what=f"pids {t.pids} of {h} to be forked for it")

    @invariant()
    def no_slot_leaks(self):
        ours = {(t.handle.slot, t.handle.generation) for t in self.tracked if not t.finished}
        for slot in range(MAX_WORKERS):
            if self.seg.in_use(slot):
                # Every slot in use is one of our unfinished registrations (or is being
                # released right now: then the postmaster frees it promptly).
                wait_until(lambda: not self.seg.in_use(slot) or (slot, self.seg.generation(slot)) in ours,
                           timeout=5, what=f"slot {slot} to belong to a live handle")
        for t in self.tracked:
            if t.finished:
                wait_until(lambda: not self.held(t), timeout=5, what=f"finished {t.handle} to release its slot")

    @invariant()
    def stale_terminates_hit_nobody(self):
        for t in self.tracked:
            if t.kind == "forever" and not t.terminated and t.finished:
                assert self.crash_restarts_since(t.registered_ns) > 0, \
                    f"{t.handle} stopped without being terminated and without a crash-restart"

    @invariant()
    def waiters_return(self):
        for w in self.waiters:
            status, _ = w.tracked.handle.get_pid()
            known = (w.tracked.finished if w.what == "shutdown" else status is not NOT_YET)
            if known:
                w.thread.join(WAIT_S)
                assert not w.thread.is_alive(), f"{w.what} waiter of {w.tracked.kind} never returned"
            if not w.thread.is_alive():
                s = w.result[0] if w.what == "shutdown" else w.result[0][0]
                allowed = (STOPPED,) if w.what == "shutdown" else (STARTED, STOPPED)
                assert s in allowed, f"{w.what} waiter returned {s}"
        self.waiters = [w for w in self.waiters if w.thread.is_alive()]

    @invariant()
    def no_zombies(self):
        assert_zombies_get_reaped(self.cluster.postmaster_pid)

    # -- teardown ------------------------------------------------------------------------------
    def teardown(self):
        try:
            for t in self.tracked:
                t.handle.terminate()
            for t in self.tracked:
                assert t.handle.wait_for_shutdown(timeout=WAIT_S) is STOPPED, f"{t.kind} did not stop"
            for w in self.waiters:
                w.thread.join(WAIT_S)
                assert not w.thread.is_alive(), f"{w.what} waiter of {w.tracked.kind} never returned"
            wait_until(lambda: not any(self.seg.in_use_array()), what="every slot to be released")
            wait_until(lambda: not self.cluster.worker_pids(), what="every worker to exit")
        finally:
            self.cluster.stop()
        evs = self.cluster.events()
        forked = {e.detail["worker_pid"] for e in evs if e.kind == "forked"}
        exited = {e.detail["worker_pid"] for e in evs if e.kind == "exited"}
        assert forked == exited, f"forked but never reaped: {forked - exited}"
        assert not [e for e in evs if e.kind == "postmaster_error"]


SlotProtocol.TestCase.settings = settings(
    max_examples=int(os.environ.get("BGWLAB_STATEFUL_EXAMPLES", "40")),
    stateful_step_count=20,
    deadline=None,
    database=None,
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=list(HealthCheck),
    # No shrinking: with real processes a failure replays with other timings, and the
    # unshrunk sequence is printed anyway.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
TestSlotProtocol = SlotProtocol.TestCase
