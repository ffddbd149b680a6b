"""The named experiments -- what ``bgwlab experiment NAME`` runs -- and the headline numbers.

``headline_experiment`` is the grid behind the headline figure, ``matrix_experiment``
every scenario x every strategy; ``EXPERIMENTS`` names them with ``death`` (death
detection); ``run_experiment(name)`` runs one of them, or one scenario (``SCENARIOS``) as
a grid.  ``headline_table`` turns results into the headline numbers.
"""

from __future__ import annotations

from .death import death_experiment
from .grids import HEADLINE_TIMEOUTS, QUICK_TIMEOUTS, quick_mode, run_grid
from .scenarios import SCENARIOS

__all__ = ["EXPERIMENTS", "headline_experiment", "matrix_experiment", "run_experiment", "headline_table"]


# -- named experiments (the CLI) ------------------------------------------------------------------------
EXPERIMENTS = {
    "headline": "failed-start report time and spurious timeouts vs T (the headline figure)",
    "matrix": "every scenario x every strategy, idle (is any strategy ever wrong?)",
    "death": "learning that a running worker died: SIGUSR1 vs pidfd vs polling",
    "parallel": "toy Gather: first message / result / error vs nworkers, idle and busy (issue 13)",
}


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
    if name == "parallel":
        from .parallel import parallel_experiment

        return parallel_experiment(quick=q, progress=progress, trials=trials, seed=seed, events=events,
                                   **({"loads": tuple(loads)} if loads else {}))
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
