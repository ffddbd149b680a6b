"""Experiments: scenarios x waiting strategies x timeouts x loads, measured for real.

One **trial** = one registration of a :func:`bgwlab.strategies.sentinel_worker` in a
scenario (``SCENARIOS``), waited for by one strategy, under one load
(``bgwlab.load.LOADS``).  It records:

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

``run_grid`` runs the cross product with its trial order shuffled (seeded) inside each
load block, so slow drift (the shared machine heating up, another user's job) hits every
strategy alike; ``headline_experiment`` is the grid behind the headline figure;
``death_experiment`` compares three ways of learning that a running worker died
(SIGUSR1 from the postmaster, a pidfd, polling).  Results are tidy pandas DataFrames
with run metadata in ``df.attrs["metadata"]``; ``save_results`` writes CSV + metadata JSON
(+ events JSON Lines) and ``load_results`` reads them back.

Quick mode (``quick=True`` or ``BGWLAB_QUICK=1``) shrinks every grid to a few seconds.
"""

from __future__ import annotations

import errno as _errno
import json
import os
import platform
import random
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path

from . import __version__
from .backend import STARTED, STOPPED
from .cluster import Cluster
from .errors import OutOfWorkerSlots
from .events import Event, parse_line, read_events, write_jsonl
from .load import get_load
from .spec import NEVER_RESTART, Fault, WorkerSpec
from .strategies import (PRELOAD, Notify, Outcome, PollPid, Strategy, Timeout, exit_path,
                         make_strategy, sentinel_path)

__all__ = ["Scenario", "SCENARIOS", "TrialRunner", "run_trial", "run_grid", "headline_experiment",
           "death_experiment", "run_experiment", "EXPERIMENTS", "save_results", "load_results",
           "load_events", "run_metadata", "ground_truth", "plan_grid", "headline_table", "quick_mode",
           "COLUMNS", "HEADLINE_TIMEOUTS", "RUN_MS"]

RUN_MS = 10
"""How long a trial's worker runs after signing in (then it exits 0 and frees its slot)."""

HEADLINE_TIMEOUTS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
"""T grid: from below the busy start latency (tens of ms) to well above it."""

QUICK_TIMEOUTS = (0.01, 0.05, 0.2)
QUICK_TRIALS = 2  # at most this many trials per cell in quick mode
SETTLE_S = 10.0  # how long the runner watches a worker after the verdict before terminating it

COLUMNS = ["order", "strategy", "label", "scenario", "load", "timeout_s", "poll_s", "trial",
           "verdict", "truth", "truth_reason", "correct", "spurious_timeout",
           "time_to_verdict_ms", "wait_cpu_ms", "start_latency_ms", "forked_ms",
           "failure_event_ms", "status", "cluster", "slot", "generation",
           "t_registered_ns", "t_verdict_ns"]


def quick_mode(quick: bool = False) -> bool:
    """True if `quick` or the environment says ``BGWLAB_QUICK=1``."""
    return bool(quick) or os.environ.get("BGWLAB_QUICK", "") not in ("", "0", "false", "no")


# -- scenarios ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scenario:
    """What goes wrong in a trial.

    ``fault``: the worker's Fault plan.  ``load``: a load this scenario always runs under
    (``busy``), whatever the grid says.  ``kind``: ``plain``, or ``slot_exhaustion`` (every
    slot is taken before the registration) or ``postmaster_death`` (SIGKILL to the
    postmaster right after the registration, on a cluster of its own).  ``expected``: the
    truth one expects -- the runner still measures it from the events.
    """

    name: str
    description: str
    expected: str
    fault: Fault | None = None
    load: str | None = None
    kind: str = "plain"


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("ok", "nothing goes wrong: the worker starts and signs in", "started"),
    Scenario("fork_failure", "the postmaster's fork() fails with EAGAIN (injected); the "
             "NEVER_RESTART worker is forgotten", "failed", Fault.fork_failure(_errno.EAGAIN)),
    Scenario("early_crash", "the worker exits with code 1 after fork, before user code",
             "failed", Fault.crash_before_main(exit_code=1)),
    Scenario("slow_start", "the worker needs 150 ms between fork and user code, then runs",
             "started", Fault.slow_start(0.15)),
    Scenario("busy", "nothing goes wrong, but the machine is busy: CPU hogs and postmaster "
             "stalls (load 'busy')", "started", load="busy"),
    Scenario("slot_exhaustion", "every worker slot is taken: registration is refused",
             "failed", kind="slot_exhaustion"),
    Scenario("postmaster_death", "the postmaster is killed (SIGKILL) right after the "
             "registration, before it forks", "failed",
             Fault.slow_start(0.5, where="postmaster"), kind="postmaster_death"),
)}


