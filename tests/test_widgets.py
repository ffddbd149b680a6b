"""The notebooks' interactive controls, without a browser: controllers and views driven by calls.

Buttons are pressed with ``Button.click()`` (which runs the same handlers as a click in
JupyterLab); state is read from the controllers and from the widgets' values.
"""

from __future__ import annotations

import threading

import pytest

from bgwlab.events import Event
from bgwlab.lab.widgets import (ENTRIES, FAULTS, ClusterController, EventTail, ExperimentController,
                                latest_handles, process_tree)
from conftest import wait_until

ipywidgets = pytest.importorskip("ipywidgets")
PNG = b"\x89PNG"


def _draw_every_font():
    import io

    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.add_subplot()
    ax.set_title("bold → µs … ≥", fontweight="bold")
    ax.text(0.1, 0.5, "italic → µs … 95% p10-p90", style="italic")
    ax.set_xlabel("$T$ (ms) → µs")
    fig.savefig(io.BytesIO(), format="png")


@pytest.fixture(scope="module", autouse=True)
def fonts_loaded():
    """Draw once before the tests, on the widgets' drawing thread: matplotlib keeps the
    font files it used open (per thread, for the life of the process)."""
    from bgwlab.lab.widgets import on_draw_thread, render_timeline_png

    on_draw_thread(_draw_every_font)
    render_timeline_png([Event(0, "registered", "backend", 1, 0, 1),
                         Event(10**6, "forked", "postmaster", 2, 0, 1, {"worker_pid": 3})])


def row_of(controller, name):
    return next(r for r in controller.snapshot()["workers"] if r["name"] == name)


# -- pieces -----------------------------------------------------------------------------------------
def test_event_tail_holds_back_partial_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    tail = EventTail(path)
    assert tail.read_new() == []  # no file yet
    line = '{"t_ns":5,"kind":"forked","source":"postmaster","pid":1,"slot":0,"generation":1,"detail":{}}\n'
    path.write_text(line[:30])
    assert tail.read_new() == []
    with open(path, "a") as f:
        f.write(line[30:] + line.replace('"t_ns":5', '"t_ns":6'))
    evs = tail.read_new()
    assert [(e.t_ns, e.kind) for e in evs] == [(5, "forked"), (6, "forked")]
    assert tail.read_new() == []


def test_latest_handles_picks_the_most_recent_registrations():
    evs = [Event(i, "registered", "backend", 1, slot, gen) for i, (slot, gen) in
           enumerate([(0, 1), (1, 2), (0, 3), (2, 4)])]
    evs.append(Event(10, "forked", "postmaster", 2, 1, 2))
    assert latest_handles(evs, 2) == [(0, 3), (2, 4)]
    assert latest_handles(evs, 5, slots=[0]) == [(0, 1), (0, 3)]


def test_menus_offer_every_fault_and_entry():
    assert "no fault" in FAULTS and "fork fails (EAGAIN)" in FAULTS and "entry point missing" in FAULTS
    assert "sleep forever" in ENTRIES


# -- the cluster controller ---------------------------------------------------------------------------
@pytest.fixture
def controller():
    c = ClusterController(max_workers=3)
    yield c
    c.stop()


def test_register_before_start_is_a_message_not_an_exception(controller):
    assert controller.register("sleep 2 s") is None
    assert "start the cluster" in controller.message
    with pytest.raises(ValueError):
        controller.register("sleep 2 s", fault="no such fault")


