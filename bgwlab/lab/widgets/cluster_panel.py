"""The cluster panel: drive a live cluster with buttons, watch statuses, processes and events.

``ClusterController`` holds the state and does the work -- start/stop a cluster, register
workers (what they run, a fault, a restart policy: ``ENTRIES``, ``FAULTS``, ``RESTARTS``),
terminate one, kill -9 the postmaster -- with a waiter thread per worker that records
what ``wait_for_startup()`` and ``wait_for_shutdown()`` returned; it never imports
ipywidgets, so tests drive it by calls.  ``ClusterPanel`` is its ipywidgets view:
controls, workers table, process tree, event log and live timeline (notebook 09)::

    from bgwlab.lab.widgets import ClusterPanel
    panel = ClusterPanel(max_workers=4)
    panel.start_cluster()
    panel
"""

from __future__ import annotations

import errno as _errno
import itertools
import signal as _signal
import threading
import time
from dataclasses import dataclass, field

from ...events import Event
from .common import EventTail, _esc, _install_dispatcher, _Refresher
from .timeline import render_timeline_png

__all__ = ["FAULTS", "ENTRIES", "RESTARTS", "WorkerRow", "ClusterController", "ClusterPanel",
           "process_tree", "format_event", "workers_html", "tree_html"]


# -- what the menus offer ------------------------------------------------------------------
def _faults():
    from ...spec import Fault

    return {
        "no fault": None,
        "fork fails (EAGAIN)": Fault.fork_failure(errno=_errno.EAGAIN),
        "fork fails twice, then works": Fault.fork_failure(errno=_errno.EAGAIN, times=2),
        "crash before main: exit(1)": Fault.crash_before_main(exit_code=1),
        "crash before main: SIGSEGV": Fault.crash_before_main(signal=_signal.SIGSEGV),
        "slow start: worker 1 s": Fault.slow_start(1.0, where="worker"),
        "slow start: postmaster 1 s": Fault.slow_start(1.0, where="postmaster"),
        "entry point missing": "missing-entry",
    }


FAULTS = tuple(_faults())
"""Labels of the fault menu (``ClusterController.register(fault=...)`` takes one of them)."""

ENTRIES = {
    "sleep 2 s": ("bgwlab.examples:sleep_ms", 2000),
    "sleep forever": ("bgwlab.examples:sleep_forever", 0),
    "return at once": ("bgwlab.examples:noop", 0),
    "raise an exception (exit 1)": ("bgwlab.examples:fail", 0),
    "crash in main (SIGSEGV)": ("bgwlab.examples:crash", int(_signal.SIGSEGV)),
}
"""What a registered worker runs: label -> (entry point, main_arg)."""

MISSING_ENTRY = "bgwlab.no_such_module:main"

RESTARTS = {"never restart": -1, "restart after 1 s": 1, "restart after 0.2 s": 0.2}


def format_event(e: Event, t0_ns: int) -> str:
    """One line for the event log: ``+12.345 ms postmaster forked 0/1 worker_pid=42``."""
    where = f"{e.slot}/{e.generation}" if e.slot >= 0 else ""
    detail = " ".join(f"{k}={v}" for k, v in e.detail.items() if k not in ("traceback", "entry"))
    return f"{(e.t_ns - t0_ns) / 1e6:+9.1f} ms {e.source:<10} {e.kind:<17} {where:<5} {detail}"


def process_tree(root_pid: int, labels: dict | None = None) -> list[tuple[int, int, str, str]]:
    """The live process tree under `root_pid` as rows (depth, pid, status, label).

    `labels` maps pids to a description (e.g. ``"slot 0/3 sleeper"``).  Empty if the root is gone.
    """
    import psutil

    labels = labels or {}
    rows = []

    def walk(p, depth):
        try:
            status = p.status()
            children = p.children()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return
        rows.append((depth, p.pid, status, labels.get(p.pid, "")))
        for c in sorted(children, key=lambda c: c.pid):
            walk(c, depth + 1)

    try:
        walk(psutil.Process(root_pid), 0)
    except psutil.NoSuchProcess:
        return []
    return rows


