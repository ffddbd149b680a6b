"""The experiment runner, its results files, the loads, and the ground truth."""

from __future__ import annotations

import json
import random

import psutil
import pytest

from bgwlab import Cluster, Event
from bgwlab.lab.experiments import (COLUMNS, SCENARIOS, death_experiment, ground_truth,
                                    headline_table, load_events, load_results, plan_grid,
                                    quick_mode, run_grid, run_metadata, run_trial, save_results)
from bgwlab.lab.load import LOADS, CpuHogs, PostmasterStalls, get_load
from bgwlab.lab.strategies import Notify, Timeout

from conftest import wait_until

REQUIRED = ["strategy", "scenario", "timeout_s", "load", "trial", "verdict", "truth",
            "time_to_verdict_ms", "wait_cpu_ms"]


@pytest.fixture(scope="module")
def grid():
    events = []
    df = run_grid(["ok", "fork_failure"], ["notify", "timeout"], [0.02], ["idle"], 2,
                  progress=False, seed=1, events=events)
    return df, events


def test_run_grid_schema_and_truth(grid):
    df, _ = grid
    assert set(REQUIRED) <= set(df.columns) and list(df.columns) == COLUMNS
    assert len(df) == 2 * 2 * 2
    assert sorted(df.order) == list(range(len(df)))
    assert set(df.strategy) == {"notify", "timeout"}
    assert set(df[df.strategy == "timeout"].timeout_s) == {0.02}
    assert df[df.strategy == "notify"].timeout_s.isna().all()
    assert (df[df.scenario == "ok"].truth == "started").all()
    assert (df[df.scenario == "fork_failure"].truth == "failed").all()
    assert (df[df.strategy == "notify"].correct).all()
    assert set(df[(df.strategy == "timeout") & (df.scenario == "fork_failure")].verdict) == {"timed_out"}
    assert (df.time_to_verdict_ms >= 0).all() and (df.wait_cpu_ms >= 0).all()
    assert df[df.truth == "started"].start_latency_ms.notna().all()


def test_run_grid_metadata(grid):
    df, _ = grid
    meta = df.attrs["metadata"]
    for key in ("machine", "cpu_count", "python", "bgwlab_version", "commit", "date",
                "loadavg_start", "duration_s", "experiment"):
        assert key in meta, key
    assert meta["n_trials"] == len(df)
    assert meta["experiment"]["scenarios"] == ["ok", "fork_failure"]
    assert meta["experiment"]["seed"] == 1


def test_truth_in_rows_matches_the_saved_events(grid):
    df, events = grid
    assert {e.kind for e in events} >= {"registered", "forked", "reached_main", "fork_failed", "verdict"}
    for r in df.itertuples():
        mine = [e for e in events if e.detail.get("cluster") == r.cluster]
        assert ground_truth(mine, r.slot, r.generation)[0] == r.truth