def test_controller_lifecycle_register_terminate_and_faults(controller):
    controller.start()
    assert controller.state() == "running"
    pm = controller.cluster.postmaster_pid

    row = controller.register("sleep forever", "no fault", name="steady")
    wait_until(lambda: row.startup.startswith("STARTED"), what="steady's waiter to see STARTED")
    controller.refresh()
    snap = controller.snapshot()
    assert row_of(controller, "steady")["status"] == "STARTED"
    pid = row_of(controller, "steady")["pid"]
    tree = {p: (depth, label) for depth, p, _status, label in snap["tree"]}
    assert tree[pm][0] == 0 and tree[pid][0] == 1 and "steady" in tree[pid][1]
    # The postmaster writes a start's events after it has signalled the registrant (and
    # yielded to it): the log may lag the STARTED that the waiter already saw.
    def forked_in_the_log():
        controller.refresh()
        return any("forked" in line for line in controller.snapshot()["log"])

    wait_until(forked_in_the_log, what="the postmaster's 'forked' event in the panel's log")

    doomed = controller.register("sleep 2 s", "fork fails (EAGAIN)", name="doomed")
    wait_until(lambda: doomed.startup.startswith("STOPPED"), what="fork failure reported")
    missing = controller.register("sleep 2 s", "entry point missing", name="typo")
    wait_until(lambda: missing.shutdown.startswith("STOPPED"), what="early crash reported")
    controller.refresh()
    assert any(e.kind == "early_crash" and e.generation == missing.generation for e in controller.events)

    controller.terminate("steady")
    wait_until(lambda: row.shutdown.startswith("STOPPED"), what="terminate to stop the worker")
    controller.refresh()
    assert row_of(controller, "steady")["status"] == "STOPPED"

    controller.stop()
    assert controller.state() == "stopped" and not controller.running
    assert controller.cluster.events()  # the full log survives the stop
    assert all(not t.is_alive() for t in controller._waiters)


def test_slot_exhaustion_and_postmaster_death_show_up_in_the_panel_state(controller):
    controller.start()
    rows = [controller.register("sleep forever", name=f"s{i}") for i in range(3)]
    assert controller.register("sleep forever", name="one-too-many") is None
    assert "OutOfWorkerSlots" in controller.message
    for r in rows:
        wait_until(lambda r=r: r.startup.startswith("STARTED"), what="workers started")
    controller.kill_postmaster()
    for r in rows:
        wait_until(lambda r=r: r.shutdown.startswith("POSTMASTER_DIED"), what="waiters see the death")
    assert controller.state() == "dead"
    assert controller.register("sleep 2 s") is None
    assert "PostmasterDied" in controller.message


# -- the cluster panel (the view) -------------------------------------------------------------------
def test_cluster_panel_buttons_drive_the_cluster():
    from bgwlab.lab.widgets import ClusterPanel

    panel = ClusterPanel(max_workers=2, auto_refresh=False)
    try:
        assert panel.register_button.disabled  # nothing to register into yet
        panel.start_button.click()
        assert "running" in panel.title.value and not panel.register_button.disabled
        panel.entry_menu.value = "sleep forever"
        panel.fault_menu.value = "slow start: worker 1 s"
        panel.register_button.click()

        def shows(text):
            panel.refresh()
            return text in panel.workers.value

        wait_until(lambda: shows("STARTED"), timeout=30, what="the workers table to show STARTED")
        assert "slow start: worker 1 s" in panel.workers.value
        assert panel.worker_menu.value == 1
        pid = panel.controller.rows[0].pid
        assert str(pid) in panel.tree.value
        panel.terminate_button.click()
        wait_until(lambda: shows("STOPPED at"), timeout=30, what="the table to show the shutdown")
        panel.kill_button.click()
        wait_until(lambda: (panel.refresh(), "dead" in panel.title.value)[1], timeout=30, what="state dead")
        assert "SIGKILL" in panel.message.value
    finally:
        panel.close()
    assert "stopped" in panel.title.value


def test_cluster_panel_refreshes_itself_and_draws_the_timeline():
    from bgwlab.lab.widgets import ClusterPanel

    panel = ClusterPanel(max_workers=2, auto_refresh=True, period=0.05)
    try:
        panel.start_cluster()
        first_image = panel.timeline.value
        panel.register("sleep forever", "no fault")  # a 2 s worker may be over before a refresh
        # No refresh() call here: the panel's own thread must pick the change up.
        wait_until(lambda: "STARTED" in panel.workers.value, what="auto-refresh of the table")
        wait_until(lambda: "forked" in panel.log.value, what="auto-refresh of the event log")
        wait_until(lambda: panel.timeline.value != first_image, timeout=10, what="timeline redraw")
        assert bytes(panel.timeline.value).startswith(PNG)
    finally:
        panel.close()
    assert not panel._refresher.alive


