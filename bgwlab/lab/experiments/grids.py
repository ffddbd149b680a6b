"""Grids: scenario x strategy x T x load x trial, run in a shuffled order, as one DataFrame.

``run_grid`` expands the strategies (``"timeout"`` becomes one Timeout per T), plans the
trials with ``plan_grid`` -- one block per load, each block a cluster with its load
switched on once, the trials shuffled (seeded) within it, so that slow drift (the shared
machine heating up, another user's job) hits every strategy alike -- runs them with a
``TrialRunner`` and returns a tidy DataFrame with the run metadata in
``df.attrs["metadata"]``.

Quick mode (``quick=True`` or ``BGWLAB_QUICK=1``) shrinks every grid to a few seconds.
"""

from __future__ import annotations

import os
import random
import time

from ..load import get_load
from ..strategies import Strategy, Timeout, make_strategy
from .results import run_metadata
from .scenarios import get_scenario
from .trials import COLUMNS, RUN_MS, TrialRunner

__all__ = ["run_grid", "plan_grid", "quick_mode", "HEADLINE_TIMEOUTS", "QUICK_TIMEOUTS", "QUICK_TRIALS"]

HEADLINE_TIMEOUTS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
"""T grid: from below the busy start latency (tens of ms) to well above it."""

QUICK_TIMEOUTS = (0.01, 0.05, 0.2)
QUICK_TRIALS = 2  # at most this many trials per cell in quick mode


def quick_mode(quick: bool = False) -> bool:
    """True if `quick` or the environment says ``BGWLAB_QUICK=1``."""
    return bool(quick) or os.environ.get("BGWLAB_QUICK", "") not in ("", "0", "false", "no")


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
