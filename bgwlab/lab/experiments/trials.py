"""Trials: one registration, waited for by one strategy, judged against the event log.

One **trial** = one registration of a :func:`bgwlab.lab.strategies.sentinel_worker` in a
scenario (``SCENARIOS``), waited for by one strategy, under one load
(``bgwlab.lab.load.LOADS``).  It records:

* what the strategy said: ``verdict`` (started / failed / timed_out),
  ``time_to_verdict_ms`` (since registration) and ``wait_cpu_ms``;
* what really happened, from the **event log** and never from the strategy:
  ``truth`` is ``"started"`` iff the worker recorded ``reached_main`` for that slot and
  generation (it reached user code), else ``"failed"``, with ``truth_reason``
  (fork_failed, early_crash, exited before main, postmaster_died, no free slot);
  ``start_latency_ms`` (registered -> reached_main) and the other stage times.

After the verdict the runner keeps watching (without telling the strategy) until the
worker is gone, so a worker that started *after* a strategy gave up is counted as
started: that is a **spurious timeout** (``spurious_timeout``).  ``correct`` is true when
the verdict and the truth agree (``timed_out`` counts as reporting a failure).

``TrialRunner`` runs trials on one cluster (restarted if it dies) and keeps their events;
``run_trial`` runs a single trial; every trial is a row with the keys of ``COLUMNS``.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import replace
from pathlib import Path

from ...backend import STOPPED
from ...cluster import Cluster
from ...errors import OutOfWorkerSlots
from ...events import Event, parse_line, read_events
from ...spec import NEVER_RESTART, WorkerSpec
from ..load import get_load
from ..strategies import PRELOAD, Outcome, Strategy, exit_path, make_strategy, sentinel_path
from .scenarios import get_scenario

__all__ = ["TrialRunner", "run_trial", "ground_truth", "COLUMNS", "RUN_MS", "SETTLE_S"]

RUN_MS = 10
"""How long a trial's worker runs after signing in (then it exits 0 and frees its slot)."""

SETTLE_S = 10.0  # how long the runner watches a worker after the verdict before terminating it

COLUMNS = ["order", "strategy", "label", "scenario", "load", "timeout_s", "poll_s", "trial",
           "verdict", "truth", "truth_reason", "correct", "spurious_timeout",
           "time_to_verdict_ms", "wait_cpu_ms", "start_latency_ms", "forked_ms",
           "failure_event_ms", "status", "cluster", "slot", "generation",
           "t_registered_ns", "t_verdict_ns"]


def _strategy(strategy, timeout_s=None, poll_s=0.01) -> Strategy:
    if isinstance(strategy, Strategy):
        return strategy
    return make_strategy(strategy, timeout_s=timeout_s, poll_s=poll_s)


# -- ground truth --------------------------------------------------------------------------------
def _first(evs, kind):
    for e in evs:
        if e.kind == kind:
            return e
    return None


def ground_truth(events, slot: int, generation: int) -> tuple[str, str]:
    """("started" | "failed", reason) for the worker (slot, generation), from events only.

    Started iff the worker recorded ``reached_main``.  Otherwise the reason is the first
    of: fork_failed, early_crash, exited before main, postmaster_died, never started.
    """
    mine = [e for e in events if e.slot == slot and e.generation == generation]
    if _first(mine, "reached_main"):
        return "started", "reached_main"
    for kind, reason in (("fork_failed", "fork_failed"), ("early_crash", "early_crash"),
                         ("exited", "exited before main")):
        if _first(mine, kind):
            return "failed", reason
    if any(e.kind == "postmaster_died" for e in events):
        return "failed", "postmaster_died"
    return "failed", "never started"