def test_live_timeline_redraws_as_events_arrive_and_stops_with_the_cluster():
    from bgwlab import Cluster, WorkerSpec
    from bgwlab.lab.widgets import LiveTimeline

    with Cluster.start(max_workers=2) as cluster:
        live = LiveTimeline(cluster, period=0.05)
        draws = live.draws
        h = cluster.connect().register_dynamic_worker(
            WorkerSpec(name="seen", entry="bgwlab.examples:noop"))
        h.wait_for_shutdown()
        wait_until(lambda: live.draws > draws and any(e.kind == "unregistered" for e in live.events),
                   what="the live timeline to pick up the worker's events")
        assert bytes(live.image.value).startswith(PNG)
    wait_until(lambda: not live._refresher.alive, what="the refresh thread to end after stop")
    live.stop()


# -- the experiment controller and panel ----------------------------------------------------------------
def test_experiment_runs_in_the_background_with_progress():
    gate = threading.Event()
    calls = []

    def on_progress():
        calls.append(c.done)
        gate.wait(30)  # hold the run after its first trial until the test has looked

    c = ExperimentController(on_progress=on_progress)
    c.start(0.02, "idle", 2)
    # start() returned while the run is held inside its first progress report.
    wait_until(lambda: calls, timeout=60, what="the first trial")
    assert c.running and c.done == 1 and c.total == 2 and not c.finished
    gate.set()
    assert c.wait(120)
    assert c.finished and c.error is None and c.done == 2
    df = c.results
    assert len(df) == 2 * 2 * 2  # trials x scenarios x strategies
    assert set(df.trial) == {0, 1}
    notify_ff = df[(df.scenario == "fork_failure") & (df.strategy == "notify")]
    assert set(notify_ff.verdict) == {"failed"}
    timeout_ff = df[(df.scenario == "fork_failure") & (df.strategy == "timeout")]
    assert set(timeout_ff.verdict) == {"timed_out"}
    s = c.summary()
    assert set(s.scenario) == {"ok", "fork_failure"} and s.trials.sum() == 8
    assert s[(s.scenario == "fork_failure")].wrong.sum() == 0  # timed_out on a failure is right
    with pytest.raises(ValueError):
        c.start(0.02, "idle", 0)


def test_experiment_cancel_stops_after_the_current_trial():
    c = ExperimentController(scenarios=("fork_failure",), strategies=("notify",))
    c.on_progress = c.cancel
    c.start(0.02, "idle", 5)
    assert c.wait(60)
    assert c.done == 1 and c.finished and len(c.results) == 1


def test_experiment_panel_run_button_progress_and_figure():
    from bgwlab.lab.widgets import ExperimentPanel

    panel = ExperimentPanel(scenarios=("ok", "fork_failure"), strategies=("notify", "timeout"),
                            T=0.02, load="idle", trials=1)
    try:
        panel.trials.value = 2
        panel.T.value = 0.03
        panel.run_button.click()
        assert panel.run_button.disabled or panel.controller.finished
        assert panel.wait(120)
        wait_until(lambda: not panel.run_button.disabled, what="the run button to come back")
        assert panel.progress.value == 2 and panel.progress.description == "2 / 2"
        # the table shows the summary of what ran: 2 trials per cell, no wrong verdict on a failure
        s = panel.controller.summary()
        assert set(zip(s.scenario, s.strategy)) == {(sc, st) for sc in ("ok", "fork_failure")
                                                    for st in ("notify", "timeout")}
        assert (s.trials == 2).all() and s[s.scenario == "fork_failure"].wrong.sum() == 0
        assert panel.table.value == s.to_html(index=False, float_format=lambda x: f"{x:.1f}")
        assert bytes(panel.figure.value).startswith(PNG)
        assert panel.controller.params == {"timeout_s": pytest.approx(0.03, rel=0.02), "load": "idle",
                                           "trials": 2}
    finally:
        panel.close()


def test_experiment_panel_cancel_button_stops_the_run_after_the_current_trial():
    from bgwlab.lab.widgets import ExperimentPanel

    panel = ExperimentPanel(scenarios=("fork_failure",), strategies=("notify",), T=0.02, trials=5)
    try:
        report = panel.controller.on_progress

        def progress_then_cancel():  # press cancel as soon as the first trial is in
            report()
            if not panel.controller.finished:
                panel.cancel_button.click()

        panel.controller.on_progress = progress_then_cancel
        panel.run_button.click()
        assert panel.wait(120)
        c = panel.controller
        assert c.finished and c.error is None
        assert c.done == 1 and len(c.results) == 1 and c.total == 5
        wait_until(lambda: not panel.run_button.disabled, what="the run button to come back")
        assert panel.progress.value == 1 and panel.progress.description == "1 / 5"
    finally:
        panel.close()


