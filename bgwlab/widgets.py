"""Interactive controls for the notebooks: a cluster panel, a live timeline, an experiment panel.

Two layers, so that everything that can go wrong is testable without a browser:

* **Controllers** (``ClusterController``, ``ExperimentController``) hold the state and do
  the work.  They never import ipywidgets; tests call their methods and check their
  state.  Long work (waiting for a worker, running trials) runs in daemon threads, so the
  Jupyter kernel stays responsive; nothing here forks the kernel (the cluster's
  postmaster is a separate process started by ``Cluster.start``).
* **Views** (``ClusterPanel``, ``LiveTimeline``, ``ExperimentPanel``) lay out ipywidgets,
  forward clicks to a controller and redraw from its ``snapshot()``.  A view refreshes
  itself from a background thread a few times a second (UI refresh only: the waits
  themselves sleep on latches, never on a timer).

Typical use in a notebook::

    from bgwlab.widgets import ClusterPanel
    panel = ClusterPanel(max_workers=4)
    panel.start_cluster()
    panel            # displays: start/stop, register (with a fault), terminate, kill -9

Every view has ``close()``: it stops its refresh thread (and, for the cluster panel, the
cluster).
"""

from __future__ import annotations

import errno as _errno
import html
import io
import itertools
import os
import signal as _signal
import threading
import time
from dataclasses import dataclass, field

from .events import Event, parse_line

__all__ = [
    "FAULTS", "ENTRIES", "EventTail", "WorkerRow", "ClusterController", "ExperimentController",
    "process_tree", "format_event", "render_timeline_png", "latest_handles", "LOAD_NAMES",
    "on_draw_thread",
    "ClusterPanel", "LiveTimeline", "ExperimentPanel",
]


# -- what the menus offer ------------------------------------------------------------------
def _faults():
    from .spec import Fault

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

LOAD_NAMES = ("idle", "hogs", "stalls", "busy")
"""The loads of ``bgwlab.experiments.run_grid`` offered by the experiment panel."""


# -- reading events as they arrive -----------------------------------------------------------
class EventTail:
    """Reads the events appended to a cluster's ``events.jsonl`` since the last call.

    Keeps a byte offset and holds back a trailing partial line until it is complete.
    A missing file (cluster not started yet, or removed at stop) reads as no new events.
    """

    def __init__(self, path):
        self.path = str(path)
        self._offset = 0
        self._partial = b""

    def read_new(self) -> list[Event]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        out = []
        for line in lines:
            if line.strip():
                e = parse_line(line.decode("utf-8", errors="replace"))
                if e is not None:
                    out.append(e)
        return out


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


def _install_dispatcher() -> None:
    """Install bgwlab's SIGUSR1 dispatcher now, if this is the main thread.

    A process's first ``connect()`` must run in its main thread (only it may set signal
    handlers).  Controllers are built in a notebook cell -- the main thread -- while their
    work later runs in other threads: installing here makes that work.
    """
    if threading.current_thread() is threading.main_thread():
        from .latch import dispatcher

        dispatcher.install()


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
        from .cluster import Cluster

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
        from .errors import BgwError
        from .spec import WorkerSpec

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
        """pid -> "slot S/G name" for every worker pid seen in a ``forked`` event."""
        names = {(r.slot, r.generation): r.name for r in self.rows}
        labels = {}
        with self._lock:
            for e in self.events:
                if e.kind == "forked" and "worker_pid" in e.detail:
                    n = names.get((e.slot, e.generation), "")
                    labels[e.detail["worker_pid"]] = f"worker {n} (slot {e.slot}/{e.generation})".replace("  ", " ")
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


