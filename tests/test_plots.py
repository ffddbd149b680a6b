"""Figures drawn from saved results: the data each figure draws, plus PNG/SVG smoke tests.

The results here are synthetic (made up in this file, saved to CSV and read back), so
every expected median and rate is known exactly and no test depends on timing or fonts.
"""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib.testing.compare import compare_images

from bgwlab import Event
from bgwlab.lab.experiments import COLUMNS, load_events, load_results, save_results
from bgwlab.lab.plots import (LabFigure, decomposition_table, median_interval, plot_death_detection,
                              plot_decomposition, plot_headline,
                              plot_latency_cdf, plot_timeline, plot_verdict_matrix, save_figure,
                              split_events_by_load, wilson_interval)


def _row(**kw):
    base = dict.fromkeys(COLUMNS, np.nan)
    base.update(order=0, status="", cluster=0, slot=0, generation=0, t_registered_ns=0, t_verdict_ns=0,
                poll_s=0.01, trial=0, truth_reason="", failure_event_ms=np.nan, forked_ms=np.nan)
    base.update(kw)
    v, t = base["verdict"], base["truth"]
    base["correct"] = (v == "started") == (t == "started")
    base["spurious_timeout"] = v == "timed_out" and t == "started"
    base["label"] = f"timeout({base['timeout_s']:g})" if base["strategy"] == "timeout" else base["strategy"]
    return base


def synthetic_results() -> pd.DataFrame:
    rows = []
    gen = iter(range(1, 10_000))

    def add(**kw):
        rows.append(_row(generation=next(gen), order=len(rows), **kw))

    # failed starts (idle): known times to verdict
    for ms in (0.3, 0.4, 0.5):
        add(strategy="notify", scenario="fork_failure", load="idle", verdict="failed", truth="failed",
            time_to_verdict_ms=ms, wait_cpu_ms=0.1)
    for ms in (10.0, 11.0, 12.0):
        add(strategy="poll_pid", scenario="fork_failure", load="idle", verdict="failed", truth="failed",
            time_to_verdict_ms=ms, wait_cpu_ms=0.1)
    for T in (0.01, 0.1):
        for extra in (0.1, 0.2, 0.3):
            add(strategy="timeout", timeout_s=T, scenario="fork_failure", load="idle", verdict="timed_out",
                truth="failed", time_to_verdict_ms=T * 1000 + extra, wait_cpu_ms=0.2)
    # good starts: idle never spurious; busy spurious 2/4 at T=10 ms, 0/4 at T=100 ms
    lat = {"idle": [1.0, 1.5, 2.0, 2.5], "busy": [3.0, 8.0, 20.0, 40.0]}
    for load in ("idle", "busy"):
        sc = "ok" if load == "idle" else "busy"
        for x in lat[load]:
            add(strategy="notify", scenario=sc, load=load, verdict="started", truth="started",
                time_to_verdict_ms=x + 0.2, start_latency_ms=x, wait_cpu_ms=0.1)
            for T in (0.01, 0.1):
                v = "timed_out" if x > T * 1000 else "started"
                add(strategy="timeout", timeout_s=T, scenario=sc, load=load, verdict=v, truth="started",
                    time_to_verdict_ms=min(x, T * 1000), start_latency_ms=x, wait_cpu_ms=0.1)
    return pd.DataFrame(rows, columns=COLUMNS)


def synthetic_events() -> list[Event]:
    """Two notify handles (cluster 0): stage times in ms are known."""
    evs = []
    stages = {1: (1.0, 0.5, 0.5, 0.1, 1.0), 2: (3.0, 0.5, 1.5, 0.3, 2.0)}
    for gen, (seen, until_fork, fork, notify, wake) in stages.items():
        t0 = gen * 1_000_000_000
        t = t0
        marks = [("registered", "backend", 0)]
        for kind, src, dt in (("request_seen", "postmaster", seen), ("fork_attempted", "postmaster", until_fork),
                              ("forked", "postmaster", fork), ("notified", "postmaster", notify),
                              ("woke", "backend", wake)):
            marks.append((kind, src, dt))
        for kind, src, dt in marks:
            t += int(dt * 1e6)
            detail = {"cluster": 0, "name": f"ok-{gen}"}
            if kind == "notified":
                detail["reason"] = "forked"
            if kind == "woke":
                detail.update(wait="startup", status="started")
            evs.append(Event(t, kind, src, 10, 0, gen, detail))
        evs.append(Event(t0 + 2_500_000, "reached_main", "worker", 11, 0, gen, {"cluster": 0}))
        evs.append(Event(t + 1_000_000, "verdict", "backend", 10, 0, gen,
                         {"cluster": 0, "strategy": "notify", "verdict": "started"}))
        evs.append(Event(t + 12_000_000, "exited", "postmaster", 10, 0, gen, {"cluster": 0}))
    return sorted(evs, key=lambda e: e.t_ns)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("results")
    paths = save_results(synthetic_results(), d, synthetic_events(), name="synthetic")
    df, events = load_results(paths["csv"]), load_events(paths["csv"])
    # matplotlib keeps the font files it has loaded open (a cache, not a leak): load them
    # here, before the per-test fd check starts counting.
    for fig in (plot_headline(df), plot_latency_cdf(df), plot_timeline(events),
                plot_decomposition(events), plot_verdict_matrix(df)):
        save_figure(fig, d / "warmup")
    return df, events


