"""bgwlab.pg: a real PostgreSQL server, the probe, genuine fork failures, the scenarios.

One server is shared by the module (``pg``); the tests that crash-restart a server or check
its lifecycle start their own.  Without a PostgreSQL server (15+ with PGXS) these tests are
skipped with how to install one -- except as root (CI), where they fail: `make test` installs
the server through scripts/system-deps.sh, so a missing one is a broken set-up.
"""

from __future__ import annotations

import errno
import os
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from bgwlab.pg import server_available
from bgwlab.pg.cgroup import cgroup_available, ours, pids_limit

AVAILABLE, WHY = server_available()
ROOT = os.geteuid() == 0
CGROUP_OK, CGROUP_WHY = cgroup_available()


def _require_server():
    if not AVAILABLE:
        if ROOT:
            pytest.fail(f"PostgreSQL is required as root (CI): {WHY}")
        pytest.skip(WHY)
    from bgwlab.pg.probe import pgxs_available
    from bgwlab.pg.server import find_bindir

    ok, why = pgxs_available(find_bindir())
    if not ok:
        if ROOT:
            pytest.fail(f"PGXS is required as root (CI): {why}")
        pytest.skip(why)


def _require_cgroup():
    if not CGROUP_OK:
        pytest.skip(f"genuine fork failures need a writable pids cgroup: {CGROUP_WHY}")