def test_experiment_panel_run_that_ends_before_start_returns_leaves_the_panel_usable():
    """A one-trial run may be over before ``start()`` returns to the click handler: the
    button must come back and the bar show the trial (it used to stay disabled at 0)."""
    from bgwlab.lab.widgets import ExperimentPanel

    panel = ExperimentPanel(scenarios=("fork_failure",), strategies=("notify",), T=0.02, trials=1)
    try:
        real_start = panel.controller.start

        def start_and_finish(*args):
            real_start(*args)
            assert panel.controller.wait(120)

        panel.controller.start = start_and_finish
        panel.run_button.click()
        assert panel.controller.finished and panel.controller.done == 1
        assert not panel.run_button.disabled
        assert panel.progress.value == 1 and panel.progress.description == "1 / 1"
        assert "fork_failure" in panel.table.value and "running" not in panel.table.value
    finally:
        panel.close()


def test_cluster_panel_restart_menu_terminate_and_kill():
    """The restart menu reaches the worker's spec: a worker that raises is restarted after
    the chosen interval, until the terminate button ends it; kill -9 then reads as dead."""
    from bgwlab.lab.widgets import ClusterPanel

    panel = ClusterPanel(max_workers=2, auto_refresh=False)
    try:
        panel.start_button.click()
        panel.entry_menu.value = "raise an exception (exit 1)"
        panel.fault_menu.value = "no fault"
        panel.restart_menu.value = "restart after 0.2 s"
        panel.register_button.click()
        row = panel.controller.rows[0]
        assert row.restart == 0.2
        cluster = panel.controller.cluster

        def mine(kind):
            return [e for e in cluster.events() if e.kind == kind
                    and (e.slot, e.generation) == (row.slot, row.generation)]

        wait_until(lambda: len(mine("forked")) >= 2, timeout=30, what="the worker to be restarted")
        assert {e.detail["after_s"] for e in mine("restart_scheduled")} == {0.2}
        assert panel.worker_menu.value == row.number
        panel.terminate_button.click()
        wait_until(lambda: mine("unregistered"), timeout=30, what="the terminate to end the worker")
        (unreg,) = mine("unregistered")
        assert unreg.detail["reason"] in ("terminated", "terminated before start")
        wait_until(lambda: row.shutdown.startswith("STOPPED"), what="the waiter to see STOPPED")
        forks = len(mine("forked"))
        panel.refresh()
        assert "STOPPED" in panel.workers.value and "terminate requested" in panel.message.value
        # never restarted after the terminate: the slot is free for a new worker
        assert panel.controller.backend.seg.in_use(row.slot) == 0 and len(mine("forked")) == forks

        panel.entry_menu.value = "sleep forever"
        panel.restart_menu.value = "never restart"
        panel.register_button.click()
        survivor = panel.controller.rows[1]
        wait_until(lambda: survivor.startup.startswith("STARTED"), what="the second worker to start")
        pm = cluster.postmaster_pid
        panel.kill_button.click()
        wait_until(lambda: survivor.shutdown.startswith("POSTMASTER_DIED"), what="its waiter to see the death")
        panel.refresh()
        assert "dead" in panel.title.value and f"pid {pm}" in panel.message.value
    finally:
        panel.close()
    assert "stopped" in panel.title.value


def test_process_tree_of_a_gone_process_is_empty():
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert process_tree(p.pid) == []


def test_experiment_panel_works_in_a_fresh_process_whose_first_connect_is_in_a_thread():
    """In a fresh kernel, the panel's runs are the process's first connect(), in a thread."""
    import subprocess
    import sys

    code = ("from bgwlab.lab.widgets import ExperimentController\n"
            "c = ExperimentController(scenarios=('fork_failure',), strategies=('notify',))\n"
            "c.start(0.02, 'idle', 1)\n"
            "assert c.wait(60)\n"
            "assert c.error is None, c.error\n"
            "print(c.results.verdict.tolist())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "['failed']"
