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
