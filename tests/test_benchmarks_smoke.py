"""Smoke test of the benchmark suite (benchmarks/run.py --quick).

No timing is asserted here -- performance numbers belong to the benchmark's own output.
The test checks that one quick run completes, cleans up after itself (the module-level
leak check sees every orphan of the module-scoped run, since pytest is a child subreaper),
and produces the table and the files with the expected rows and columns and sane values.
The only time limit is a deadline that catches a hung run, far above a slow machine's.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


def _load_report():
    """benchmarks/report.py under a private name (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("_bgwlab_bench_report", BENCH / "report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


report = _load_report()

LATENCY_METRICS = [
    "bgwlab.start", "bgwlab.running", "bgwlab.death", "bgwlab.fail_injected", "bgwlab.crash",
    "bgwlab.start.heap200", "bgwlab.death.heap200", "bgwlab.fail_injected.heap200",
    "bgwlab.start.control", "bgwlab.death.control", "bgwlab.fail_injected.control",
    "bgwlab.start.log_off", "bgwlab.death.log_off", "bgwlab.fail_injected.log_off",
    "bgwlab.start.log_on", "bgwlab.death.log_on", "bgwlab.fail_injected.log_on",
    "bgwlab.start.mw64", "bgwlab.start.mw256", "bgwlab.start.mw1024",
    "raw_fork.start", "raw_fork.death", "raw_fork.start.heap200",
    "mp_fork.start", "mp_fork.death", "mp_fork.start.heap200",
    "mp_forkserver.start", "mp_spawn.start", "popen.start",
    "mp_forkserver.death", "mp_spawn.death", "popen.death",
]
RATE_METRICS = ["bgwlab.rate", "bgwlab.rate.4_registrants", "bgwlab.rate.heap200",
                "bgwlab.rate.4_registrants_heap200", "raw_fork.rate", "mp_fork.rate",
                "mp_fork.rate.heap200"]
EVENT_METRICS = ["eventlog.event.forked", "eventlog.event.registered", "eventlog.event.disabled"]


RUN_DEADLINE_S = 540  # a hang, not a slow run (~40 s on an idle 2-core machine)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run([sys.executable, str(BENCH / "run.py"), "--quick", "--no-progress",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=RUN_DEADLINE_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(RUN_DEADLINE_S + 60)  # the module's run is set up inside the first test
def test_quick_run_prints_the_table_and_targets(quick_run):
    _, stdout = quick_run
    assert "median" in stdout and "p99" in stdout
    for peer in report.PEERS:
        assert f"x {peer}" in stdout
    assert "Targets (issue 6)" in stdout and "Where the time goes" in stdout
    assert "bgwlab.start " in stdout and "mp_fork.start " in stdout


@pytest.mark.slow
def test_summary_csv_has_every_metric_with_sane_values(quick_run):
    out, _ = quick_run
    rows = _rows(out / "bench_quick.csv")
    assert list(rows[0]) == report.SUMMARY_COLUMNS
    by = {r["metric"]: r for r in rows}
    for m in LATENCY_METRICS + RATE_METRICS + EVENT_METRICS:
        assert m in by, f"missing metric {m}"
    busy = [m for m in by if m.startswith("bgwlab.start.mw1024_busy")] + ["bgwlab.start.busy_phase"]
    assert len(busy) == 2
    for m in LATENCY_METRICS + RATE_METRICS + EVENT_METRICS + busy:
        r = by[m]
        assert int(r["n"]) > 0
        for col in ("median", "p99", "mean", "min", "max"):
            v = float(r[col])
            # a rate window may close before a late runner's first cycle on a loaded
            # machine (0/s); a time is never 0
            assert math.isfinite(v) and (v >= 0 if m in RATE_METRICS else v > 0), (m, col, v)
        assert float(r["min"]) <= float(r["median"]) <= float(r["p99"]) <= float(r["max"])
        assert r["unit"] == report.UNITS[r["kind"]]
    # Ratios to every peer exist for start / death rows, and are consistent with the medians.
    for m in ("bgwlab.start", "bgwlab.death", "mp_fork.start"):
        for p in report.PEERS:
            x = float(by[m][f"x_{p}"])
            kind = "death" if ".death" in m else "start"
            expect = float(by[m]["median"]) / float(by[f"{p}.{kind}"]["median"])
            assert math.isfinite(x) and x > 0 and math.isclose(x, expect, rel_tol=1e-3)
    assert math.isclose(float(by["mp_fork.start"]["x_mp_fork"]), 1.0, rel_tol=1e-6)
    assert math.isnan(float(by["bgwlab.fail_injected"]["x_mp_fork"]))  # no peer for a failed start


@pytest.mark.slow
def test_samples_targets_decomposition_and_metadata(quick_run):
    out, _ = quick_run
    with gzip.open(out / "bench_quick_samples.csv.gz", "rt", newline="") as f:
        samples = list(csv.DictReader(f))
    assert {s["metric"] for s in samples} >= set(LATENCY_METRICS + RATE_METRICS)
    for s in samples:
        v = float(s["value"])
        assert math.isfinite(v) and (v >= 0 if s["metric"] in RATE_METRICS else v > 0), s

    targets = _rows(out / "bench_quick_targets.csv")
    names = [t["target"] for t in targets]
    assert "start notification median" in names and "death notification median" in names
    assert any(n.startswith("200 MB registrant") for n in names)
    assert any(n.startswith("event logging") for n in names)
    for t in targets:
        assert t["met"] in ("True", "False") and math.isfinite(float(t["value"]))

    dec = _rows(out / "bench_quick_decomposition.csv")
    assert ({d["path"] for d in dec} - {"fail_genuine"}
            == {"start", "death", "fail", "start.heap200", "fail.heap200",
                "start.control", "fail.control"})
    # the 200 MB registrant's and its control's stages come from their own trials: the
    # decomposition's total runs between the runner's own t0 and t1, so where every trial
    # decomposed its median is that registrant's median (not the lean one's)
    totals = {d["path"]: d for d in dec if d["stage"] == "total"}
    for path, metric in (("start.heap200", "bgwlab.start.heap200"),
                         ("fail.heap200", "bgwlab.fail_injected.heap200"),
                         ("start.control", "bgwlab.start.control"),
                         ("fail.control", "bgwlab.fail_injected.control")):
        mine = [float(s["value"]) for s in samples if s["metric"] == metric]
        assert 0 < int(totals[path]["n"]) <= len(mine), path
        if int(totals[path]["n"]) == len(mine):
            assert float(totals[path]["median_us"]) == pytest.approx(
                1000 * report.percentile(mine, 0.5), abs=1e-3), path  # (the CSV keeps ns)
    for d in dec:
        assert int(d["n"]) > 0, d
        assert math.isfinite(float(d["median_us"])) and float(d["median_us"]) >= 0
    stages = [d["stage"] for d in dec if d["path"] == "start"]
    assert "fork() in the postmaster" in stages and stages[-1] == "total"

    meta = json.loads((out / "bench_quick.meta.json").read_text())
    for key in ("date_utc", "cpu_count", "python", "commit", "loadavg_start", "loadavg_end",
                "loadavg_1min_during", "plan", "heap", "busy_processes_at_start", "busy_phase"):
        assert key in meta, key
    assert meta["plan"]["mode"] == "quick" and meta["cpu_count"] >= 1
    # every cluster's registrant waits with Backend's short slice (no --before here)
    assert meta["registrant_wait_slice_us"] and set(meta["registrant_wait_slice_us"].values()) == {100}
    # the heavy registrant holds the heap it was asked for (its RSS gain is not checked:
    # swap can hide it); 140 bytes per object, as benchmarks/peers.make_heap builds it
    heap = meta["heap"]
    assert heap["heavy"]["objects"] == heap["requested_mb"] * 2**20 // 140
    assert heap["heavy"]["rss_mb"] > 0 and heap["heavy"]["rss_before_mb"] > 0
    assert (out / "bench_quick.txt").read_text().startswith("bgwlab benchmark (quick)")


def test_before_patches_say_which_slices_their_clusters_keep(monkeypatch):
    spec = importlib.util.spec_from_file_location("_bgwlab_bench_run", BENCH / "run.py")
    run = importlib.util.module_from_spec(spec)
    monkeypatch.setattr(sys, "path", list(sys.path))  # (run.py puts benchmarks/ on it)
    loaded = set(sys.modules)
    sys.modules[spec.name] = run  # (its dataclasses look their module up)
    try:
        spec.loader.exec_module(run)
    finally:
        for name in set(sys.modules) - loaded:  # run, and the report it imports: not for others
            del sys.modules[name]
    assert run._before_slices(None) == (None, None)
    # an old engine's patch says nothing: both slices at the kernel's default, as it had them
    assert run._before_slices("at_8cb4ef5") == (None, None)
    # same_engine: the registrant's slice is the only difference
    assert run._before_slices("same_engine") == (100, None)
    # the fork path: an old engine's had only Python's; same_engine has the others'; and
    # python_fork_path differs from the others by the fork path alone
    assert run._before_fork_path(None) == run._before_fork_path("at_8cb4ef5") == "python"
    assert run._before_fork_path("same_engine") == "auto"
    assert run._before_fork_path("python_fork_path") == "python"
    assert run._before_slices("python_fork_path") == (100, 100)


def test_report_statistics_on_known_data():
    assert report.percentile([1, 2, 3, 4], 0.5) == 2.5
    assert report.percentile(list(range(101)), 0.99) == 99
    rows = report.summarize({"bgwlab.start": [1.0, 1.0, 1.0], "mp_fork.start": [2.0, 2.0],
                             "bgwlab.start.heap200": [1.5], "bgwlab.fail_injected": [3.0]})
    by = {r["metric"]: r for r in rows}
    assert by["bgwlab.start"]["x_mp_fork"] == 0.5
    assert by["bgwlab.start.heap200"]["vs_base"] == 1.5
    assert math.isnan(by["bgwlab.start"]["x_popen"])  # no popen row
    targets = {t["target"]: t for t in report.evaluate_targets(rows)}
    assert targets["start notification median"]["met"] is True
    assert targets["start median / multiprocessing fork median"]["value"] == 0.5
    assert targets["failed start reported (median)"]["met"] is False  # 3 ms > 2 ms
    # the heap's targets: against the lean registrant where no control ran, else the control
    assert targets["200 MB registrant: change of start median"]["value"] == 50.0
    rows = report.summarize({"bgwlab.start": [1.0], "bgwlab.start.heap200": [1.5],
                             "bgwlab.start.control": [1.4]})
    t = {t["target"]: t for t in report.evaluate_targets(rows)}["200 MB registrant: change of start median"]
    assert round(t["value"], 6) == round((1.5 / 1.4 - 1) * 100, 6) and "(control)" in t["note"]
    # event logging: the log_on control cluster where it ran, else the base cluster
    rows = report.summarize({"bgwlab.start": [1.0], "bgwlab.start.log_off": [1.1],
                             "bgwlab.start.log_on": [1.21]})
    t = {t["target"]: t for t in report.evaluate_targets(rows)}["event logging: added to start median"]
    assert round(t["value"], 6) == 10.0 and "control" in t["note"]
    rows = [r for r in rows if r["metric"] != "bgwlab.start.log_on"]
    t = {t["target"]: t for t in report.evaluate_targets(rows)}["event logging: added to start median"]
    assert round(t["value"], 6) == round((1.0 / 1.1 - 1) * 100, 6) and "control" not in t["note"]


def test_ratio_interval_separates_a_real_difference_from_noise():
    """The bootstrap interval of a ratio to PostgreSQL: it excludes 1 when one side is
    really twice as slow, spans 1 when both come from the same distribution, and the
    verdict says so."""
    import random as _random

    rng = _random.Random(7)
    same, double = [], []
    for rnd in range(40):
        for _ in range(10):
            x = rng.lognormvariate(0, 0.5)
            same += [("bgwlab.start", rnd, x), ("postgresql.start", rnd, rng.lognormvariate(0, 0.5))]
            double += [("bgwlab.start", rnd, 2 * x), ("postgresql.start", rnd, rng.lognormvariate(0, 0.5))]
    lo, hi = report.ratio_ci(double, "bgwlab.start", "postgresql.start", "median", resamples=300)
    assert 1.5 < lo < hi < 2.7
    lo, hi = report.ratio_ci(same, "bgwlab.start", "postgresql.start", "median", resamples=300)
    assert lo < 1.0 < hi
    assert all(math.isnan(v) for v in report.ratio_ci(same, "bgwlab.start", "postgresql.death", "p99"))

    def summary(rows):
        samples = {}
        for metric, _rnd, value in rows:
            samples.setdefault(metric, []).append(value)
        return report.summarize(samples)

    verdicts = {t["target"]: t for t in report.evaluate_targets(summary(double), double)}
    t = verdicts["x PostgreSQL: start median"]
    assert t["verdict"] == "missed" and t["ci_low"] > 1.0
    t = {t["target"]: t for t in report.evaluate_targets(summary(same), same)}["x PostgreSQL: start median"]
    assert t["verdict"].endswith("CI spans limit") and t["ci_low"] < 1.0 < t["ci_high"]


def _write_run(d: Path, commit: str, rows, dirty: bool = False) -> Path:
    d.mkdir()
    with gzip.open(d / "bench_full_samples.csv.gz", "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(["metric", "round", "value"])
        w.writerows(rows)
    (d / "bench_full.meta.json").write_text(json.dumps(
        {"commit": commit, "worktree_dirty": dirty, "cpu_model": "test", "cpu_count": 2,
         "python": "3.11", "date_utc": "2026-01-01", "loadavg_1min_during": {"median": 1.0}}))
    return d


def test_pool_runs_pools_samples_of_one_commit_and_refuses_mixed_commits(tmp_path, capsys):
    """benchmarks/pool_runs.py: the combined ratio is the geometric mean of the runs' own
    ratios (each within its run), inside its stratified bootstrap interval; runs of two
    commits, or of a dirty tree, are refused."""
    import random as _random

    spec = importlib.util.spec_from_file_location("_bgwlab_pool_runs", BENCH / "pool_runs.py")
    pool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pool)
    rng = _random.Random(11)

    def rows(factor):  # bgwlab's start = factor x PostgreSQL's distribution
        out = []
        for rnd in range(30):
            for _ in range(10):
                out += [("bgwlab.start", rnd, factor * rng.lognormvariate(0, 0.3)),
                        ("postgresql.start", rnd, rng.lognormvariate(0, 0.3)),
                        ("bgwlab.death", rnd, 0.5)]  # no PostgreSQL death: no row
        return out

    # one run at 1.2x, one at 2.0x: the combined ratio is their geometric mean
    a = _write_run(tmp_path / "a", "c0ffee", rows(1.2))
    b = _write_run(tmp_path / "b", "c0ffee", rows(2.0))
    out_csv = tmp_path / "pooled.csv"
    assert pool.main([str(a), str(b), "--resamples", "200", "--out", str(out_csv)]) == 0
    table = {r["target"]: r for r in csv.DictReader(out_csv.open())}
    assert set(table) == {"x PostgreSQL: start median", "x PostgreSQL: start p99"}
    med = table["x PostgreSQL: start median"]
    per_run = [float(x) for x in med["per_run"].split()]
    assert 1.05 < per_run[0] < 1.35 and 1.8 < per_run[1] < 2.2
    assert float(med["combined"]) == pytest.approx(math.sqrt(per_run[0] * per_run[1]), rel=1e-3)
    assert float(med["ci_low"]) < float(med["combined"]) < float(med["ci_high"])
    assert int(med["n_per_system"]) == 600 and med["runs_met"] == "0" and med["verdict"] == "missed"
    assert "2 runs of commit c0ffee" in capsys.readouterr().out
    meta = json.loads(Path(str(out_csv) + ".meta.json").read_text())
    assert [r["commit"] for r in meta["runs"]] == ["c0ffee", "c0ffee"] and meta["unit"].startswith("rounds")

    c = _write_run(tmp_path / "c", "beef00", rows(1.0))
    with pytest.raises(SystemExit):
        pool.main([str(a), str(c)])
    assert "different commits" in capsys.readouterr().err
    d = _write_run(tmp_path / "d", "c0ffee", rows(1.0), dirty=True)
    with pytest.raises(SystemExit):
        pool.main([str(a), str(d)])
    assert "dirty tree" in capsys.readouterr().err