def test_trial_order_is_shuffled_within_each_load_and_reproducible():
    from bgwlab.lab.experiments.grids import _expand_strategies

    sts = _expand_strategies(["notify", "timeout"], [0.01, 0.1], 0.01)
    plan = plan_grid(["ok", "fork_failure", "busy"], sts, ["idle"], 5, random.Random(3))
    assert list(plan) == ["idle", "busy"]  # busy runs under its own load only
    assert {sc.name for sc, _, _ in plan["busy"]} == {"busy"}
    idle = [(sc.name, st.label, k) for sc, st, k in plan["idle"]]
    assert len(idle) == len(set(idle)) == 2 * 3 * 5
    assert idle != sorted(idle)  # interleaved, not one cell after another
    first_half = {label for _, label, _ in idle[: len(idle) // 2]}
    assert first_half == {"notify", "timeout(0.01)", "timeout(0.1)"}
    again = plan_grid(["ok", "fork_failure", "busy"], sts, ["idle"], 5, random.Random(3))
    assert [(sc.name, st.label, k) for sc, st, k in again["idle"]] == idle


def test_save_and_load_results_round_trip(grid, tmp_path):
    df, events = grid
    paths = save_results(df, tmp_path, events, name="run")
    assert {p.name for p in paths.values()} == {"run.csv", "run.metadata.json", "run.events.jsonl"}
    back = load_results(paths["csv"])
    assert list(back.columns) == COLUMNS
    assert back.correct.dtype == bool and back.spurious_timeout.dtype == bool
    assert back.verdict.tolist() == df.verdict.tolist()
    assert back.attrs["metadata"]["commit"] == df.attrs["metadata"]["commit"]
    meta = json.loads(paths["metadata"].read_text())
    assert meta["columns"] == COLUMNS
    again = load_events(paths["csv"])
    assert len(again) == len(events)
    assert {e.detail["cluster"] for e in again} == {e.detail["cluster"] for e in events}


def test_headline_table(grid):
    t = headline_table(grid[0])
    row = t[t.label == "timeout(0.02)"].iloc[0]
    assert row.failed_report_median_ms >= 20
    assert row.n_failed == 2
    assert t[t.label == "notify"].iloc[0].wrong_verdicts == 0


def test_ground_truth_rules():
    def ev(kind, slot=0, gen=1, t=0):
        return Event(t, kind, "postmaster", 1, slot, gen, {})

    assert ground_truth([ev("forked"), ev("reached_main", t=1), ev("exited", t=2)], 0, 1) == \
        ("started", "reached_main")
    assert ground_truth([ev("fork_failed")], 0, 1) == ("failed", "fork_failed")
    assert ground_truth([ev("forked"), ev("early_crash"), ev("exited")], 0, 1) == ("failed", "early_crash")
    assert ground_truth([ev("forked"), ev("exited")], 0, 1) == ("failed", "exited before main")
    assert ground_truth([ev("reached_main", gen=2)], 0, 1) == ("failed", "never started")  # other generation
    assert ground_truth([ev("registered"), Event(5, "postmaster_died", "backend", 1, 0, 1, {})], 0, 1) == \
        ("failed", "postmaster_died")


def test_run_trial_on_its_own_cluster():
    row = run_trial("early_crash", "timeout", timeout_s=0.03)
    assert (row["verdict"], row["truth"], row["truth_reason"]) == ("timed_out", "failed", "early_crash")
    assert set(REQUIRED) <= set(row)


def test_run_trial_on_a_given_cluster():
    with Cluster.start(max_workers=2) as cluster:  # without the preload: the worker imports it
        row = run_trial("ok", Notify(), cluster=cluster, load="idle")
        assert cluster.alive
    assert (row["verdict"], row["truth"]) == ("started", "started")


def test_busy_scenario_runs_under_the_busy_load():
    df = run_grid(["busy"], ["notify"], [], ["idle"], 2, progress=False)
    assert set(df.load) == {"busy"} and (df.truth == "started").all() and df.correct.all()
    assert df.attrs["metadata"]["loads"]["busy"]["hogs"] == LOADS["busy"].n_hogs


def test_death_experiment_schema():
    df = death_experiment(trials=2, progress=False)
    assert set(df.method) == {"sigusr1", "pidfd", "poll"}
    assert len(df) == 6
    assert (df.latency_ms > 0).all()
    assert df.attrs["metadata"]["experiment"]["name"] == "death"


def test_quick_mode_env(monkeypatch):
    monkeypatch.delenv("BGWLAB_QUICK", raising=False)
    assert not quick_mode() and quick_mode(True)
    monkeypatch.setenv("BGWLAB_QUICK", "1")
    assert quick_mode()


def test_scenarios_and_metadata_names():
    assert set(SCENARIOS) == {"ok", "fork_failure", "early_crash", "slow_start", "busy",
                              "slot_exhaustion", "postmaster_death"}
    meta = run_metadata()
    assert meta["cpu_count"] >= 1 and len(meta["loadavg_start"]) == 3
    with pytest.raises(ValueError, match="unknown scenario"):
        run_trial("meteor", "notify")
    with pytest.raises(ValueError, match="unknown load"):
        get_load("volcano")


# -- loads -----------------------------------------------------------------------------------------
def test_cpu_hogs_spin_and_are_always_cleaned_up():
    with pytest.raises(RuntimeError):
        with CpuHogs(2) as hogs:
            pids = hogs.pids
            assert len(pids) == 2
            procs = [psutil.Process(p) for p in pids]
            wait_until(lambda: all(p.cpu_times().user > 0.05 for p in procs), what="hogs spinning")
            raise RuntimeError("the body failed")
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert hogs.procs == []


def test_postmaster_stalls_stop_and_always_continue_the_postmaster():
    with Cluster.start(max_workers=2) as cluster:
        pm = psutil.Process(cluster.postmaster_pid)
        with pytest.raises(RuntimeError):
            with PostmasterStalls(cluster, period_s=0.05, stall_s=0.03) as stalls:
                wait_until(lambda: pm.status() == psutil.STATUS_STOPPED, what="postmaster stopped")
                raise RuntimeError("the body failed")
        assert stalls.stalls >= 1
        assert pm.status() != psutil.STATUS_STOPPED
        backend = cluster.connect()  # it still serves
        spec = Timeout(5).make_spec(cluster.directory, run_ms=0)
        h = backend.register_dynamic_worker(spec)
        assert Timeout(5).wait(backend, h, spec).verdict == "started"
        wait_until(lambda: h.get_pid()[0].name == "STOPPED", what="worker gone")
    with pytest.raises(ValueError):
        PostmasterStalls(cluster, period_s=0.1, stall_s=0.2)