def our_postgres_processes(base) -> list[int]:
    """Processes whose command line names `base` (the server's temp dir) -- none may remain."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(str(base) in part for part in (p.info["cmdline"] or [])):
                out.append(p.pid)
        except psutil.Error:
            pass
    return out


@pytest.fixture(scope="module")
def pg():
    _require_server()
    from bgwlab.pg.scenarios import PgSide

    side = PgSide(max_worker_processes=8)
    yield side
    side.close()


# -- the server ---------------------------------------------------------------------------------
def test_server_is_private_socket_only_and_logs_milliseconds(pg):
    c = pg.conn
    assert int(c.value("show server_version_num")) >= 150000
    assert c.value("show listen_addresses") == ""
    assert c.value("show fsync") == "off"
    assert c.value("show unix_socket_directories") == str(pg.server.socket_dir)
    assert "%m" in c.value("show log_line_prefix")
    pm = psutil.Process(pg.server.postmaster_pid)
    assert [x for x in pm.net_connections(kind="inet")] == []  # no TCP port at all
    if ROOT:
        assert pm.uids().real == pm.uids().effective != 0  # not root: initdb refuses root
    assert pg.server.base.stat().st_mode & 0o777 == 0o700
    # the finest timestamps PostgreSQL offers: milliseconds (%m)
    first = pg.server.log_text().splitlines()[0]
    assert first[:23].count(":") == 2 and first[19] == "." and first[20:23].isdigit(), first


def test_probe_is_loaded_by_absolute_path_from_the_temp_dir(pg):
    lib = pg.conn.value("select probe_library()")
    assert lib == str(pg.probe_path) and lib.startswith(str(pg.server.base))
    pkglib = subprocess.run([str(pg.server.pg_config), "--pkglibdir"], capture_output=True,
                            text=True).stdout.strip()
    assert not (Path(pkglib) / "probe.so").exists()  # nothing installed into the system tree


# -- the probe: three strategies, timed inside the backend ---------------------------------------
def test_ok_every_strategy_says_started_and_the_worker_signed_in(pg):
    for strategy, kw in (("notify", {}), ("poll_pid", {}), ("timeout", {"timeout_s": 5.0})):
        rows = pg.trials("ok", strategy, 5, **kw)
        assert [r["verdict"] for r in rows] == ["started"] * 5, (strategy, rows)
        assert [r["truth"] for r in rows] == ["started"] * 5
        assert all(0 < r["time_to_verdict_ms"] < 5000 for r in rows)
    # notify does not wait for a poll period: it is woken by the worker's sign-in
    notify = pg.trials("ok", "notify", 7)
    polled = pg.trials("ok", "poll_pid", 7, poll_s=0.2)
    assert statistics.median(r["time_to_verdict_ms"] for r in notify) < \
        statistics.median(r["time_to_verdict_ms"] for r in polled)


def test_timeout_reports_a_worker_that_never_runs_only_at_T(pg):
    rows = pg.trials("early_crash", "timeout", 3, timeout_s=0.2)
    assert [(r["verdict"], r["truth"]) for r in rows] == [("timed_out", "failed")] * 3
    assert all(r["time_to_verdict_ms"] >= 200 for r in rows)


def test_early_crash_is_reported_failed_and_the_log_says_why(pg):
    pos = pg.server.log_size()
    for strategy in ("notify", "poll_pid"):
        rows = pg.trials("early_crash", strategy, 3)
        assert [(r["verdict"], r["truth"]) for r in rows] == [("failed", "failed")] * 3, rows
    # forked, then gone before its code ran: STARTED then STOPPED, or -- if it died before
    # the registrant woke -- STOPPED at once (WaitForBackgroundWorkerStartup reads pid 0)
    (row,) = pg.trials("early_crash", "notify", 1)
    assert (row["verdict"], row["status"]) in {("failed", "exited before user code"),
                                               ("failed", "STOPPED at startup")}, row
    log = pg.server.log_text(pos)
    assert 'could not find function "probe_no_such_entry"' in log
    assert "exited with exit code 1" in log


def test_busy_system_notify_is_never_wrong(pg):
    rows = pg.trials("busy", "notify", 4)
    assert [(r["verdict"], r["truth"]) for r in rows] == [("started", "started")] * 4
    assert {r["load"] for r in rows} == {"busy"}


# -- genuine fork failures -------------------------------------------------------------------------
def test_pg_genuine_fork_failure_in_a_pids_cgroup(pg):
    _require_cgroup()
    pos = pg.server.log_size()
    for strategy in ("notify", "poll_pid"):
        rows = pg.trials("fork_failure", strategy, 3)
        assert [(r["verdict"], r["truth"], r["fault_origin"]) for r in rows] == \
            [("failed", "failed", "genuine")] * 3, rows
    log = pg.server.log_text(pos)
    assert log.count("could not fork worker process: Resource temporarily unavailable") >= 6
    assert ours() == []
    # the postmaster is back in its own cgroup and forks again
    assert [r["verdict"] for r in pg.trials("ok", "notify", 2)] == ["started"] * 2


def test_pg15_back_to_back_fork_failures_all_end_failed(pg):
    """PostgreSQL 15 may lose the postmaster's wakeup here (bgwlab.pg.scenarios.LOST_WAKEUP);
    the probe re-signals the postmaster after cap_s, so every trial still ends, and a trial
    that needed it took at least cap_s."""
    _require_cgroup()
    rows = pg.trials("fork_failure_back_to_back", "notify", 8, cap_s=0.5)
    assert [(r["verdict"], r["truth"]) for r in rows] == [("failed", "failed")] * 8
    assert all(r["time_to_verdict_ms"] >= 500 for r in rows if r["kicked"]), rows


def test_pids_limit_always_cleans_up():
    _require_cgroup()
    target = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        before = Path(f"/proc/{target.pid}/cgroup").read_text()
        with pytest.raises(RuntimeError):
            with pids_limit(target.pid) as cg:
                assert cg.members() == [target.pid]
                raise RuntimeError("boom")
        assert Path(f"/proc/{target.pid}/cgroup").read_text() == before
        assert not cg.path.exists() and ours() == []
    finally:
        target.kill()
        target.wait()


def test_bgwlab_genuine_fork_failure_is_labelled_genuine(cluster, backend):
    _require_cgroup()
    from bgwlab import NEVER_RESTART, HandleStatus, WorkerSpec

    spec = WorkerSpec(name="g", entry="bgwlab.examples:noop", restart=NEVER_RESTART, notify=True)
    with pids_limit(cluster.postmaster_pid):
        h = backend.register_dynamic_worker(spec)
        assert h.wait_for_startup(timeout=30) == (HandleStatus.STOPPED, None)
    failed = [e for e in cluster.events() if e.kind == "fork_failed"]
    assert len(failed) == 1 and failed[0].detail["errno"] == errno.EAGAIN
    assert failed[0].detail["injected"] is False  # fault_origin = genuine
    assert h.wait_for_startup(timeout=30)[0] is HandleStatus.STOPPED
    ok = backend.register_dynamic_worker(spec)  # out of the cgroup: forks again
    assert ok.wait_for_startup(timeout=30)[0] in (HandleStatus.STARTED, HandleStatus.STOPPED)
    assert ok.wait_for_shutdown(timeout=30) is HandleStatus.STOPPED


def test_bgwlab_never_loses_the_wakeup_of_back_to_back_fork_failures(cluster, backend):
    """PostgreSQL 15's lost wakeup, asked of bgwlab: genuine fork failures back to back, each
    request right after the previous verdict.  Every one must read STOPPED well within a
    generous deadline (PostgreSQL 15 sometimes needs its 60 s select() timeout)."""
    _require_cgroup()
    from bgwlab import NEVER_RESTART, HandleStatus, WorkerSpec

    spec = WorkerSpec(name="b2b", entry="bgwlab.examples:noop", restart=NEVER_RESTART, notify=True)
    took = []
    with pids_limit(cluster.postmaster_pid):
        for _ in range(40):
            t0 = time.monotonic()
            h = backend.register_dynamic_worker(spec)
            assert h.wait_for_startup(timeout=10) == (HandleStatus.STOPPED, None)
            took.append(time.monotonic() - t0)
    assert len([e for e in cluster.events() if e.kind == "fork_failed"]) == 40
    assert max(took) < 10


def test_bgwlab_side_rows_match_the_pg_side(cluster):
    _require_cgroup()
    from bgwlab.pg.scenarios import ROW_KEYS, BgwlabSide

    with BgwlabSide(cluster) as side:
        rows = side.trials("fork_failure", "notify", 3) + side.trials("early_crash", "notify", 2)
        rows += side.trials("ok", "timeout", 2, timeout_s=5.0)
    assert all(tuple(r) == ROW_KEYS for r in rows)
    assert [(r["verdict"], r["truth"], r["fault_origin"]) for r in rows] == \
        [("failed", "failed", "genuine")] * 5 + [("started", "started", "none")] * 2


# -- a worker crash: the registrant is in PostgreSQL's crash domain ---------------------------------
def test_worker_crash_takes_the_registrant_down_in_postgresql_not_in_bgwlab(cluster):
    _require_server()
    from bgwlab.pg.scenarios import BgwlabSide, PgSide, bgwlab_worker_crash, pg_worker_crash

    with PgSide() as side:
        base = side.server.base
        r = pg_worker_crash(side)
        assert r["registrant_survived"] is False and r["bystander_survived"] is False
        assert any("crash of another server process" in m for m in r["registrant_was_told"]), r
        log = "\n".join(r["log"])
        assert "was terminated by signal 9" in log and "reinitializing" in log
        assert side.conn.value("select 1") == "1"  # the server came back
    assert our_postgres_processes(base) == [] and not base.exists()
    with BgwlabSide(cluster) as side:
        b = bgwlab_worker_crash(side)
    assert b["registrant_survived"] and b["stopped"] and "crash_restart" in b["events"]


# -- lifecycle: always stopped and removed ---------------------------------------------------------
LIFECYCLE = {
    "with": "with Server.start() as s:\n    report(s)\n",
    "error": "try:\n    with Server.start() as s:\n        report(s)\n        1/0\n"
             "except ZeroDivisionError:\n    pass\n",
    "keyboard_interrupt": "try:\n    with Server.start() as s:\n        report(s)\n"
                          "        raise KeyboardInterrupt\nexcept KeyboardInterrupt:\n    pass\n",
    "interpreter_exit": "s = Server.start()\nreport(s)\n",  # no stop(): atexit does it
}


def test_lifecycle_nothing_left_running():
    _require_server()
    prelude = textwrap.dedent("""
        import sys
        from bgwlab.pg import Server
        def report(s):
            print(s.base, s.postmaster_pid, *s.children(), flush=True)
    """)
    procs = {name: subprocess.Popen([sys.executable, "-c", prelude + body], text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name, body in LIFECYCLE.items()}
    for name, p in procs.items():
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, (name, err)
        base, *pids = out.split()
        assert len(pids) >= 2, (name, out)  # the postmaster and its children were running
        assert not Path(base).exists(), name
        assert our_postgres_processes(base) == [], name
        assert not any(psutil.pid_exists(int(x)) and psutil.Process(int(x)).status() !=
                       psutil.STATUS_ZOMBIE for x in pids), name


def test_zz_the_module_server_is_stopped_and_removed(pg):
    """Runs last: the shared server's own cleanup, asserted (its fixture predates the leak check)."""
    base, pm = pg.server.base, pg.server.postmaster_pid
    pg.close()
    assert not psutil.pid_exists(pm)
    assert our_postgres_processes(base) == [] and not base.exists()
    assert ours() == []
    pg.close()  # idempotent
