"""`bgwlab experiment parallel` (issue 13), in quick mode: it runs, saves, and its numbers make sense.

No timing thresholds: the checks are about what a leader must see -- launched never more
than planned (nor than the slots), the leader doing the shares of the workers it did not
get, the right answer, and every injected failure detected as the right exception, naming
the worker it was injected into.
"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from bgwlab.lab import cli
from bgwlab.lab.experiments import EXPERIMENTS
from bgwlab.lab.experiments.parallel import COLUMNS
from bgwlab.parallel import dsm

from conftest import our_segments


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("parallel")
    before = set(dsm.list_segments())
    rc = cli.main(["experiment", "parallel", "--quick", "--no-progress", "--out", str(out)])
    return rc, out, before


def test_it_is_a_named_experiment():
    assert "parallel" in EXPERIMENTS


def test_the_cli_writes_csv_metadata_and_figures(run):
    rc, out, before = run
    assert rc == 0
    for name in ("parallel.csv", "parallel.metadata.json", "parallel.events.jsonl",
                 "parallel_times.png", "parallel_launched.svg", "parallel_failures.png"):
        assert (out / name).stat().st_size > 0, name
    meta = json.loads((out / "parallel.metadata.json").read_text())
    assert meta["experiment"]["name"] == "parallel" and meta["experiment"]["quick"] is True
    assert meta["commit"] and meta["python"] and meta["columns"] == COLUMNS
    # ours only: /dev/shm is the machine's, and another run may have segments there now
    mine = our_segments(set(dsm.list_segments()) - before)
    assert not mine, f"a segment was left in /dev/shm: {mine}"


def test_launched_planned_and_the_leaders_share(run):
    _rc, out, _ = run
    df = pd.read_csv(out / "parallel.csv")
    assert list(df.columns) == COLUMNS
    assert set(df["load"]) == {"idle", "busy"}
    slots = json.loads((out / "parallel.metadata.json").read_text())["experiment"]["slots"]
    assert (df.launched <= df.nworkers).all()
    scale = df[df.case == "scale"]
    assert 0 in set(scale.nworkers) and scale.nworkers.max() > slots, "the grid must run out of slots"
    # Nothing else holds a slot in the experiment's cluster: at least what fits is launched,
    # without an error.  (More may be: a worker that finishes its share while launch() is
    # still registering frees its slot, as in PostgreSQL.)
    assert (scale.launched >= scale.nworkers.clip(upper=slots)).all()
    assert (scale.leader_shares == scale.nworkers.clip(lower=1) - scale.launched).all()
    assert (scale.outcome == "ok").all() and scale.correct.all() and scale.error_detected.all()
    for _, r in scale.iterrows():
        assert r.result_ms > 0 and math.isnan(r.error_ms)
        if r.launched:
            assert 0 < r.first_message_ms <= r.result_ms
        else:
            assert math.isnan(r.first_message_ms)  # the leader alone: no message at all


def test_every_injected_failure_is_detected_as_the_right_error(run):
    _rc, out, _ = run
    df = pd.read_csv(out / "parallel.csv")
    faults = df[df.fault != "none"]
    assert set(faults.fault) == {"fork_failure", "early_crash", "worker_error"}
    expected = {"fork_failure": "ParallelWorkerFailed", "early_crash": "ParallelWorkerFailed",
                "worker_error": "ParallelWorkerError"}
    for _, r in faults.iterrows():
        assert r.outcome == expected[r.fault] and r.error_detected
        assert r.failed_worker == 1  # the worker the fault was injected into
        assert r.error_ms > 0 and math.isnan(r.result_ms) and not r.correct
        assert r.launch_ms <= r.error_ms <= r.closed_ms  # held before the block's cleanup