def get_scenario(scenario) -> Scenario:
    if isinstance(scenario, Scenario):
        return scenario
    try:
        return SCENARIOS[scenario]
    except KeyError:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}") from None


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
            evs = [e for e in read_events(c.events_path) if e.t_ns >= self._t_start]
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


# -- grids -----------------------------------------------------------------------------------------
def _expand_strategies(strategies, timeouts, poll_s) -> list[Strategy]:
    out = []
    for s in strategies:
        if isinstance(s, Strategy):
            out.append(s)
        elif str(s).lower() == "timeout":
            if not timeouts:
                raise ValueError("the timeout strategy needs a list of timeouts")
            out.extend(Timeout(T, poll_s) for T in timeouts)
        else:
            out.append(make_strategy(s, poll_s=poll_s))
    return out


def plan_grid(scenarios, strategies, loads, trials: int, rng: random.Random) -> dict:
    """The trial order: ``{load: [(Scenario, Strategy, trial), ...]}``, shuffled within each load.

    A scenario with a load of its own runs only in that load's block.  Blocks run in the
    order their loads first appear; a block is one cluster with its load switched on once.
    """
    blocks: dict[str, list] = {}
    for sc in (get_scenario(s) for s in scenarios):
        for ln in ([sc.load] if sc.load else [get_load(ld).name for ld in loads]):
            cell = blocks.setdefault(ln, [])
            for st in strategies:
                for k in range(trials):
                    cell.append((sc, st, k))
    for cells in blocks.values():
        rng.shuffle(cells)
    return blocks


