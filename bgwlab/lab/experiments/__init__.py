"""Experiments: scenarios x waiting strategies x timeouts x loads, measured for real.

A **trial** registers one sentinel worker in a scenario, waits for it with one strategy
under one load, and judges the verdict against the cluster's event log, never against
the strategy; a worker that starts after a strategy gave up on it is a **spurious
timeout** (``trials`` says what a trial records).  The modules:

* ``scenarios`` -- what goes wrong: ``SCENARIOS``, ``Scenario``;
* ``trials`` -- ``TrialRunner``, ``run_trial``, ``ground_truth``, ``COLUMNS``;
* ``grids`` -- ``run_grid``: the cross product, its trial order shuffled (seeded) inside
  each load block; ``quick_mode``;
* ``death`` -- ``death_experiment``: three ways of learning that a running worker died
  (SIGUSR1 from the postmaster, a pidfd, polling);
* ``named`` -- what ``bgwlab experiment NAME`` runs: ``headline_experiment`` (the grid
  behind the headline figure), ``matrix_experiment``, ``run_experiment``; and
  ``headline_table``;
* ``results`` -- ``save_results`` writes CSV + metadata JSON (+ events JSON Lines),
  ``load_results`` reads them back; ``run_metadata``.

Results are tidy pandas DataFrames with the run metadata in ``df.attrs["metadata"]``.
Every public name is importable from this package (``from bgwlab.lab.experiments import
run_grid``).  Quick mode (``quick=True`` or ``BGWLAB_QUICK=1``) shrinks every grid to a
few seconds.
"""

from .death import DEATH_METHODS, death_experiment
from .grids import HEADLINE_TIMEOUTS, QUICK_TIMEOUTS, QUICK_TRIALS, plan_grid, quick_mode, run_grid
from .named import EXPERIMENTS, headline_experiment, headline_table, matrix_experiment, run_experiment
from .results import load_events, load_results, run_metadata, save_results
from .scenarios import SCENARIOS, Scenario, get_scenario
from .trials import COLUMNS, RUN_MS, SETTLE_S, TrialRunner, ground_truth, run_trial

__all__ = ["Scenario", "SCENARIOS", "TrialRunner", "run_trial", "run_grid", "headline_experiment",
           "death_experiment", "run_experiment", "EXPERIMENTS", "save_results", "load_results",
           "load_events", "run_metadata", "ground_truth", "plan_grid", "headline_table", "quick_mode",
           "COLUMNS", "HEADLINE_TIMEOUTS", "RUN_MS",
           "get_scenario", "matrix_experiment", "DEATH_METHODS", "QUICK_TIMEOUTS", "QUICK_TRIALS", "SETTLE_S"]
