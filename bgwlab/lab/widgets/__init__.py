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

    from bgwlab.lab.widgets import ClusterPanel
    panel = ClusterPanel(max_workers=4)
    panel.start_cluster()
    panel            # displays: start/stop, register (with a fault), terminate, kill -9

Every view has ``close()``: it stops its refresh thread (and, for the cluster panel, the
cluster).

Modules: ``cluster_panel`` (the cluster panel, its controller and menus), ``timeline``
(the live timeline and the PNG rendering the panels share), ``experiment_panel`` (the
experiment panel and its controller) and ``common`` (tailing an events file, the drawing
thread, the refresh thread).  Importing the package imports neither ipywidgets nor
matplotlib: a view imports them when it is built, a drawing when it is drawn.
"""

from .cluster_panel import (ENTRIES, FAULTS, ClusterController, ClusterPanel, WorkerRow, format_event,
                            process_tree)
from .common import EventTail, on_draw_thread
from .experiment_panel import LOAD_NAMES, ExperimentController, ExperimentPanel
from .timeline import LiveTimeline, latest_handles, render_timeline_png

__all__ = [
    "FAULTS", "ENTRIES", "EventTail", "WorkerRow", "ClusterController", "ExperimentController",
    "process_tree", "format_event", "render_timeline_png", "latest_handles", "LOAD_NAMES",
    "on_draw_thread",
    "ClusterPanel", "LiveTimeline", "ExperimentPanel",
]