def run_grid(scenarios, strategies, timeouts, loads, trials, *, progress=True, seed=0,
             poll_s: float = 0.01, run_ms: int = RUN_MS, events: list | None = None):
    """Run scenario x strategy x T x load x trial; return a tidy DataFrame (``COLUMNS``).

    ``strategies``: names ("notify", "timeout", "poll_pid") or Strategy objects; "timeout"
    expands to one Timeout(T, poll_s) per T in ``timeouts``.  A scenario with a load of its
    own (``busy``) runs under that load only.  Trials are grouped by load (the load is
    switched on once per block, on a fresh cluster) and shuffled within each block with
    ``random.Random(seed)``.  If ``events`` is a list, every raw event is appended to it
    (for ``save_results(..., events=...)`` and the timeline figures).  In quick mode
    (``BGWLAB_QUICK=1``) at most ``QUICK_TRIALS`` trials per cell are run.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    quick = quick_mode()
    if quick:
        trials = min(trials, QUICK_TRIALS)
    t_start = time.monotonic()
    meta = run_metadata()
    scs = [get_scenario(s) for s in scenarios]
    sts = _expand_strategies(strategies, timeouts, poll_s)
    load_names = [get_load(ld).name for ld in loads]
    rng = random.Random(seed)
    blocks = plan_grid(scs, sts, load_names, trials, rng)
    total = sum(len(c) for c in blocks.values())
    rows = []
    all_events = []
    next_cluster = 0
    bar = tqdm(total=total, desc="trials", disable=not progress, unit="trial")
    try:
        for ln, cells in blocks.items():
            ld = get_load(ln)
            bar.set_postfix_str(f"load={ln}")
            with TrialRunner(run_ms=run_ms, first_cluster_id=next_cluster) as runner:
                with ld.hogs_cm(), ld.stalls_cm(runner.cluster):
                    for sc, st, k in cells:
                        if ld.think_s:
                            time.sleep(rng.uniform(0, ld.think_s))
                        rows.append(runner.run(sc, st, load=ln, trial=k, order=len(rows)))
                        bar.update(1)
            next_cluster = runner._cluster_ids
            all_events.extend(runner.events)
    finally:
        bar.close()
    df = pd.DataFrame(rows, columns=COLUMNS)
    meta.update({
        "experiment": {"scenarios": [s.name for s in scs], "strategies": [s.label for s in sts],
                       "timeouts_s": list(timeouts or []), "loads": load_names, "trials": trials,
                       "seed": seed, "poll_s": poll_s, "run_ms": run_ms, "quick": quick},
        "scenarios": {s.name: s.description for s in scs},
        "loads": {ln: get_load(ln).as_dict() for ln in blocks},
        "n_trials": len(df),
        "duration_s": round(time.monotonic() - t_start, 3),
        "loadavg_end": list(os.getloadavg()),
    })
    df.attrs["metadata"] = meta
    if events is not None:
        events.extend(all_events)
    return df


def headline_experiment(quick: bool = False, progress: bool = True, *, trials: int | None = None,
                        timeouts=None, seed: int = 0, events: list | None = None):
    """The grid behind the headline figure (about 30 s; a few seconds in quick mode).

    Failed starts (fork_failure, early_crash) on an idle machine -- how long until each
    strategy reports them -- and good starts on an idle and on a busy machine -- how often
    a timeout gives up on a worker that does start.  Strategies: notify, poll_pid (10 ms)
    and timeout(T) for T in ``HEADLINE_TIMEOUTS``.
    """
    q = quick_mode(quick)
    if trials is None:
        trials = 2 if q else 8
    if timeouts is None:
        timeouts = QUICK_TIMEOUTS if q else HEADLINE_TIMEOUTS
    scenarios = ["fork_failure", "ok", "busy"] if q else ["fork_failure", "early_crash", "ok", "busy"]
    df = run_grid(scenarios, ["notify", "poll_pid", "timeout"], timeouts, ["idle"], trials,
                  progress=progress, seed=seed, events=events)
    df.attrs["metadata"]["experiment"]["name"] = "headline"
    df.attrs["metadata"]["experiment"]["quick"] = q
    return df


def matrix_experiment(quick: bool = False, progress: bool = True, *, trials: int | None = None,
                      timeouts=None, seed: int = 0, events: list | None = None):
    """Every scenario x every strategy (timeout at a short and a long T), idle."""
    q = quick_mode(quick)
    if trials is None:
        trials = 1 if q else 5
    if timeouts is None:
        timeouts = (0.05, 0.5)
    df = run_grid(list(SCENARIOS), ["notify", "poll_pid", "timeout"], timeouts, ["idle"], trials,
                  progress=progress, seed=seed, events=events)
    df.attrs["metadata"]["experiment"]["name"] = "matrix"
    df.attrs["metadata"]["experiment"]["quick"] = q
    return df


# -- death detection ---------------------------------------------------------------------------------
DEATH_METHODS = ("sigusr1", "pidfd", "poll")


def _detect_death(method, handle, poll_s) -> None:
    if method == "sigusr1":
        handle.wait_for_shutdown()
    elif method == "pidfd":
        from .latch import wait_fds

        status, pid = handle.get_pid()
        if status is not STARTED:
            return
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        try:
            # The pid is only ours while the postmaster has not reaped it: if the handle
            # still says STARTED with that pid *after* opening, the fd is the worker's.
            if handle.get_pid() != (STARTED, pid):
                return
            wait_fds([fd], None)
        finally:
            os.close(fd)
    elif method == "poll":
        while handle.get_pid()[0] is not STOPPED:
            time.sleep(poll_s)
    else:
        raise ValueError(f"unknown death-detection method {method!r}; choose from {DEATH_METHODS}")


def death_experiment(methods=DEATH_METHODS, trials: int | None = None, *, loads=("idle",),
                     poll_s: float = 0.01, run_ms: int = 30, quick: bool = False,
                     progress: bool = True, seed: int = 0, events: list | None = None):
    """How fast does a registrant learn that a running worker exited?

    ``sigusr1``: ``handle.wait_for_shutdown()`` woken by the postmaster's notification
    (which comes after the postmaster reaped the worker); ``pidfd``: ``poll()`` on a pidfd
    of the worker (readable the moment it exits; no postmaster involved); ``poll``:
    ``handle.get_pid()`` every ``poll_s``.  The worker runs ``run_ms`` plus a random 0 to
    2 x ``poll_s`` (so its exit is not phase-locked to the polling), writes its
    CLOCK_MONOTONIC time and exits; latency = detection - that stamp.  Columns: method, load, trial,
    poll_s, latency_ms, wait_cpu_ms, exit_code.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    q = quick_mode(quick)
    if trials is None:
        trials = 20
    if q:
        trials = min(trials, QUICK_TRIALS + 1)
    t_start = time.monotonic()
    meta = run_metadata()
    rng = random.Random(seed)
    rows = []
    bar = tqdm(total=trials * len(methods) * len(loads), desc="death", disable=not progress)
    try:
        for ln in loads:
            ld = get_load(ln)
            cells = [(m, k) for m in methods for k in range(trials)]
            rng.shuffle(cells)
            with TrialRunner(run_ms=run_ms) as runner:
                c = runner.cluster
                b, sentinels = runner._backend, runner._sentinels
                with ld.hogs_cm(), ld.stalls_cm(c):
                    for m, k in cells:
                        if ld.think_s:
                            time.sleep(rng.uniform(0, ld.think_s))
                        st = Notify() if m == "sigusr1" else PollPid(0.001)
                        # A random run time, so the exit falls at a random phase of the poll period.
                        ms = run_ms + rng.randrange(0, max(1, int(2 * poll_s * 1000)))
                        spec = st.make_spec(sentinels, name=f"death-{m}", run_ms=ms)
                        handle = b.register_dynamic_worker(spec)
                        out = st.wait(b, handle, spec)
                        if out.verdict != "started":
                            runner._settle(handle, c)
                            continue
                        cpu0 = time.process_time()
                        _detect_death(m, handle, poll_s)
                        t_seen = time.monotonic_ns()
                        cpu = (time.process_time() - cpu0) * 1000
                        runner._settle(handle, c)
                        try:
                            with open(exit_path(sentinels, handle.slot, handle.generation)) as f:
                                t_exit = int(f.read())
                        except (OSError, ValueError):
                            t_exit = None
                        runner._cleanup_files(sentinels, handle)
                        b.events.emit("verdict", handle.slot, handle.generation,
                                      strategy=f"death:{m}", verdict="stopped")
                        rows.append({"order": len(rows), "method": m, "load": ld.name, "trial": k,
                                     "poll_s": poll_s if m == "poll" else float("nan"),
                                     "latency_ms": (t_seen - t_exit) / 1e6 if t_exit else float("nan"),
                                     "wait_cpu_ms": cpu, "slot": handle.slot,
                                     "generation": handle.generation})
                        bar.update(1)
            if events is not None:
                events.extend(runner.events)
    finally:
        bar.close()
    df = pd.DataFrame(rows)
    meta.update({"experiment": {"name": "death", "methods": list(methods), "loads": list(loads),
                                "trials": trials, "poll_s": poll_s, "run_ms": run_ms, "seed": seed,
                                "quick": q},
                 "n_trials": len(df), "duration_s": round(time.monotonic() - t_start, 3),
                 "loadavg_end": list(os.getloadavg())})
    df.attrs["metadata"] = meta
    return df