# -- the cluster panel's model -------------------------------------------------------------------
@dataclass
class WorkerRow:
    """One worker registered from the panel, as the panel knows it."""

    number: int
    name: str
    entry_label: str
    fault_label: str
    restart: float
    handle: object = field(repr=False)
    slot: int = -1
    generation: int = 0
    status: str = "NOT_YET_STARTED"
    pid: int | None = None
    startup: str = ""  # what wait_for_startup() returned, with its latency
    shutdown: str = ""  # what wait_for_shutdown() returned
    registered_ns: int = 0


class ClusterController:
    """Start/stop a cluster, register workers with faults, terminate, kill the postmaster.

    Every registered worker gets a waiter thread that calls ``wait_for_startup()`` and
    then ``wait_for_shutdown()`` on its handle, and records what they returned.
    ``refresh()`` reads new events and every handle's status; ``snapshot()`` returns
    everything a view shows.  ``on_change`` (optional) is called from any thread whenever
    a waiter returns.
    """

    def __init__(self, max_workers: int = 4, on_change=None, directory=None):
        self.max_workers = max_workers
        self.directory = directory
        self.on_change = on_change
        self.cluster = None
        self.backend = None
        self.rows: list[WorkerRow] = []
        self.events: list[Event] = []
        self.message = "cluster not started"
        self._tail = None
        self._lock = threading.RLock()
        self._waiters: list[threading.Thread] = []
        self._numbers = itertools.count(1)
        self._version = 0  # bumped on every visible change
        _install_dispatcher()

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.cluster is not None and self.cluster.alive

    def start(self) -> None:
        """Start a cluster (stopping the previous one, if any) and attach as a backend."""
        from ...cluster import Cluster

        self.stop()
        with self._lock:
            self.cluster = Cluster.start(max_workers=self.max_workers, directory=self.directory)
            self.backend = self.cluster.connect()
            self._tail = EventTail(self.cluster.events_path)
            self.rows = []
            self.events = []
            self.message = f"cluster started: postmaster pid {self.cluster.postmaster_pid}"
            self._changed()
        self.refresh()

    def stop(self) -> None:
        """Stop the cluster (SIGTERM to the postmaster, which stops every worker) and its waiters."""
        with self._lock:
            cluster = self.cluster
        if cluster is None:
            return
        cluster.stop()
        for t in self._waiters:
            t.join(timeout=10)
        self._waiters = [t for t in self._waiters if t.is_alive()]
        with self._lock:
            self.events = cluster.events()  # the complete log (the file is gone now)
            self._tail = None
            self.backend = None
            self.message = "cluster stopped"
            self._changed()

    close = stop

    # -- actions --------------------------------------------------------------------------------
    def register(self, entry: str = "sleep 2 s", fault: str = "no fault",
                 restart: str | float = "never restart", name: str | None = None) -> WorkerRow | None:
        """Register a worker running ENTRIES[entry] with FAULTS[fault].  Returns its row.

        Problems (no cluster, no free slot, dead postmaster) go to ``message``, not exceptions.
        """
        from ...errors import BgwError
        from ...spec import WorkerSpec

        if entry not in ENTRIES:
            raise ValueError(f"entry must be one of {list(ENTRIES)}")
        faults = _faults()
        if fault not in faults:
            raise ValueError(f"fault must be one of {list(faults)}")
        restart_s = RESTARTS[restart] if isinstance(restart, str) else restart
        if self.backend is None:
            self._say("start the cluster first")
            return None
        number = next(self._numbers)
        name = name or f"w{number}"
        entry_point, main_arg = ENTRIES[entry]
        plan = faults[fault]
        if plan == "missing-entry":
            entry_point, plan = MISSING_ENTRY, None
        try:
            spec = WorkerSpec(name=name, entry=entry_point, main_arg=main_arg, restart=restart_s,
                              notify=True, fault=plan)
            handle = self.backend.register_dynamic_worker(spec)
        except BgwError as e:
            self._say(f"register failed: {type(e).__name__}: {e}")
            return None
        row = WorkerRow(number, name, entry, fault, restart_s, handle, handle.slot,
                        handle.generation, registered_ns=handle.registered_ns)
        with self._lock:
            self.rows.append(row)
            self.message = f"registered {name} in slot {row.slot} (generation {row.generation})"
            self._changed()
        t = threading.Thread(target=self._wait, args=(row,), name=f"bgwlab-wait-{name}", daemon=True)
        self._waiters.append(t)
        t.start()
        return row

    def _wait(self, row: WorkerRow) -> None:
        h = row.handle
        try:
            status, pid = h.wait_for_startup()
            ms = (time.monotonic_ns() - row.registered_ns) / 1e6
            with self._lock:
                row.startup = f"{status.name}" + (f" pid {pid}" if pid else "") + f" after {ms:.1f} ms"
                self._changed()
            self._notify_view()
            status = h.wait_for_shutdown()
            ms = (time.monotonic_ns() - row.registered_ns) / 1e6
            with self._lock:
                row.shutdown = f"{status.name} at {ms:.0f} ms"
                self._changed()
        except Exception as e:  # e.g. the backend detached under us at stop()
            with self._lock:
                row.shutdown = row.shutdown or f"wait ended: {type(e).__name__}"
                self._changed()
        self._notify_view()

    def find(self, worker) -> WorkerRow:
        """A row by number, name or WorkerRow."""
        if isinstance(worker, WorkerRow):
            return worker
        for r in self.rows:
            if worker in (r.number, r.name):
                return r
        raise KeyError(f"no worker {worker!r} was registered from this panel")

    def terminate(self, worker) -> None:
        """Ask the postmaster to stop (or never start) a worker: ``handle.terminate()``."""
        row = self.find(worker)
        if self.backend is None:
            self._say("the cluster is not running")
            return
        try:
            row.handle.terminate()
        except Exception as e:
            self._say(f"terminate failed: {type(e).__name__}: {e}")
            return
        self._say(f"terminate requested for {row.name} (slot {row.slot}, generation {row.generation})")

    def kill_postmaster(self) -> None:
        """SIGKILL the postmaster: waiters report POSTMASTER_DIED, workers exit on their own."""
        if not self.running:
            self._say("no running postmaster to kill")
            return
        pid = self.cluster.postmaster_pid
        self.cluster.kill_postmaster()
        self._say(f"sent SIGKILL to the postmaster (pid {pid})")

    def _say(self, message: str) -> None:
        with self._lock:
            self.message = message
            self._changed()

    def _changed(self) -> None:
        self._version += 1

    def _notify_view(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:
                pass

    # -- observing --------------------------------------------------------------------------------
    @property
    def version(self) -> int:
        """Increases whenever something a view shows has changed."""
        return self._version

    def refresh(self) -> bool:
        """Read new events and each handle's status.  True if anything changed."""
        changed = False
        with self._lock:
            if self._tail is not None:
                new = self._tail.read_new()
                if new:
                    self.events.extend(new)
                    self.events.sort(key=lambda e: e.t_ns)
                    changed = True
            for row in self.rows:
                if self.backend is not None:
                    status, pid = row.handle.get_pid()
                    status = status.name
                else:
                    status, pid = "STOPPED", None
                if (status, pid) != (row.status, row.pid):
                    row.status, row.pid = status, pid
                    changed = True
            if changed:
                self._changed()
        return changed

    def state(self) -> str:
        if self.cluster is None:
            return "not started"
        return self.cluster.state()

    def pid_labels(self) -> dict[int, str]:
        """pid -> "worker NAME (slot S/G)" for every worker pid seen in a ``forked`` event
        or read from a handle (the postmaster logs ``forked`` just after it signals the
        waiter, so a handle can know the pid first)."""
        names = {(r.slot, r.generation): r.name for r in self.rows}
        labels = {}

        def label(name, slot, generation):
            return f"worker {name} (slot {slot}/{generation})".replace("  ", " ")

        with self._lock:
            for e in self.events:
                if e.kind == "forked" and "worker_pid" in e.detail:
                    labels[e.detail["worker_pid"]] = label(names.get((e.slot, e.generation), ""),
                                                           e.slot, e.generation)
            for r in self.rows:
                if r.pid:
                    labels.setdefault(r.pid, label(r.name, r.slot, r.generation))
        if self.cluster is not None:
            labels[self.cluster.postmaster_pid] = "postmaster"
        return labels

    def snapshot(self, max_events: int = 12) -> dict:
        """Everything a view shows, as plain data."""
        with self._lock:
            version = self._version  # read with the data: a later change bumps it past this
            rows = [dict(number=r.number, name=r.name, slot=r.slot, generation=r.generation,
                         entry=r.entry_label, fault=r.fault_label, status=r.status, pid=r.pid,
                         startup=r.startup, shutdown=r.shutdown) for r in self.rows]
            t0 = self.events[0].t_ns if self.events else 0
            log = [format_event(e, t0) for e in self.events[-max_events:]]
            n_events = len(self.events)
            message = self.message
        tree = []
        if self.cluster is not None and self.cluster.alive:
            tree = process_tree(self.cluster.postmaster_pid, self.pid_labels())
        return dict(version=version, state=self.state(), message=message,
                    postmaster_pid=self.cluster.postmaster_pid if self.cluster else None,
                    workers=rows, tree=tree, log=log, n_events=n_events)

    def events_snapshot(self) -> list[Event]:
        with self._lock:
            return list(self.events)


# -- drawing the panel ----------------------------------------------------------------------
_STATUS_COLOURS = {"STARTED": "#1b7f3b", "NOT_YET_STARTED": "#a66a00", "STOPPED": "#555",
                   "POSTMASTER_DIED": "#b00020"}
_STATE_COLOURS = {"running": "#1b7f3b", "crash_recovery": "#a66a00", "dead": "#b00020",
                  "stopped": "#555", "not started": "#555"}


def workers_html(rows: list[dict]) -> str:
    """The workers table of the cluster panel."""
    if not rows:
        return "<i>no workers registered yet: choose what to run and a fault, then “register worker”</i>"
    head = "".join(f"<th style='text-align:left;padding:2px 8px;white-space:nowrap'>{h}</th>" for h in
                   ("#", "name", "slot/gen", "runs", "fault", "status", "pid", "wait_for_startup()",
                    "wait_for_shutdown()"))
    body = []
    for r in rows:
        colour = _STATUS_COLOURS.get(r["status"], "#000")
        cells = [r["number"], r["name"], f"{r['slot']}/{r['generation']}", r["entry"], r["fault"],
                 f"<b style='color:{colour}' class='bgw-status'>{_esc(r['status'])}</b>",
                 r["pid"] or "", r["startup"] or "waiting…", r["shutdown"] or "waiting…"]
        tds = "".join(f"<td style='padding:2px 8px;white-space:nowrap'>"
                      f"{c if isinstance(c, str) and c.startswith('<b') else _esc(c)}</td>" for c in cells)
        body.append(f"<tr data-worker='{_esc(r['name'])}'>{tds}</tr>")
    return (f"<table class='bgw-workers' style='border-collapse:collapse;font-size:12px'>"
            f"<tr style='border-bottom:1px solid #999'>{head}</tr>{''.join(body)}</table>")


def tree_html(tree, postmaster_pid) -> str:
    if not tree:
        if postmaster_pid:
            return f"<pre style='margin:0'>postmaster {postmaster_pid}: gone</pre>"
        return "<pre style='margin:0'>(no cluster)</pre>"
    lines = []
    for depth, pid, status, label in tree:
        prefix = "" if depth == 0 else "   " * (depth - 1) + "└─ "
        lines.append(f"{prefix}{pid:<7} {status:<9} {label}")
    return ("<pre style='margin:0;font-size:12px;white-space:pre;overflow-x:auto'>"
            + _esc("\n".join(lines)) + "</pre>")


# -- the view -------------------------------------------------------------------------------
class ClusterPanel:
    """The cluster panel: controls, workers table, process tree, event log, live timeline.

    ``ClusterPanel(max_workers=4, auto_refresh=True)``; display it as the last expression
    of a cell.  Buttons: start / stop the cluster, register a worker (what it runs, which
    fault, restart policy from menus), terminate the selected worker, kill -9 the
    postmaster.  With ``auto_refresh`` a thread redraws it 4 times a second; call
    ``refresh()`` yourself otherwise.
    """

    def __init__(self, max_workers: int = 4, auto_refresh: bool = True, period: float = 0.25,
                 timeline: bool = True):
        import ipywidgets as w

        self.controller = ClusterController(max_workers=max_workers)
        self._timeline = timeline
        self._timeline_drawn = (-1, 0.0)
        btn = dict(layout=w.Layout(width="auto"))
        self.title = w.HTML()
        self.start_button = w.Button(description="start cluster", icon="play", button_style="success", **btn)
        self.stop_button = w.Button(description="stop cluster", icon="stop", **btn)
        self.entry_menu = w.Dropdown(options=list(ENTRIES), value="sleep 2 s", description="runs",
                                     layout=w.Layout(width="260px"))
        self.fault_menu = w.Dropdown(options=list(FAULTS), value="no fault", description="fault",
                                     layout=w.Layout(width="300px"))
        self.restart_menu = w.Dropdown(options=list(RESTARTS), value="never restart",
                                       description="restart", layout=w.Layout(width="230px"))
        self.register_button = w.Button(description="register worker", icon="plus",
                                        button_style="primary", **btn)
        self.worker_menu = w.Dropdown(options=[], description="worker", layout=w.Layout(width="260px"))
        self.terminate_button = w.Button(description="terminate", icon="times", button_style="warning", **btn)
        self.kill_button = w.Button(description="kill -9 postmaster", icon="bolt", button_style="danger", **btn)
        self.message = w.HTML()
        self.workers = w.HTML()
        self.tree = w.HTML()
        self.log = w.HTML()
        self.timeline = w.Image(format="png", layout=w.Layout(width="100%", max_width="820px"))
        self.timeline_caption = w.HTML()
        self.start_button.on_click(lambda _: self.start_cluster())
        self.stop_button.on_click(lambda _: self.stop_cluster())
        self.register_button.on_click(lambda _: self.register())
        self.terminate_button.on_click(lambda _: self.terminate())
        self.kill_button.on_click(lambda _: self.kill_postmaster())
        box = dict(border="1px solid #ccc", padding="4px", margin="2px")
        self.widget = w.VBox([
            self.title,
            w.HBox([self.start_button, self.stop_button, self.kill_button]),
            w.HBox([self.entry_menu, self.fault_menu, self.restart_menu, self.register_button]),
            w.HBox([self.worker_menu, self.terminate_button]),
            self.message,
            w.VBox([w.HTML("<b>workers</b> (status: live <code>handle.get_pid()</code>; "
                           "the last two columns: what each worker's waiter thread was told)"),
                    self.workers], layout=w.Layout(**box)),
            w.HBox([w.VBox([w.HTML("<b>process tree</b> (psutil)"), self.tree],
                           layout=w.Layout(flex="2", min_width="360px", **box)),
                    w.VBox([w.HTML("<b>event log</b> (newest last)"), self.log],
                           layout=w.Layout(flex="5", **box))]),
        ] + ([w.VBox([w.HTML("<b>timeline</b> of the latest workers (redrawn as events arrive)"),
                      self.timeline, self.timeline_caption], layout=w.Layout(**box))] if timeline else []),
            layout=w.Layout(max_width="1100px"))
        self.widget.add_class("bgwlab-cluster-panel")
        self._rendered_version = -1
        self._refresh_lock = threading.Lock()
        self.refresh(force=True)
        self._refresher = _Refresher(self.refresh, period) if auto_refresh else None

    # -- actions (also what the buttons call) ----------------------------------------------------
    def start_cluster(self):
        self._guard(self.controller.start)

    def stop_cluster(self):
        self._guard(self.controller.stop)

    def register(self, entry=None, fault=None, restart=None):
        """Register a worker with the menus' choices (or the given ones)."""
        row = self._guard(self.controller.register, entry or self.entry_menu.value,
                          fault or self.fault_menu.value, restart or self.restart_menu.value)
        return row

    def terminate(self, worker=None):
        """Terminate the worker chosen in the menu (or the given one)."""
        worker = worker if worker is not None else self.worker_menu.value
        if worker is None:
            self.controller._say("no worker to terminate: register one first")
        else:
            self._guard(self.controller.terminate, worker)
        self.refresh()

    def kill_postmaster(self):
        self._guard(self.controller.kill_postmaster)

    def _guard(self, fn, *args):
        try:
            result = fn(*args)
        except Exception as e:  # show it in the panel; a click must never raise into the void
            self.controller._say(f"{type(e).__name__}: {e}")
            result = None
        self.refresh()
        return result

    # -- drawing ---------------------------------------------------------------------------------
    def refresh(self, force: bool = False) -> None:
        """Pull new state from the controller and redraw what changed (from any thread)."""
        with self._refresh_lock:
            self._refresh(force)

    def _refresh(self, force: bool) -> None:
        c = self.controller
        c.refresh()
        snap = c.snapshot()
        state = snap["state"]
        colour = _STATE_COLOURS.get(state, "#000")
        pm = f" — postmaster pid {snap['postmaster_pid']}" if snap["postmaster_pid"] else ""
        self.title.value = (f"<h3 style='margin:2px 0'>bgwlab cluster panel "
                            f"<span class='bgw-state' style='color:{colour}'>[{_esc(state)}]</span>"
                            f"<small>{_esc(pm)}</small></h3>")
        self.tree.value = tree_html(snap["tree"], snap["postmaster_pid"])
        if force or snap["version"] != self._rendered_version:
            self._rendered_version = snap["version"]
            self.message.value = f"<span class='bgw-message'>{_esc(snap['message'])}</span>"
            self.workers.value = workers_html(snap["workers"])
            self.log.value = (f"<small class='bgw-events' data-n='{snap['n_events']}'>"
                              f"{snap['n_events']} events so far</small>"
                              "<pre style='margin:0;font-size:11px;white-space:pre;overflow-x:auto'>"
                              + _esc("\n".join(snap["log"]) or "(no events yet)") + "</pre>")
            options = [(f"{r['name']} (slot {r['slot']}/{r['generation']})", r["number"])
                       for r in snap["workers"]]
            if [o[1] for o in options] != [o[1] for o in self.worker_menu.options]:
                keep = self.worker_menu.value
                self.worker_menu.options = options
                self.worker_menu.value = keep if keep in [o[1] for o in options] else (
                    options[-1][1] if options else None)
        running = c.running
        self.register_button.disabled = not running
        self.terminate_button.disabled = not snap["workers"] or c.backend is None
        self.kill_button.disabled = not running
        self.stop_button.disabled = c.cluster is None
        self._maybe_draw_timeline(snap["n_events"], force)

    def _maybe_draw_timeline(self, n_events: int, force: bool) -> None:
        if not self._timeline:
            return
        drawn, when = self._timeline_drawn
        now = time.monotonic()
        if n_events == drawn or (not force and now - when < 1.0):
            return
        everything = self.controller.events_snapshot()
        self._timeline_drawn = (len(everything), now)
        try:
            self.timeline.value = render_timeline_png([e for e in everything if e.slot >= 0])
        except Exception as e:
            self.controller._say(f"timeline not drawn: {type(e).__name__}: {e}")
            return
        self.timeline_caption.value = (f"<small class='bgw-timeline-caption' data-n='{len(everything)}'>"
                                       f"drawn from the first {len(everything)} events</small>")

    def close(self) -> None:
        """Stop the refresh thread and the cluster."""
        if self._refresher is not None:
            self._refresher.stop()
        self.controller.stop()
        self.refresh(force=True)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