def _line(fig, gid):
    for ax in fig.axes:
        for line in ax.get_lines():
            if line.get_gid() == gid:
                return line
    raise AssertionError(f"no line with gid {gid!r}")


def test_headline_draws_the_medians_and_rates(saved):
    df, _ = saved
    fig = plot_headline(df)
    assert isinstance(fig, LabFigure) and len(fig.axes) == 2
    to = _line(fig, "timeout-failed")
    np.testing.assert_allclose(to.get_xdata(), [10, 100])
    np.testing.assert_allclose(to.get_ydata(), [10.2, 100.2])
    np.testing.assert_allclose(_line(fig, "notify-failed:fork_failure").get_ydata(), [0.4, 0.4])
    np.testing.assert_allclose(_line(fig, "poll_pid-failed").get_ydata(), [11, 11])
    np.testing.assert_allclose(_line(fig, "spurious-busy").get_ydata(), [50, 0])
    np.testing.assert_allclose(_line(fig, "spurious-idle").get_ydata(), [0, 0])
    np.testing.assert_allclose(_line(fig, "notify-spurious").get_ydata(), [0, 0])
    p90 = np.quantile(np.repeat([3.0, 8.0, 20.0, 40.0], 3), 0.9)  # every good start counts once
    np.testing.assert_allclose(_line(fig, "busy-p90").get_xdata(), [p90, p90])
    assert fig.axes[0].get_xscale() == "log"


def test_headline_into_given_axes(saved):
    df, _ = saved
    fig = LabFigure()
    a, b = fig.subplots(1, 2)
    assert plot_headline(df, ax=(a, b)) is fig and len(fig.axes) == 2
    fig1 = LabFigure()
    ax = fig1.subplots()
    assert plot_headline(df, ax=ax) is fig1
    assert len(fig1.axes) == 2  # the rate went onto a twin y axis
    np.testing.assert_allclose(_line(fig1, "spurious-busy").get_ydata(), [50, 0])


def test_latency_cdf_per_load(saved):
    df, _ = saved
    fig = plot_latency_cdf(df)
    busy = _line(fig, "cdf-busy")
    # three rows per latency (notify + two timeouts), all with the same start latency
    np.testing.assert_allclose(busy.get_xdata(), np.repeat([3.0, 8.0, 20.0, 40.0], 3))
    assert busy.get_ydata()[-1] == pytest.approx(1.0)
    assert np.all(np.diff(_line(fig, "cdf-idle").get_xdata()) >= 0)


def test_latency_cdf_names_only_the_timeouts_it_draws(saved):
    df, _ = saved
    with_T = plot_latency_cdf(df).axes[0]
    assert "timeouts T" in with_T.get_xlabel()
    assert sorted(ln.get_gid() for ln in with_T.get_lines() if str(ln.get_gid()).startswith("timeout-")) \
        == ["timeout-0.01", "timeout-0.1"]
    notify_only = plot_latency_cdf(df[df.strategy == "notify"].assign(timeout_s=np.nan)).axes[0]
    assert "timeout" not in notify_only.get_xlabel()
    assert not [ln for ln in notify_only.get_lines() if str(ln.get_gid()).startswith("timeout-")]


def test_timeline_lanes(saved):
    _, events = saved
    fig = plot_timeline(events)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert len(labels) == 6 and sum("registrant" in lb for lb in labels) == 2
    assert any("ok-1" in lb for lb in labels)
    reached = [ln for ln in ax.get_lines() if ln.get_gid() == "ev-reached_main"]
    assert sorted(float(ln.get_xdata()[0]) for ln in reached) == [2.5, 2.5]
    one = plot_timeline(events, slots=[(0, 2)])
    assert len(one.axes[0].get_yticklabels()) == 3