# -- named experiments (the CLI) ------------------------------------------------------------------------
EXPERIMENTS = {
    "headline": "failed-start report time and spurious timeouts vs T (the headline figure)",
    "matrix": "every scenario x every strategy, idle (is any strategy ever wrong?)",
    "death": "learning that a running worker died: SIGUSR1 vs pidfd vs polling",
}


def run_experiment(name: str, *, trials: int | None = None, timeouts=None, loads=None,
                   strategies=None, quick: bool = False, progress: bool = True, seed: int = 0,
                   events: list | None = None):
    """Run a named experiment (EXPERIMENTS) or one scenario (SCENARIOS) as a grid."""
    q = quick_mode(quick)
    if name == "headline" and loads is None and strategies is None:
        return headline_experiment(q, progress, trials=trials, timeouts=timeouts, seed=seed, events=events)
    if name == "matrix" and loads is None and strategies is None:
        return matrix_experiment(q, progress, trials=trials, timeouts=timeouts, seed=seed, events=events)
    if name == "death":
        return death_experiment(trials=trials, loads=loads or ("idle",), quick=q, progress=progress,
                                seed=seed, events=events)
    if name in ("headline", "matrix"):
        scenarios = ["fork_failure", "early_crash", "ok", "busy"] if name == "headline" else list(SCENARIOS)
    elif name in SCENARIOS:
        scenarios = [name]
    else:
        raise ValueError(f"unknown experiment {name!r}; choose one of "
                         f"{', '.join([*EXPERIMENTS, *SCENARIOS])}")
    if trials is None:
        trials = 2 if q else 10
    if timeouts is None:
        timeouts = QUICK_TIMEOUTS if q else HEADLINE_TIMEOUTS
    df = run_grid(scenarios, strategies or ["notify", "poll_pid", "timeout"], timeouts,
                  loads or ["idle"], trials, progress=progress, seed=seed, events=events)
    df.attrs["metadata"]["experiment"]["name"] = name
    df.attrs["metadata"]["experiment"]["quick"] = q
    return df


