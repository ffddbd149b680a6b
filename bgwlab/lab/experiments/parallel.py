"""Parallel query (issue 13): how fast a leader gets its first tuple, its result, or its error.

``parallel_experiment`` runs the toy Gather (``bgwlab.parallel.gather.run_gather``) on a
cluster with ``slots`` worker slots (4), for every ``nworkers`` in the grid (0 -- the
leader alone -- up to more than there are slots, so that launched < planned, unless a
worker finishes while launch() still registers and frees its slot), idle and
busy (``CpuHogs``: 2 spinning processes per CPU), and with failures injected into worker
1 of 2: ``fork_failure`` (the postmaster's fork fails), ``early_crash`` (the worker dies
before its code), ``worker_error`` (the worker raises after its first batch).  Cells run
in a shuffled (seeded) order inside each load block.

One row per trial: ``load, trial, case, nworkers, launched, leader_shares, fault,
outcome, failed_worker, error_detected, correct, launch_ms, first_message_ms, result_ms,
error_ms, closed_ms`` (every time from before ``ParallelContext(...)``; ``error_ms`` when
the leader holds the exception, ``closed_ms`` once the block has terminated the other
workers, waited for them and freed the segment).  ``bgwlab experiment
parallel --out DIR`` writes ``parallel.csv``, ``parallel.metadata.json`` and the figures
``parallel_times``, ``parallel_launched`` and ``parallel_failures`` (PNG + SVG).
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

from .grids import quick_mode
from .results import run_metadata

__all__ = ["FAULTS", "parallel_experiment", "parallel_table", "run_cli"]

FAULTS = ("fork_failure", "early_crash", "worker_error")
PRELOAD = ("bgwlab.parallel.examples", "bgwlab.parallel.worker")
COLUMNS = ["order", "load", "trial", "case", "nworkers", "launched", "leader_shares", "fault",
           "outcome", "failed_worker", "error_detected", "correct", "launch_ms",
           "first_message_ms", "result_ms", "error_ms", "closed_ms"]


def _fault(name: str):
    from ... import Fault

    if name == "fork_failure":
        return {1: Fault.fork_failure()}
    if name == "early_crash":
        return {1: Fault.crash_before_main(exit_code=1)}
    return None


def _trial(backend, rows: int, nworkers: int, fault: str) -> dict:
    from ...parallel.gather import run_gather

    r = run_gather(backend, rows, nworkers, faults=_fault(fault),
                   fail_after=1 if fault == "worker_error" else None,
                   fail_worker=1 if fault == "worker_error" else None)
    expected = {"none": "ok", "fork_failure": "ParallelWorkerFailed",
                "early_crash": "ParallelWorkerFailed", "worker_error": "ParallelWorkerError"}[fault]
    return dict(nworkers=nworkers, launched=r.launched, leader_shares=len(r.leader_shares),
                fault=fault, outcome=r.outcome,
                failed_worker=-1 if r.failed_worker is None else r.failed_worker,
                error_detected=(r.outcome == expected) if fault != "none" else r.error is None,
                correct=bool(r.correct) if r.error is None else False,
                launch_ms=r.launch_ms, first_message_ms=r.first_message_ms,
                result_ms=r.result_ms, error_ms=r.error_ms, closed_ms=r.closed_ms)


def parallel_experiment(quick: bool = False, progress: bool = True, *, trials: int | None = None,
                        nworkers=None, loads=("idle", "busy"), faults=FAULTS, rows: int | None = None,
                        slots: int = 4, seed: int = 0, events: list | None = None):
    """The grid described in the module docstring; returns a DataFrame (metadata in attrs)."""
    import pandas as pd
    from tqdm.auto import tqdm

    from ... import Cluster
    from ..load import CpuHogs

    q = quick_mode(quick)
    if trials is None:
        trials = 1 if q else 5
    if nworkers is None:
        nworkers = (0, 2, slots + 2) if q else (0, 1, 2, 3, 4, slots + 2)
    if rows is None:
        rows = 40_000 if q else 400_000
    for ln in loads:
        if ln not in ("idle", "busy"):
            raise ValueError(f"unknown load {ln!r} for the parallel experiment; choose idle or busy")
    cells = [("scale", n, "none") for n in nworkers] + [("fault", 2, f) for f in faults]
    meta = run_metadata()
    t_start = time.monotonic()
    rng = random.Random(seed)
    out = []
    bar = tqdm(total=len(loads) * trials * len(cells), desc="parallel", disable=not progress)
    try:
        for ln in loads:
            order = [(c, k) for c in cells for k in range(trials)]
            rng.shuffle(order)
            c = Cluster.start(max_workers=slots, preload=PRELOAD)
            try:
                b = c.connect()
                hogs = CpuHogs() if ln == "busy" else CpuHogs(0)
                with hogs:
                    for (case, n, fault), k in order:
                        row = dict(order=len(out), load=ln, trial=k, case=case)
                        row.update(_trial(b, rows, n, fault))
                        out.append(row)
                        bar.update(1)
                b.detach()
            finally:
                if events is not None:
                    events.extend(c.events())
                c.stop()
    finally:
        bar.close()
    df = pd.DataFrame(out, columns=COLUMNS)
    meta.update({"experiment": {"name": "parallel", "quick": q, "trials": trials,
                                "nworkers": list(nworkers), "loads": list(loads), "faults": list(faults),
                                "rows": rows, "slots": slots, "seed": seed,
                                "fault_target": "worker 1 of 2",
                                "times_from": "before ParallelContext(...)"},
                 "n_trials": len(df), "duration_s": round(time.monotonic() - t_start, 3),
                 "loadavg_end": list(os.getloadavg())})
    df.attrs["metadata"] = meta
    return df


def parallel_table(df):
    """Medians per load x case x nworkers x fault: launched, times, errors detected."""
    g = df.groupby(["load", "case", "nworkers", "fault"], sort=True)
    t = g.agg(trials=("trial", "size"), launched=("launched", "median"),
              first_message_ms=("first_message_ms", "median"), result_ms=("result_ms", "median"),
              error_ms=("error_ms", "median"), detected=("error_detected", "sum"),
              correct=("correct", "sum"))
    return t.reset_index()


def draw(df, out: Path, name: str = "parallel") -> list[Path]:
    from ...parallel import plots
    from ..plots import save_figure

    written = []
    written.extend(save_figure(plots.plot_parallel_times(df), out / f"{name}_times"))
    written.extend(save_figure(plots.plot_planned_vs_launched(df), out / f"{name}_launched"))
    if (df.fault != "none").any():
        written.extend(save_figure(plots.plot_failure_detection(df), out / f"{name}_failures"))
    return written


def run_cli(args) -> int:
    """``bgwlab experiment parallel``: run, save CSV + metadata + events, draw, summarize."""
    import pandas as pd

    from .results import save_results

    out = args.out or Path("bgwlab-parallel")
    events: list = []
    df = parallel_experiment(quick=args.quick, progress=not args.no_progress, trials=args.trials,
                             loads=tuple(args.load) if getattr(args, "load", None) else ("idle", "busy"),
                             seed=args.seed, events=events)
    out.mkdir(parents=True, exist_ok=True)
    paths = save_results(df, out, events, name="parallel")
    figs = draw(df, out)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(parallel_table(df).round(1).to_string(index=False))
    meta = df.attrs["metadata"]
    print(f"\n{meta['n_trials']} trials in {meta['duration_s']:.1f} s on {meta.get('cpu_count')} CPUs")
    for p in [*paths.values(), *figs]:
        print(f"wrote {p}")
    return 0
