"""The live timeline: a cluster's events drawn as per-worker lanes, redrawn as they arrive.

``render_timeline_png(events)`` draws ``bgwlab.lab.plots.plot_timeline`` of the latest
workers (``latest_handles``) as PNG bytes, from any thread: on the drawing thread, on a
bare Figure, no pyplot.  ``LiveTimeline(cluster)`` is the ipywidgets view that follows a
running cluster's ``events.jsonl`` (notebook 06); the cluster panel embeds the same
drawing.
"""

from __future__ import annotations

import io
import os

from ...events import Event
from .common import EventTail, _Refresher, on_draw_thread

__all__ = ["latest_handles", "render_timeline_png", "LiveTimeline"]


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


def render_timeline_png(events, slots=None, n_handles: int = 3, width_in: float = 9.0) -> bytes:
    """``bgwlab.lab.plots.plot_timeline`` of the latest `n_handles` workers in `events`, as PNG bytes.

    Callable from any thread (it draws on the drawing thread, on a bare Figure, no pyplot).
    """
    return on_draw_thread(_render_timeline, events, slots, n_handles, width_in)


def _render_timeline(events, slots, n_handles, width_in) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .. import plots

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
