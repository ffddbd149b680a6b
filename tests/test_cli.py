"""The ``bgwlab`` console script, end to end, in quick mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bgwlab.lab.cli import build_parser, main
from bgwlab.lab.experiments import COLUMNS, load_results


def bgwlab_command() -> list[str]:
    script = Path(sys.executable).with_name("bgwlab")
    return [str(script)] if script.exists() else [sys.executable, "-m", "bgwlab.lab.cli"]


def run(*args, env_extra=None, timeout=120) -> subprocess.CompletedProcess:
    env = dict(os.environ, BGWLAB_QUICK="1", **(env_extra or {}))
    return subprocess.run([*bgwlab_command(), *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    r = run("demo", "--out", str(out), "--no-progress")
    return r, out


def test_demo_end_to_end(demo):
    r, out = demo
    assert r.returncode == 0, r.stderr
    df = load_results(out / "headline.csv")
    assert list(df.columns) == COLUMNS
    assert set(df.strategy) == {"notify", "poll_pid", "timeout"}
    assert (df[df.strategy == "notify"].correct).all()
    meta = json.loads((out / "headline.metadata.json").read_text())
    assert meta["experiment"]["name"] == "headline" and meta["experiment"]["quick"] is True
    assert meta["cpu_count"] >= 1 and meta["commit"]
    for stem in ("headline", "latency_cdf", "timeline", "decomposition"):
        for suffix in (".png", ".svg"):
            f = out / (stem + suffix)
            assert f.exists() and f.stat().st_size > 1000, f
    assert (out / "headline.png").read_bytes()[:4] == b"\x89PNG"
    assert "notify" in r.stdout and "wrote" in r.stdout


def test_plot_redraws_from_csv(demo, tmp_path):
    _, out = demo
    r = run("plot", str(out / "headline.csv"), "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert {p.name for p in tmp_path.glob("*.png")} >= {"headline.png", "latency_cdf.png",
                                                        "timeline.png", "decomposition.png"}
    # redrawn from the CSV and its events, the figures are the ones the run drew
    from matplotlib.testing.compare import compare_images

    for stem in ("headline", "latency_cdf", "timeline", "decomposition"):
        assert compare_images(str(out / f"{stem}.png"), str(tmp_path / f"{stem}.png"), tol=0) is None, stem


def test_experiment_on_one_scenario(tmp_path):
    r = run("experiment", "fork_failure", "--strategies", "notify,timeout", "--timeouts", "0.02",
            "--trials", "2", "--out", str(tmp_path), "--no-progress")
    assert r.returncode == 0, r.stderr
    df = load_results(tmp_path / "fork_failure.csv")
    assert len(df) == 4 and set(df.label) == {"notify", "timeout(0.02)"}
    assert (df.truth == "failed").all()


def test_help_teaches():
    r = run("--help")
    assert r.returncode == 0
    for words in ("spurious timeout", "notify", "timeout(T)", "poll_pid", "event log", "demo",
                  "experiment", "plot"):
        assert words in r.stdout, words
    demo_help = build_parser().parse_args(["demo", "--quick"])
    assert demo_help.quick and demo_help.command == "demo"


def test_list_and_bad_input(capsys):
    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    assert "slot_exhaustion" in listing and "busy" in listing and "headline" in listing
    assert main(["experiment", "meteor"]) == 2
    assert "unknown experiment" in capsys.readouterr().out
    assert main(["plot", "/nonexistent/results.csv"]) == 2
    with pytest.raises(SystemExit):
        main(["experiment", "ok", "--timeouts", "soon"])


@pytest.fixture(scope="module")
def headline_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("headline")
    r = run("experiment", "headline", "--trials", "1", "--timeouts", "0.005,0.05", "--out", str(out),
            "--no-progress")
    return r, out


def _drawn_by_plot(csv: Path, out: Path) -> dict:
    """Run ``bgwlab plot`` in this process and keep the figures it saves, by file stem."""
    from unittest import mock

    from bgwlab.lab import plots

    figs = {}
    real = plots.save_figure

    def keep(fig, stem):
        figs[Path(stem).name] = getattr(fig, "figure", fig)
        return real(fig, stem)

    with mock.patch.object(plots, "save_figure", keep):
        assert main(["plot", str(csv), "--out", str(out)]) == 0
    return figs


def _texts(fig) -> str:
    from matplotlib.text import Text

    return "\n".join(t.get_text() for t in fig.findobj(Text))


def test_experiment_headline_runs_the_grid_it_was_given(headline_run):
    r, out = headline_run
    assert r.returncode == 0, r.stderr
    df = load_results(out / "headline.csv")
    assert set(df.strategy) == {"notify", "poll_pid", "timeout"}
    assert set(df[df.strategy == "timeout"].timeout_s) == {0.005, 0.05}
    assert set(df.scenario) >= {"ok", "fork_failure", "busy"}  # quick mode (BGWLAB_QUICK=1)
    # the handle strategies are never wrong; a timeout reports a failure only at T
    assert df[df.strategy.isin(["notify", "poll_pid"])].correct.all()
    failed_t = df[(df.strategy == "timeout") & (df.truth == "failed")]
    assert len(failed_t) and (failed_t.time_to_verdict_ms >= failed_t.timeout_s * 1000).all()
    assert "timeout(0.005)" in r.stdout and "timeout(0.05)" in r.stdout
    meta = json.loads((out / "headline.metadata.json").read_text())
    assert meta["experiment"]["name"] == "headline"
    assert meta["n_trials"] == len(df)


def test_plot_draws_the_numbers_in_the_csv(headline_run, tmp_path):
    """What `bgwlab plot` draws is what the CSV says: the timeout line of the headline
    figure sits at the median time to report a failure for each T, and the spurious-
    timeout lines at each load's rate."""
    import numpy as np

    _, out = headline_run
    df = load_results(out / "headline.csv")
    figs = _drawn_by_plot(out / "headline.csv", tmp_path)
    assert set(figs) == {"headline", "latency_cdf", "headline_verdicts", "timeline", "decomposition"}
    for stem in figs:
        assert (tmp_path / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
    left, right = figs["headline"].axes[:2]
    (line,) = [l for l in left.get_lines() if l.get_label().startswith("timeout(T)")]
    failed = df[(df.strategy == "timeout") & (df.truth == "failed")]
    med = failed.groupby("timeout_s").time_to_verdict_ms.median()
    assert np.allclose(line.get_xdata(), med.index * 1000)
    assert np.allclose(line.get_ydata(), med.values)
    started = df[(df.strategy == "timeout") & (df.truth == "started")]
    for load in ("idle", "busy"):
        (sp,) = [l for l in right.get_lines() if l.get_label() == f"timeout(T), {load}"]
        rate = started[started.load == load].groupby("timeout_s").spurious_timeout.mean()
        assert np.allclose(sp.get_xdata(), rate.index * 1000)
        assert np.allclose(sp.get_ydata(), 100 * rate.values)
    # the timeline draws the lanes of the workers it picked
    assert "registrant" in _texts(figs["timeline"]) and "postmaster" in _texts(figs["timeline"])


def test_experiment_death_and_its_plot(tmp_path):
    r = run("experiment", "death", "--trials", "2", "--out", str(tmp_path / "d"), "--no-progress")
    assert r.returncode == 0, r.stderr
    df = load_results(tmp_path / "d" / "death.csv")
    assert sorted(df.method) == ["pidfd", "pidfd", "poll", "poll", "sigusr1", "sigusr1"]
    assert (df.latency_ms > 0).all()
    assert "death detection latency" in r.stdout
    figs = _drawn_by_plot(tmp_path / "d" / "death.csv", tmp_path / "redrawn")
    assert set(figs) == {"death_detection"}
    text = _texts(figs["death_detection"])
    assert all(m in text for m in ("sigusr1", "pidfd", "poll")), text