def test_decomposition_stacks_stage_medians(saved):
    _, events = saved
    fig = plot_decomposition(events)
    widths = {p.get_gid(): p.get_width() for p in fig.axes[0].patches}
    expect = {"request seen": 2.0, "until fork": 0.5, "fork()": 1.0, "notify": 0.2, "wake": 1.5}
    for stage, ms in expect.items():
        assert widths[f"stage-all-{stage}"] == pytest.approx(ms), stage


def test_decomposition_one_bar_per_load_and_its_table(saved):
    _, events = saved
    df = pd.DataFrame({"cluster": [0, 0], "slot": [0, 0], "generation": [1, 2], "load": ["idle", "busy"]})
    groups = split_events_by_load(events, df)
    fig = plot_decomposition(groups)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["busy", "idle"]  # top to bottom: idle, busy
    widths = {p.get_gid(): p.get_width() for p in ax.patches}
    assert widths["stage-idle-request seen"] == pytest.approx(1.0)
    assert widths["stage-busy-request seen"] == pytest.approx(3.0)
    table = decomposition_table(groups)
    assert list(table.index) == ["idle", "busy"]
    assert table.loc["busy", "fork()"] == pytest.approx(1.5) and table.loc["idle", "n"] == 1


def test_split_events_by_load():
    df = pd.DataFrame({"cluster": [0, 0], "slot": [0, 0], "generation": [1, 2], "load": ["idle", "busy"]})
    groups = split_events_by_load(synthetic_events(), df)
    assert set(groups) == {"idle", "busy"}
    assert {e.generation for e in groups["busy"]} == {2}


def test_verdict_matrix_and_death_detection(saved):
    df, _ = saved
    fig = plot_verdict_matrix(df)
    img = next(im for im in fig.axes[0].get_images() if im.get_gid() == "verdict-matrix")
    arr = np.asarray(img.get_array())
    assert np.nanmin(arr) == 50 and np.nanmax(arr) == 100  # busy x timeout(0.01): 2 of 4 right
    death = pd.DataFrame({"method": ["sigusr1", "pidfd", "poll"] * 2, "latency_ms": [1, 0.5, 5, 2, 0.6, 9]})
    fig2 = plot_death_detection(death)
    np.testing.assert_allclose(sorted(_line(fig2, "death-poll").get_xdata()), [5, 9])


def test_verdict_matrix_prints_the_interval_of_each_median(saved):
    df, _ = saved
    fig = plot_verdict_matrix(df)
    cell = next(t for t in fig.axes[0].texts if t.get_gid() == "cell-busy-timeout(0.01)")
    # busy x timeout(0.01): 2 of 4 right; times 3, 8, 10, 10 ms -> median 9 ms, 4 values -> whole range
    lines = cell.get_text().split("\n")
    assert lines[0] == "50%" and lines[1] == "9.0 ms" and lines[2] == "[3.0 ms–10 ms]"
    assert "interval" in fig.axes[0].get_title()


def test_median_interval():
    lo, hi = median_interval(range(30))        # n = 30: x(10) .. x(21), 1-based
    assert (lo, hi) == (9.0, 20.0)
    assert median_interval([5, 1, 3]) == (1.0, 5.0)   # too few for 95 %: the whole range
    v = np.random.default_rng(1).normal(size=200)
    lo, hi = median_interval(v)
    assert lo < np.median(v) < hi and hi - lo < 0.5
    assert np.isnan(median_interval([])[0])


def test_wilson_interval():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0 and 0 < hi < 0.35
    lo, hi = wilson_interval(5, 10)
    assert lo < 0.5 < hi
    assert np.isnan(wilson_interval(0, 0)[0])


def test_save_figure_is_deterministic_and_renders(saved, tmp_path):
    df, _ = saved
    png1, svg1 = save_figure(plot_headline(df), tmp_path / "a")
    png2, svg2 = save_figure(plot_headline(df), tmp_path / "b")
    assert png1.name == "a.png" and svg1.name == "a.svg"
    assert png1.read_bytes() == png2.read_bytes()
    assert svg1.read_bytes() == svg2.read_bytes()
    assert b"<svg" in svg1.read_bytes()[:500]
    image = matplotlib.image.imread(png1)
    assert image.shape[0] > 300 and image.shape[1] > 600
    assert compare_images(str(png1), str(png2), tol=1) is None


def test_plots_change_no_global_state(saved):
    import matplotlib.pyplot as plt

    df, events = saved
    before = dict(matplotlib.rcParams)
    figs = set(plt.get_fignums())
    for fig in (plot_headline(df), plot_latency_cdf(df), plot_timeline(events), plot_decomposition(events)):
        assert fig._repr_png_()[:4] == b"\x89PNG"
    assert set(plt.get_fignums()) == figs
    after = dict(matplotlib.rcParams)
    assert {k for k in before if before[k] != after[k]} == set()