# -- the experiment panel's model ------------------------------------------------------------
class ExperimentController:
    """Re-runs a small notification-vs-timeout experiment for chosen T, load and trials.

    ``start(T, load, trials)`` runs ``bgwlab.experiments.run_grid`` trial by trial in a
    background thread (the progress counters ``done``/``total`` advance after each
    trial); ``wait()`` joins it; ``results`` is the DataFrame so far.  ``cancel()`` stops
    after the current trial.
    """

    def __init__(self, scenarios=("ok", "fork_failure"), strategies=("notify", "timeout"),
                 on_progress=None):
        self.scenarios = tuple(scenarios)
        self.strategies = tuple(strategies)
        self.on_progress = on_progress
        self.results = None
        self.error: str | None = None
        self.done = 0
        self.total = 0
        self.finished = True
        self.params: dict = {}
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()
        _install_dispatcher()  # the runs connect from a background thread

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout_s: float, load: str, trials: int) -> None:
        """Run in the background: ``trials`` rounds of every scenario x strategy at (T, load).

        ``load``: a load name of ``run_grid`` (``"idle"``, ``"hogs"``, ``"stalls"``, ``"busy"``).
        """
        if self.running:
            raise RuntimeError("an experiment is already running; cancel() it or wait()")
        if trials < 1:
            raise ValueError("trials must be at least 1")
        self.params = dict(timeout_s=float(timeout_s), load=str(load), trials=int(trials))
        self.done, self.total = 0, int(trials)
        self.results, self.error = None, None
        self.finished = False
        self._cancel.clear()
        self._thread = threading.Thread(target=self._run, name="bgwlab-experiment", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import pandas as pd

        from . import experiments

        p = self.params
        parts = []
        try:
            for trial in range(p["trials"]):
                if self._cancel.is_set():
                    break
                df = experiments.run_grid(list(self.scenarios), list(self.strategies),
                                          [p["timeout_s"]], [p["load"]], 1,
                                          progress=False, seed=trial)
                df["trial"] = trial
                parts.append(df)
                self.results = pd.concat(parts, ignore_index=True)
                self.results.attrs.update(parts[0].attrs)
                self.done = trial + 1
                self._progress()
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"
        self.finished = True
        self._progress()

    def _progress(self):
        if self.on_progress is not None:
            try:
                self.on_progress()
            except Exception:
                pass

    def wait(self, timeout: float | None = None) -> bool:
        """Join the run; True if it has finished."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running

    def cancel(self) -> None:
        self._cancel.set()

    def summary(self):
        """Per scenario x strategy: trials, median time to verdict, wrong verdicts (a timed_out
        failure counts as right), spurious timeouts, and the verdicts (a DataFrame)."""
        df = self.results
        if df is None or df.empty:
            return None
        g = df.groupby(["scenario", "strategy"])
        out = g.agg(trials=("trial", "size"),
                    median_ms=("time_to_verdict_ms", "median"),
                    wrong=("correct", lambda c: int((~c.astype(bool)).sum())),
                    spurious=("spurious_timeout", lambda c: int(c.astype(bool).sum())))
        out["verdicts"] = g["verdict"].agg(lambda v: ", ".join(f"{k}:{n}" for k, n in v.value_counts().items()))
        return out.reset_index()


# -- drawing ----------------------------------------------------------------------------------
def latest_handles(events, n: int = 3, slots=None) -> list[tuple[int, int]]:
    """(slot, generation) of the `n` most recent registrations in `events` (optionally in `slots`)."""
    seen = []
    for e in sorted(events, key=lambda e: e.t_ns):
        if e.kind == "registered" and (slots is None or e.slot in slots):
            key = (e.slot, e.generation)
            if key in seen:
                seen.remove(key)
            seen.append(key)
    return seen[-n:]


_drawer = None
_drawer_pid = None
_drawer_lock = threading.Lock()


def on_draw_thread(fn, *args, **kwargs):
    """Run `fn` on this process's one drawing thread and return its result.

    matplotlib is not thread-safe, and it caches open font files per thread: every
    widget therefore draws on one long-lived thread, whichever thread asks.
    """
    global _drawer, _drawer_pid
    from concurrent.futures import ThreadPoolExecutor

    with _drawer_lock:
        if _drawer is None or _drawer_pid != os.getpid():
            _drawer = ThreadPoolExecutor(1, thread_name_prefix="bgwlab-draw")
            _drawer_pid = os.getpid()
        drawer = _drawer
    return drawer.submit(fn, *args, **kwargs).result()


def render_timeline_png(events, slots=None, n_handles: int = 3, width_in: float = 9.0) -> bytes:
    """``bgwlab.plots.plot_timeline`` of the latest `n_handles` workers in `events`, as PNG bytes.

    Callable from any thread (it draws on the drawing thread, on a bare Figure, no pyplot).
    """
    return on_draw_thread(_render_timeline, events, slots, n_handles, width_in)


def _render_timeline(events, slots, n_handles, width_in) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from . import plots

    handles = latest_handles(events, n_handles, slots)
    fig = Figure(figsize=(width_in, 1.0 + 1.0 * max(1, len(handles))), dpi=80, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if handles:
        plots.plot_timeline(events, ax=ax, slots=handles, max_handles=n_handles)
    else:
        ax.text(0.5, 0.5, "no worker registered yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


_STATUS_COLOURS = {"STARTED": "#1b7f3b", "NOT_YET_STARTED": "#a66a00", "STOPPED": "#555",
                   "POSTMASTER_DIED": "#b00020"}
_STATE_COLOURS = {"running": "#1b7f3b", "crash_recovery": "#a66a00", "dead": "#b00020",
                  "stopped": "#555", "not started": "#555"}


def _esc(x) -> str:
    return html.escape("" if x is None else str(x))


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


# -- views ------------------------------------------------------------------------------------
class _Refresher:
    """A daemon thread that calls `tick()` every `period` seconds until stopped."""

    def __init__(self, tick, period: float):
        self._tick, self._period = tick, period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bgwlab-widget-refresh", daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(self._period):
            try:
                self._tick()
            except Exception:
                pass

    def stop(self):
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


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


class LiveTimeline:
    """A timeline of a cluster's events that redraws as events arrive.

    ``LiveTimeline(cluster)`` (or a path to an events.jsonl); ``stop()`` ends the refresh
    thread (it also ends by itself once the cluster has stopped).  It shows the latest
    ``n_handles`` registrations (optionally only those in ``slots``).
    """

    def __init__(self, cluster_or_path, slots=None, n_handles: int = 4, period: float = 0.5,
                 auto_refresh: bool = True):
        import ipywidgets as w

        self._cluster = None if isinstance(cluster_or_path, (str, os.PathLike)) else cluster_or_path
        path = cluster_or_path if self._cluster is None else self._cluster.events_path
        self.tail = EventTail(path)
        self.slots = slots
        self.n_handles = n_handles
        self.events: list[Event] = []
        self.draws = 0
        self.image = w.Image(format="png", layout=w.Layout(width="100%", max_width="820px"))
        self.caption = w.HTML()
        self.widget = w.VBox([self.caption, self.image])
        self.refresh(force=True)
        self._refresher = _Refresher(self.refresh, period) if auto_refresh else None

    def refresh(self, force: bool = False) -> bool:
        new = self.tail.read_new()
        if self._cluster is not None and not self._cluster.alive and self._refresher is not None:
            if not new:  # nothing more will come
                self._refresher._stop.set()
        if not new and not force:
            return False
        self.events = sorted(self.events + new, key=lambda e: e.t_ns)
        shown = [e for e in self.events if e.slot >= 0]
        self.image.value = render_timeline_png(shown, slots=self.slots, n_handles=self.n_handles)
        self.draws += 1
        self.caption.value = f"<small>{len(self.events)} events, redrawn as they arrive</small>"
        return True

    def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.stop()
        self.refresh()

    close = stop

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


class ExperimentPanel:
    """Sliders for T, load and trials; "run" re-runs the experiment in a thread with a progress bar.

    Shows the verdicts per scenario and strategy, and the headline figure of what ran.
    """

    def __init__(self, scenarios=("ok", "fork_failure"), strategies=("notify", "timeout"),
                 T=0.05, load="idle", trials=3, max_trials=30):
        import ipywidgets as w

        self.controller = ExperimentController(scenarios, strategies, on_progress=self._on_progress)
        self.T = w.FloatLogSlider(value=T, base=10, min=-2, max=1, step=0.1, description="T (s)",
                                  readout_format=".2f", continuous_update=False)
        self.load = w.SelectionSlider(options=list(LOAD_NAMES), value=load, description="load",
                                      continuous_update=False)
        self.trials = w.IntSlider(value=trials, min=1, max=max_trials, description="trials",
                                  continuous_update=False)
        self.run_button = w.Button(description="run", icon="play", button_style="primary")
        self.cancel_button = w.Button(description="cancel", icon="stop")
        self.progress = w.IntProgress(value=0, min=0, max=1, description="0 / 0")
        self.table = w.HTML()
        self.figure = w.Image(format="png", layout=w.Layout(width="100%", max_width="820px"))
        self.run_button.on_click(lambda _: self.run())
        self.cancel_button.on_click(lambda _: self.controller.cancel())
        self.widget = w.VBox([w.HBox([self.T, self.load, self.trials]),
                              w.HBox([self.run_button, self.cancel_button, self.progress]),
                              self.table, self.figure])
        self.widget.add_class("bgwlab-experiment-panel")

    def run(self):
        """Start a run with the sliders' values (returns at once; the run is in a thread)."""
        c = self.controller
        if c.running:
            return
        c.start(self.T.value, self.load.value, self.trials.value)
        self.progress.max = max(1, c.total)
        self.progress.value = 0
        self.progress.description = f"0 / {c.total}"
        self.run_button.disabled = True
        self.table.value = f"<i>running: T={self.T.value:.3f} s, load {self.load.value}…</i>"

    def _on_progress(self):
        c = self.controller
        self.progress.value = c.done
        self.progress.description = f"{c.done} / {c.total}"
        s = c.summary()
        if s is not None:
            self.table.value = s.to_html(index=False, float_format=lambda x: f"{x:.1f}")
        if c.error:
            self.table.value += f"<p style='color:#b00020'>{_esc(c.error)}</p>"
        if c.finished:
            self.run_button.disabled = False
            if c.results is not None and not c.results.empty:
                self.figure.value = _headline_png(c.results)

    def wait(self, timeout=None) -> bool:
        return self.controller.wait(timeout)

    def close(self):
        self.controller.cancel()
        self.controller.wait(60)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


def _headline_png(df) -> bytes:
    return on_draw_thread(_render_headline, df)


def _render_headline(df) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from . import plots

    fig = Figure(figsize=(10, 3.6), dpi=90, layout="constrained")
    FigureCanvasAgg(fig)
    plots.plot_headline(df, ax=list(fig.subplots(1, 2)))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