# -- summaries ------------------------------------------------------------------------------------------
def headline_table(df):
    """The headline numbers: per strategy label and T, the median / p90 time to report a
    failed start (truth failed) and the spurious-timeout rate per load (truth started)."""
    import pandas as pd

    rows = []
    for (label, strategy), g in df.groupby(["label", "strategy"], sort=False):
        failed = g[g.truth == "failed"]
        ok = g[g.truth == "started"]
        row = {"label": label, "strategy": strategy,
               "timeout_s": g.timeout_s.iloc[0],
               "failed_report_median_ms": failed.time_to_verdict_ms.median(),
               "failed_report_p90_ms": failed.time_to_verdict_ms.quantile(0.9) if len(failed) else float("nan"),
               "n_failed": len(failed)}
        for ln, gl in ok.groupby("load"):
            row[f"spurious_rate_{ln}"] = gl.spurious_timeout.mean()
            row[f"n_started_{ln}"] = len(gl)
        row["wrong_verdicts"] = int((~g.correct.astype(bool)).sum())
        rows.append(row)
    out = pd.DataFrame(rows)
    return out.sort_values(["strategy", "timeout_s"], na_position="first").reset_index(drop=True)


# -- metadata and files -----------------------------------------------------------------------------------
def _git(*args) -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        r = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_metadata() -> dict:
    """Where and when results were measured: machine, CPUs, Python, bgwlab version/commit, date, load."""
    import datetime

    import psutil

    commit = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "machine": platform.node(),
        "platform": platform.platform(),
        "arch": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "bgwlab_version": __version__,
        "commit": commit or "unknown",
        "commit_dirty": bool(dirty) if dirty is not None else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "loadavg_start": list(os.getloadavg()),
        "user_is_root": os.geteuid() == 0,
    }


def _stem(name: str) -> str:
    return name[:-4] if name.endswith(".csv") else name


def save_results(df, out_dir, events=None, *, name: str = "results") -> dict:
    """Write ``NAME.csv``, ``NAME.metadata.json`` and (if given) ``NAME.events.jsonl`` to `out_dir`.

    Returns the paths written, keyed "csv", "metadata", "events".
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = _stem(name)
    paths = {"csv": out / f"{stem}.csv", "metadata": out / f"{stem}.metadata.json"}
    df.to_csv(paths["csv"], index=False)
    meta = dict(df.attrs.get("metadata") or {})
    meta["columns"] = list(df.columns)
    paths["metadata"].write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    if events is not None:
        paths["events"] = out / f"{stem}.events.jsonl"
        write_jsonl(events, paths["events"])
    return paths


def load_results(csv_path):
    """Read a results CSV back (with its ``.metadata.json`` neighbour in ``df.attrs``)."""
    import pandas as pd

    p = Path(csv_path)
    df = pd.read_csv(p)
    for col in ("correct", "spurious_timeout"):
        if col in df.columns:
            df[col] = df[col].astype(str).str.lower().eq("true")
    meta_path = p.with_name(_stem(p.name) + ".metadata.json")
    df.attrs["metadata"] = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return df


def load_events(csv_path) -> list[Event]:
    """The raw events saved next to a results CSV (``NAME.events.jsonl``), or []."""
    p = Path(csv_path)
    return read_events(p.with_name(_stem(p.name) + ".events.jsonl"))
