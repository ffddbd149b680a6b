"""`bgwlab compare-postgres` (bgwlab.pg.compare): a quick run on both systems, through the CLI.

Without a PostgreSQL server it is skipped with how to install one -- as root (CI) it fails.
"""

from __future__ import annotations

import json
import os

import pytest

from bgwlab.pg import server_available

AVAILABLE, WHY = server_available()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One quick run for the module; matplotlib keeps the fonts it loads open (a cache), so
    the figures are drawn here, before the per-test fd check starts counting."""
    if not AVAILABLE:
        if os.geteuid() == 0:
            pytest.fail(f"PostgreSQL is required as root (CI): {WHY}")
        pytest.skip(WHY)
    from bgwlab.lab.cli import main

    out = tmp_path_factory.mktemp("compare")
    assert main(["compare-postgres", "--out", str(out), "--quick", "--cap", "0.5"]) == 0
    names = ("csv", "metadata", "crash", "headline", "lost_wakeup", "timeline")
    files = ("compare.csv", "compare.metadata.json", "crash.json", "headline.png",
             "lost_wakeup.png", "timeline.png")
    return {n: out / f for n, f in zip(names, files)}


def test_quick_comparison_writes_rows_metadata_and_figures(run):
    from bgwlab.pg.cgroup import cgroup_available, ours
    from bgwlab.pg.compare import read_rows
    from bgwlab.pg.scenarios import ROW_KEYS

    paths = run
    rows = read_rows(paths["csv"])
    assert tuple(rows[0]) == ROW_KEYS
    assert {r["system"] for r in rows} == {"bgwlab", "postgresql"}
    scenarios = {"ok", "early_crash", "busy"} | ({"fork_failure", "fork_failure_back_to_back"}
                                                 if cgroup_available()[0] else set())
    assert {r["scenario"] for r in rows} == scenarios
    assert {r["strategy"] for r in rows} == {"notify", "timeout", "poll_pid"}
    # notify is never wrong, on either system; ground truth comes from the worker itself
    assert all(r["verdict"] == r["truth"] for r in rows if r["strategy"] == "notify")
    if cgroup_available()[0]:
        assert {r["fault_origin"] for r in rows if "fork" in r["scenario"]} == {"genuine"}
    # a worker that never runs is reported by timeout(T) only at T
    for r in rows:
        if r["strategy"] == "timeout" and r["truth"] == "failed" and r["verdict"] == "timed_out":
            assert r["time_to_verdict_ms"] >= 1000 * r["timeout_s"]
    meta = json.loads(paths["metadata"].read_text())
    assert meta["postgresql_version"].startswith(("15", "16", "17", "18"))
    for key in ("bgwlab_version", "commit", "cpu_count", "loadavg_start", "loadavg_end", "summary"):
        assert key in meta
    crash = json.loads(paths["crash"].read_text())
    assert crash["postgresql"]["registrant_survived"] is False
    assert crash["bgwlab"]["registrant_survived"] is True
    for name in ("headline", "lost_wakeup", "timeline"):
        assert paths[name].stat().st_size > 10_000
    assert ours() == []


def test_without_a_server_it_exits_non_zero_and_says_how_to_install(monkeypatch, tmp_path, capsys):
    from bgwlab.pg import compare
    from bgwlab.pg.server import INSTALL_HELP, PgUnavailable

    def nothing_here():
        raise PgUnavailable(f"no PostgreSQL >= 15 found. {INSTALL_HELP}")

    monkeypatch.setattr(compare, "find_bindir", nothing_here)
    from bgwlab.lab.cli import main

    assert main(["compare-postgres", "--out", str(tmp_path / "x"), "--quick"]) == 3
    err = capsys.readouterr().err
    assert "postgresql-server-dev-15" in err and "system-deps.sh" in err
    assert not (tmp_path / "x").exists()
