"""Figures of parallel query (notebook 11, ``bgwlab experiment parallel``).

As ``bgwlab.lab.plots``: every function takes ``ax=None`` (draw into a new figure) or
axes of yours, returns the Figure, and changes no global matplotlib state.

``plot_ring_counters(trace)``        a data queue's bytes_written / bytes_read over time
``plot_parallel_times(df)``          time to first message and to the result vs nworkers
``plot_planned_vs_launched(df)``     nworkers_launched against nworkers_planned
``plot_failure_detection(df)``       time to the leader's error, per fault (and load)
"""

from __future__ import annotations

import numpy as np

from ..lab.plots import LabFigure

__all__ = ["plot_ring_counters", "plot_parallel_times", "plot_planned_vs_launched",
           "plot_failure_detection"]

_WORKER_COLORS = ["#4575b4", "#d73027", "#1b7837", "#762a83", "#fc8d59", "#999999"]
_LOAD_COLORS = {"idle": "#4575b4", "busy": "#d73027"}
_FAULT_COLORS = {"fork_failure": "#762a83", "early_crash": "#d95f02", "worker_error": "#d73027",
                 "timeout": "#999999"}


def _axes(ax, figsize=(6.4, 4.2)):
    if ax is not None:
        return ax.figure, ax
    fig = LabFigure(figsize=figsize, layout="constrained")
    return fig, fig.subplots()


def _style(ax) -> None:
    ax.grid(True, which="major", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def plot_ring_counters(trace, ax=None):
    """``bytes_written`` (solid) and ``bytes_read`` (dashed) of each worker's data queue
    against the leader's clock.  `trace`: ``GatherResult.trace`` (dicts with t_ms, number,
    bytes_written, bytes_read, ring_size) or a DataFrame of them.

    The gap between a worker's two lines is what sits in its ring, never more than the
    ring size; bytes_read moves in steps because the receiver gives space back a quarter
    of a ring at a time."""
    import pandas as pd

    df = trace if isinstance(trace, pd.DataFrame) else pd.DataFrame(list(trace))
    fig, ax = _axes(ax, (7.2, 4.2))
    if len(df):
        for i, (number, g) in enumerate(df.groupby("number")):
            c = _WORKER_COLORS[i % len(_WORKER_COLORS)]
            ax.step(g.t_ms, g.bytes_written / 1024, where="post", color=c, linewidth=1.6,
                    label=f"worker {number}: bytes_written", gid=f"written-{number}")
            ax.step(g.t_ms, g.bytes_read / 1024, where="post", color=c, linewidth=1.2, linestyle="--",
                    label=f"worker {number}: bytes_read", gid=f"read-{number}")
        ring = int(df.ring_size.iloc[0])
        ax.set_title(f"Each worker's queue: bytes written vs read ({ring // 1024} KiB ring)", fontsize=10)
    ax.set_xlabel("ms since the leader created the context")
    ax.set_ylabel("KiB (counters only grow)")
    _style(ax)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncols=2, frameon=False)
    return fig


def plot_parallel_times(df, ax=None):
    """Median time to the first message (dashed) and to the result (solid) against
    nworkers planned, per load; the trials as dots.  Rows of ``parallel_experiment`` with
    fault == "none"."""
    d = df[df.fault == "none"]
    fig, ax = _axes(ax, (6.8, 4.2))
    for load, g in d.groupby("load", sort=False):
        c = _LOAD_COLORS.get(load, "#999999")
        for col, style, what in (("result_ms", "-", "result"), ("first_message_ms", "--", "first message")):
            m = g.groupby("nworkers")[col].median().dropna()
            if len(m):
                ax.plot(m.index, m.values, style, marker="o", color=c, label=f"{what}, {load}",
                        gid=f"{col}-{load}")
            v = g[["nworkers", col]].dropna()
            ax.plot(v.nworkers, v[col], ".", color=c, alpha=0.35, markersize=4)
    ax.set_xlabel("nworkers planned (0: the leader alone)")
    ax.set_ylabel("ms since ParallelContext(...)")
    ax.set_title("Toy Gather: time to the first tuple and to the answer", fontsize=10)
    ax.set_xticks(sorted(set(d.nworkers)))
    _style(ax)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, frameon=False)
    return fig


def plot_planned_vs_launched(df, ax=None, slots: int | None = None):
    """nworkers_launched against nworkers_planned: the diagonal until the slots run out."""
    fig, ax = _axes(ax, (4.8, 4.2))
    d = df[df.fault == "none"] if "fault" in df.columns else df
    planned = d["nworkers"].to_numpy()
    launched = d["launched"].to_numpy()
    rng = np.random.default_rng(0)
    ax.plot(planned + rng.uniform(-0.08, 0.08, len(planned)), launched, "o", color="#4575b4",
            alpha=0.6, label="trials", gid="launched")
    top = int(max(planned.max(initial=0), 1))
    ax.plot([0, top], [0, top], ":", color="#999999", label="launched = planned")
    if slots is None:
        slots = (df.attrs.get("metadata", {}).get("experiment", {}) or {}).get("slots")
    if slots:
        ax.axhline(slots, color="#d73027", linewidth=1, label=f"{slots} worker slots")
    ax.set_xlabel("nworkers_planned")
    ax.set_ylabel("nworkers_launched")
    ax.set_title("Planned vs launched: slots run out, nobody errors", fontsize=10)
    _style(ax)
    ax.legend(fontsize=8, frameon=False)
    return fig


def plot_failure_detection(df, ax=None, timeouts=()):
    """Time from ``ParallelContext(...)`` to the leader's exception, per injected fault
    (and load); dots per trial, a bar at the median.  `timeouts`: draw where a leader that
    gives workers T seconds to attach would report a failure instead."""
    d = df[df.fault != "none"]
    cats = [(f, ld) for f in dict.fromkeys(d.fault) for ld in dict.fromkeys(d["load"])]
    fig, ax = _axes(ax, (7.0, 1.6 + 0.55 * max(len(cats), 1)))
    rng = np.random.default_rng(0)
    for i, (f, ld) in enumerate(cats):
        v = d[(d.fault == f) & (d["load"] == ld)].error_ms.dropna().to_numpy()
        if not len(v):
            continue
        c = _FAULT_COLORS.get(f, "#999999")
        ax.plot(v, i + rng.uniform(-0.15, 0.15, len(v)), "o", color=c, alpha=0.6, markersize=5,
                gid=f"error-{f}-{ld}")
        med = float(np.median(v))
        ax.plot([med, med], [i - 0.3, i + 0.3], color="black", linewidth=2)
        ax.annotate(f"{med:.1f} ms", (med, i + 0.32), fontsize=8, ha="center")
    for T in timeouts:
        ax.axvline(T * 1000, color=_FAULT_COLORS["timeout"], linestyle="--", linewidth=1)
        ax.annotate(f"timeout {T:g} s", (T * 1000, -0.6), fontsize=8, ha="center",
                    color="#666666")
    ax.set_yticks(range(len(cats)))
    ax.set_yticklabels([f"{f}, {ld}" for f, ld in cats])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("ParallelContext(...) → the leader holds the error (ms)")
    ax.set_title("A failed worker, reported to the leader", fontsize=10)
    _style(ax)
    return fig