class _EventTail:
    """Reads a cluster's events.jsonl incrementally, indexed by (slot, generation)."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.partial = b""
        self.by_handle: dict[tuple[int, int], list[Event]] = {}

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        self.offset += len(data)
        data = self.partial + data
        lines = data.split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            e = parse_line(line.decode("utf-8", "replace"))
            if e is not None and e.slot >= 0:
                self.by_handle.setdefault((e.slot, e.generation), []).append(e)

    def pop(self, slot: int, generation: int) -> list[Event]:
        return sorted(self.by_handle.pop((slot, generation), []), key=lambda e: e.t_ns)


# -- running trials ----------------------------------------------------------------------------------
class TrialRunner:
    """Runs trials on one cluster (started lazily, restarted if it dies) and keeps their events.

    Pass ``cluster=`` to borrow a running cluster (it is not stopped by ``close()``); its
    events are then collected from the moment the runner is created.  ``close()`` stops
    owned clusters; ``events`` holds every event of every cluster used, each tagged with
    ``detail["cluster"]`` (the ``cluster`` column of the results).
    """

    def __init__(self, cluster: Cluster | None = None, *, max_workers: int = 8, run_ms: int = RUN_MS,
                 first_cluster_id: int = 0):
        self.max_workers = max_workers
        self.run_ms = run_ms
        self.events: list[Event] = []
        self._cluster_ids = first_cluster_id  # the next id to hand out
        self._cluster = None
        self._cid = -1
        if cluster is not None:
            self._adopt(cluster, owned=False)

    # -- clusters -----------------------------------------------------------------------------
    def _adopt(self, cluster, owned: bool):
        self._cluster = cluster
        self._owned = owned
        self._cid = self._cluster_ids
        self._cluster_ids += 1
        self._backend = cluster.connect()
        self._sentinels = cluster.directory / "s"
        self._sentinels.mkdir(exist_ok=True)
        self._tail = _EventTail(cluster.events_path)
        self._t_start = time.monotonic_ns()

    def _new_cluster(self, max_workers=None) -> Cluster:
        return Cluster.start(max_workers=max_workers or self.max_workers, preload=PRELOAD)

    @property
    def cluster(self) -> Cluster:
        if self._cluster is None or not self._cluster.alive:
            self._retire()
            self._adopt(self._new_cluster(), owned=True)
        return self._cluster

    def _retire(self) -> None:
        c = self._cluster
        if c is None:
            return
        self._cluster = None
        if self._owned:
            c.stop()
            evs = c.events()
        else:
            self._backend.detach()
            evs = [e for e in c.events() if e.t_ns >= self._t_start]  # (waits for the postmaster's pass)
        self._collect(evs, self._cid)

    def _collect(self, evs, cid) -> None:
        for e in evs:
            self.events.append(replace(e, detail={**e.detail, "cluster": cid}))

    def close(self) -> None:
        self._retire()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- one trial --------------------------------------------------------------------------------
    def run(self, scenario, strategy, *, load="idle", trial: int = 0, order: int = 0) -> dict:
        """One trial; returns a row (a dict with the keys of ``COLUMNS``)."""
        sc = get_scenario(scenario)
        st = _strategy(strategy)
        load_name = get_load(sc.load or load).name
        if sc.kind == "postmaster_death":
            return self._run_postmaster_death(sc, st, load_name, trial, order)
        cluster = self.cluster
        backend, sentinels = self._backend, self._sentinels
        spec = st.make_spec(sentinels, name=f"{sc.name}-{trial}", run_ms=self.run_ms, fault=sc.fault)
        fillers = self._fill_slots(backend) if sc.kind == "slot_exhaustion" else []
        try:
            cpu0, t0 = time.process_time(), time.monotonic_ns()
            try:
                handle = backend.register_dynamic_worker(spec)
            except OutOfWorkerSlots:
                t1 = time.monotonic_ns()
                out = Outcome("failed", (t1 - t0) / 1e6, (time.process_time() - cpu0) * 1000, t1,
                              "registration refused: no free slot")
                return self._row(sc, st, load_name, trial, order, out, None, [],
                                 ("failed", "no free slot"))
        finally:
            self._release(fillers)
        out = st.wait(backend, handle, spec)
        self._settle(handle, cluster)
        self._tail.poll()
        evs = self._tail.pop(handle.slot, handle.generation)
        truth = ground_truth(evs, handle.slot, handle.generation)
        self._cleanup_files(sentinels, handle)
        return self._row(sc, st, load_name, trial, order, out, handle, evs, truth)

    def _fill_slots(self, backend) -> list:
        fillers = []
        try:
            while True:
                spec = WorkerSpec(name="filler", entry="bgwlab.examples:sleep_forever",
                                  restart=NEVER_RESTART, notify=True)
                fillers.append(backend.register_dynamic_worker(spec))
        except OutOfWorkerSlots:
            pass
        for h in fillers:
            h.wait_for_startup(timeout=SETTLE_S)
        return fillers

    def _release(self, fillers) -> None:
        for h in fillers:
            h.terminate()
        for h in fillers:
            h.wait_for_shutdown(timeout=SETTLE_S)

    def _settle(self, handle, cluster) -> None:
        """Watch (not as the strategy) until the worker is gone, so the truth is final."""
        deadline = time.monotonic() + SETTLE_S
        terminated = False
        while handle.get_pid()[0] is not STOPPED:
            if not cluster.alive:
                return
            if time.monotonic() > deadline:
                if terminated:
                    return
                handle.terminate()  # it never got anywhere: stop waiting for it
                terminated = True
                deadline = time.monotonic() + SETTLE_S
            time.sleep(0.002)

    @staticmethod
    def _cleanup_files(sentinels, handle) -> None:
        for p in (sentinel_path(sentinels, handle.slot, handle.generation),
                  exit_path(sentinels, handle.slot, handle.generation)):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass

    def _run_postmaster_death(self, sc, st, load_name, trial, order) -> dict:
        cluster = self._new_cluster(max_workers=2)
        cid = self._cluster_ids
        self._cluster_ids += 1
        try:
            backend = cluster.connect()
            sentinels = cluster.directory / "s"
            sentinels.mkdir()
            spec = st.make_spec(sentinels, name=f"{sc.name}-{trial}", run_ms=self.run_ms, fault=sc.fault)
            handle = backend.register_dynamic_worker(spec)
            cluster.kill_postmaster()
            out = st.wait(backend, handle, spec)
            evs = read_events(cluster.events_path)
        finally:
            cluster.stop()
        self._collect(cluster.events(), cid)
        mine = [e for e in evs if (e.slot, e.generation) == (handle.slot, handle.generation)]
        truth = ground_truth(mine, handle.slot, handle.generation)
        if truth == ("failed", "never started"):
            truth = ("failed", "postmaster_died")  # a SIGKILLed postmaster records nothing
        return self._row(sc, st, load_name, trial, order, out, handle, mine, truth, cid=cid)

    def _row(self, sc, st, load_name, trial, order, out, handle, evs, truth, cid=None) -> dict:
        verdict = out.verdict
        t_reg = handle.registered_ns if handle is not None else None

        def since(kind):
            e = _first(evs, kind)
            return (e.t_ns - t_reg) / 1e6 if (e is not None and t_reg) else float("nan")

        failure = float("nan")
        for kind in ("fork_failed", "early_crash", "exited"):
            e = _first(evs, kind)
            if e is not None and truth[0] == "failed" and t_reg:
                failure = (e.t_ns - t_reg) / 1e6
                break
        return {
            "order": order, "strategy": st.name, "label": st.label, "scenario": sc.name,
            "load": load_name, "timeout_s": st.timeout_s if st.timeout_s is not None else float("nan"),
            "poll_s": st.poll_s if st.poll_s is not None else float("nan"), "trial": trial,
            "verdict": verdict, "truth": truth[0], "truth_reason": truth[1],
            "correct": (verdict == "started") == (truth[0] == "started"),
            "spurious_timeout": verdict == "timed_out" and truth[0] == "started",
            "time_to_verdict_ms": out.time_to_verdict_ms, "wait_cpu_ms": out.wait_cpu_ms,
            "start_latency_ms": since("reached_main"), "forked_ms": since("forked"),
            "failure_event_ms": failure, "status": out.status,
            "cluster": self._cid if cid is None else cid,
            "slot": handle.slot if handle is not None else -1,
            "generation": handle.generation if handle is not None else -1,
            "t_registered_ns": t_reg if t_reg else -1, "t_verdict_ns": out.t_verdict_ns,
        }


def run_trial(scenario, strategy, *, cluster: Cluster | None = None, load="idle", trial: int = 0,
              timeout_s: float | None = None, poll_s: float = 0.01, run_ms: int = RUN_MS) -> dict:
    """Run one trial and return its row (see ``COLUMNS``).

    ``scenario``: a name in SCENARIOS (or a Scenario).  ``strategy``: "notify", "timeout"
    (with ``timeout_s``), "poll_pid", or a Strategy object.  Without ``cluster`` a cluster
    is started for the trial, under ``load`` (hogs and stalls), and stopped afterwards;
    with ``cluster`` the trial runs there and ``load`` is only a label.
    """
    st = _strategy(strategy, timeout_s, poll_s)
    sc = get_scenario(scenario)
    if cluster is not None:
        with TrialRunner(cluster, run_ms=run_ms) as runner:
            return runner.run(sc, st, load=load, trial=trial)
    ld = get_load(sc.load or load)
    with TrialRunner(run_ms=run_ms) as runner:
        c = runner.cluster
        with ld.hogs_cm(), ld.stalls_cm(c):
            if ld.think_s:
                time.sleep(random.uniform(0, ld.think_s))
            return runner.run(sc, st, load=ld.name, trial=trial)
