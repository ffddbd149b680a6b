"""Figures from results DataFrames and event logs.

Every function takes ``ax=None`` (draw into a new Figure) or axes of yours, returns the
Figure, and changes no global matplotlib state: figures are built with
``matplotlib.figure.Figure`` (not pyplot, so nothing accumulates in a figure manager) and
styled explicitly, never through rcParams.  ``save_figure`` writes PNG and SVG with
fixed metadata, so the same figure gives the same bytes on every run.

``plot_headline(df)``        time to report a failed start, and the spurious-timeout rate
                             under load, against the timeout T -- notification as reference
``plot_timeline(events)``    per-worker lanes: registrant / postmaster / worker events
``plot_latency_cdf(df)``     start latency (registration -> user code) CDFs, idle vs busy
``plot_decomposition(ev)``   where the notification latency goes: request seen, fork,
                             notify, wake
``plot_verdict_matrix(df)``  scenario x strategy: verdicts that match the truth, median time
                             to verdict with its 95% interval
``plot_death_detection(df)`` worker exit -> registrant knows: SIGUSR1 vs pidfd vs polling

New figures are ``LabFigure``s: plain matplotlib Figures that also render themselves in
Jupyter without ``%matplotlib inline`` (``_repr_png_``).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

__all__ = ["plot_headline", "plot_timeline", "plot_latency_cdf", "plot_decomposition",
           "plot_death_detection", "plot_verdict_matrix", "save_figure", "split_events_by_load",
           "wilson_interval", "median_interval", "decomposition_table", "DECOMPOSITION_STAGES", "COLORS", "LabFigure"]

COLORS = {
    "notify": "#1b7837", "poll_pid": "#762a83", "timeout": "#d95f02",
    "idle": "#4575b4", "busy": "#d73027", "hogs": "#fc8d59", "stalls": "#91bfdb",
    "sigusr1": "#1b7837", "pidfd": "#2166ac", "poll": "#762a83",
}
_FALLBACK = ["#4575b4", "#d73027", "#fc8d59", "#91bfdb", "#999999", "#1b9e77"]
FAILED_SCENARIOS_EXCLUDED = ("slot_exhaustion",)  # refused synchronously: nobody waits


def _color(name: str, i: int = 0) -> str:
    return COLORS.get(name, _FALLBACK[i % len(_FALLBACK)])


class LabFigure(Figure):
    """A matplotlib Figure that shows itself in Jupyter, with or without ``%matplotlib inline``."""

    def _repr_png_(self):
        buf = io.BytesIO()
        self.savefig(buf, format="png", dpi=100)
        return buf.getvalue()


def _new_figure(ncols: int = 1, figsize=(6.4, 4.2)):
    fig = LabFigure(figsize=figsize, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _legend(ax, **kw) -> None:
    """A legend, if anything was labelled (an empty selection draws an empty panel, quietly)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kw)


def _style(ax) -> None:
    ax.grid(True, which="major", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for k successes out of n."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def median_interval(values, conf: float = 0.95) -> tuple[float, float]:
    """Distribution-free interval for the median (order statistics, exact binomial).

    The interval [x_(l), x_(n+1-l)] with the largest l whose coverage is at least `conf`.
    With fewer than 6 values no such l exists: the whole range is returned (coverage is
    then below `conf`; 5 values cover 94 %).  NaN for no values.
    """
    v = np.sort(np.asarray(values, dtype=float))
    v = v[~np.isnan(v)]
    n = len(v)
    if n == 0:
        return (math.nan, math.nan)
    alpha = (1 - conf) / 2
    cdf, l = 0.0, 0
    for i in range(n):  # cdf = P(Bin(n, 1/2) <= i)
        cdf += math.comb(n, i) / 2 ** n
        if cdf > alpha:
            break
        l = i + 1
    if l < 1:
        return (float(v[0]), float(v[-1]))
    return (float(v[l - 1]), float(v[n - l]))


def _bool(s):
    return s.astype(str).str.lower().eq("true") if s.dtype == object else s.astype(bool)


# -- the headline -----------------------------------------------------------------------------------
def _failed_rows(df):
    return df[(df.truth == "failed") & ~df.scenario.isin(FAILED_SCENARIOS_EXCLUDED)]


def plot_headline(df, ax=None):
    """Left: time to report a failed start vs T.  Right: spurious-timeout rate vs T per load.

    ``df``: results with the columns of ``bgwlab.lab.experiments.COLUMNS``.  Timeout(T) is one
    point per T (median, band p10-p90); notify and poll_pid have no T and are drawn as
    horizontal reference lines.  ``ax``: None (new two-panel figure), a pair of axes, or
    one axes (the rate then goes on a twin y axis).
    """
    twin = False
    if ax is None:
        fig, (ax_t, ax_r) = _new_figure(2, figsize=(11, 4.4))
    elif isinstance(ax, (list, tuple, np.ndarray)):
        ax_t, ax_r = ax[0], ax[1]
        fig = ax_t.figure
    else:
        ax_t, ax_r, twin = ax, ax.twinx(), True
        fig = ax.figure
    _headline_time(df, ax_t)
    _headline_rate(df, ax_r, twin=twin)
    return fig


def _headline_time(df, ax) -> None:
    failed = _failed_rows(df)
    to = failed[failed.strategy == "timeout"]
    Ts = sorted(to.timeout_s.dropna().unique())
    if Ts:
        g = to.groupby("timeout_s").time_to_verdict_ms
        med = g.median().reindex(Ts)
        lo, hi = g.quantile(0.1).reindex(Ts), g.quantile(0.9).reindex(Ts)
        x = np.array(Ts) * 1000
        ax.fill_between(x, lo.values, hi.values, color=_color("timeout"), alpha=0.18, linewidth=0)
        ax.plot(x, med.values, "o-", color=_color("timeout"), label="timeout(T): reports at T",
                gid="timeout-failed")
        ax.plot(x, x, ":", color="#888888", linewidth=1, label="y = T", gid="diagonal")
    notify = failed[failed.strategy == "notify"]
    if len(notify):  # one line per failure scenario: their times differ by an order of magnitude
        ax.axhspan(float(notify.time_to_verdict_ms.quantile(0.1)),
                   float(notify.time_to_verdict_ms.quantile(0.9)), color=_color("notify"), alpha=0.12,
                   linewidth=0)
        for i, (sc, g) in enumerate(notify.groupby("scenario", sort=True)):
            m = float(g.time_to_verdict_ms.median())
            ax.axhline(m, linestyle=["-", (0, (6, 2)), (0, (1, 1)), (0, (3, 1, 1, 1))][i % 4],
                       color=_color("notify"), linewidth=2,
                       label=f"notify, {sc}: {_fmt_ms(m)}", gid=f"notify-failed:{sc}")
    poll = failed[failed.strategy == "poll_pid"].time_to_verdict_ms
    if len(poll):
        m = float(poll.median())
        ax.axhline(m, linestyle="--", color=_color("poll_pid"), linewidth=1.4,
                   label=f"poll_pid: {_fmt_ms(m)}", gid="poll_pid-failed")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("timeout T (ms)")
    ax.set_ylabel("time to report a failed start (ms)")
    n = len(failed)
    ax.set_title(f"A failed start is reported at T, not when it fails\n({n} failed starts; "
                 "lines: medians, bands: p10-p90)", fontsize=10)
    _style(ax)
    _legend(ax, fontsize=8, loc="upper left", frameon=False)


def _headline_rate(df, ax, twin: bool = False) -> None:
    ok = df[df.truth == "started"]
    to = ok[ok.strategy == "timeout"]
    Ts = sorted(to.timeout_s.dropna().unique())
    x = np.array(Ts) * 1000
    loads = [ld for ld in ("idle", "hogs", "stalls", "busy") if ld in set(to.load)] + \
        sorted(set(to.load) - {"idle", "hogs", "stalls", "busy"})
    for i, ld in enumerate(loads):
        sub = to[to.load == ld]
        rate, lo, hi = [], [], []
        for T in Ts:
            s = _bool(sub[sub.timeout_s == T].spurious_timeout)
            k, n = int(s.sum()), int(len(s))
            rate.append(100 * k / n if n else math.nan)
            a, b = wilson_interval(k, n)
            lo.append(100 * a)
            hi.append(100 * b)
        c = _color(ld, i)
        ax.fill_between(x, lo, hi, color=c, alpha=0.15, linewidth=0)
        ax.plot(x, rate, "s-" if ld == "busy" else "o--", color=c, label=f"timeout(T), {ld}",
                gid=f"spurious-{ld}")
    notify = ok[ok.strategy == "notify"]
    if len(notify):
        wrong = 100 * float((~_bool(notify.correct)).mean())
        ax.axhline(wrong, color=_color("notify"), linewidth=2,
                   label=f"notify: {wrong:.0f}% wrong (n={len(notify)})", gid="notify-spurious")
    busy = ok[(ok.load == "busy")].start_latency_ms.dropna()
    if len(busy) and len(Ts):
        p = float(busy.quantile(0.9))
        ax.axvline(p, color="#555555", linestyle=":", linewidth=1,
                   label=f"busy start latency p90 = {_fmt_ms(p)}", gid="busy-p90")
    if len(Ts):
        ax.set_xscale("log")
    ax.set_ylim(-3, 103)
    ax.set_xlabel("timeout T (ms)")
    ax.set_ylabel("spurious timeouts (% of good starts)")
    if not twin:
        ax.set_title("...and gives up on workers that do start, on a busy machine\n"
                     "(band: 95% Wilson interval)", fontsize=10)
        _style(ax)
    _legend(ax, fontsize=8, loc="upper right", frameon=False)


def _fmt_ms(v: float) -> str:
    if v < 1:
        return f"{v * 1000:.0f} µs"
    if v < 10:
        return f"{v:.1f} ms"
    return f"{v:.0f} ms"


# -- latency CDF --------------------------------------------------------------------------------------
def plot_latency_cdf(df, ax=None, column: str = "start_latency_ms"):
    """Empirical CDF of the start latency (registration -> user code), one line per load.

    Uses every trial whose truth is "started" (whatever the strategy: the latency comes
    from the event log).  Dotted verticals mark the timeouts T of the grid, if it has any
    (the axis label mentions them only then).
    """
    if ax is None:
        fig, (ax,) = _new_figure(1)
    else:
        fig = ax.figure
    ok = df[df.truth == "started"]
    loads = [ld for ld in ("idle", "hogs", "stalls", "busy") if ld in set(ok.load)] + \
        sorted(set(ok.load) - {"idle", "hogs", "stalls", "busy"})
    for i, ld in enumerate(loads):
        v = np.sort(ok[ok.load == ld][column].dropna().to_numpy())
        if not len(v):
            continue
        y = np.arange(1, len(v) + 1) / len(v)
        ax.step(v, y, where="post", color=_color(ld, i), linewidth=1.8,
                label=f"{ld}: median {_fmt_ms(float(np.median(v)))}, n={len(v)}", gid=f"cdf-{ld}")
    Ts = sorted(df.timeout_s.dropna().unique()) if "timeout_s" in df.columns else []
    for T in Ts:
        ax.axvline(T * 1000, color="#bbbbbb", linestyle=":", linewidth=0.8, gid=f"timeout-{T:g}")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    # name the dotted lines only when there are some: a label must not promise what is not drawn
    ax.set_xlabel("registration → worker reaches user code (ms)" + ("; dotted: the timeouts T" if Ts else ""))
    ax.set_ylabel("fraction of starts")
    ax.set_title("Start latency, idle vs busy", fontsize=10)
    _style(ax)
    _legend(ax, fontsize=8, loc="lower right", frameon=False)
    return fig


# -- events: helpers ------------------------------------------------------------------------------------
def _key(e):
    return (e.detail.get("cluster", 0), e.slot, e.generation)


def _by_handle(events) -> dict:
    out: dict = {}
    for e in events:
        if e.slot >= 0:
            out.setdefault(_key(e), []).append(e)
    for v in out.values():
        v.sort(key=lambda e: e.t_ns)
    return out


def split_events_by_load(events, df) -> dict:
    """{load: events} using the (cluster, slot, generation) of each row of `df`."""
    keys: dict = {}
    for c, s, g, ld in zip(df.cluster, df.slot, df.generation, df.load):
        keys[(int(c), int(s), int(g))] = ld
    out: dict = {}
    for e in events:
        ld = keys.get(_key(e))
        if ld is not None:
            out.setdefault(ld, []).append(e)
    return out


# -- timeline ---------------------------------------------------------------------------------------------
_LANES = ("registrant", "postmaster", "worker")
_SOURCE_LANE = {"backend": 0, "postmaster": 1, "worker": 2}
_KIND_STYLE = {
    "registered": ("o", "#333333"), "woke": ("v", "#1b7837"), "verdict": ("*", "#000000"),
    "terminate_requested": ("x", "#333333"),
    "request_seen": ("s", "#4575b4"), "fork_attempted": ("|", "#4575b4"),
    "forked": ("D", "#2166ac"), "fork_failed": ("X", "#d73027"), "notified": (">", "#1b7837"),
    "exited": ("s", "#762a83"), "unregistered": ("o", "#999999"),
    "restart_scheduled": ("^", "#fc8d59"), "notify_dropped": ("x", "#d73027"),
    "reached_main": ("*", "#1b7837"), "early_crash": ("X", "#d73027"),
    "worker_error": ("X", "#fc8d59"),
}


def plot_timeline(events, ax=None, slots=None, *, max_handles: int = 4, annotate: bool = False):
    """Per-worker timelines: three lanes (registrant, postmaster, worker) per handle.

    ``slots``: None (the first ``max_handles`` handles in the events), slot numbers,
    ``(slot, generation)`` pairs or ``(cluster, slot, generation)`` triples (the
    ``cluster`` column of the results; events carry it in ``detail["cluster"]``).
    Times are ms since each handle's registration, so handles from different trials
    line up.  The worker's lifetime (fork -> exit) is a grey bar; a legend names the event
    kinds, verdicts are labelled, and ``annotate=True`` writes every kind by its marker.
    """
    if ax is None:
        fig, (ax,) = _new_figure(1, figsize=(9, 1.2 + 1.1 * max_handles))
    else:
        fig = ax.figure
    handles = _by_handle(events)
    keys = sorted(handles, key=lambda k: handles[k][0].t_ns)
    if slots is not None:
        want = list(slots)
        keys = [k for k in keys if k[1] in want or (k[1], k[2]) in want or k in want]
    keys = [k for k in keys if any(e.kind == "registered" for e in handles[k])][:max_handles]
    yticks, ylabels = [], []
    seen_kinds: dict = {}
    for i, k in enumerate(keys):
        evs = handles[k]
        t0 = next(e.t_ns for e in evs if e.kind == "registered")
        base = (len(keys) - 1 - i) * 4
        forked = next((e for e in evs if e.kind == "forked"), None)
        exited = next((e for e in evs if e.kind == "exited"), None)
        if forked is not None:
            end = exited.t_ns if exited is not None else max(e.t_ns for e in evs)
            ax.plot([(forked.t_ns - t0) / 1e6, (end - t0) / 1e6], [base] * 2,
                    color="#bbbbbb", linewidth=6, solid_capstyle="butt", zorder=1, gid="worker-alive")
        for e in evs:
            lane = _SOURCE_LANE.get(e.source, 1)
            x, y = (e.t_ns - t0) / 1e6, base + 2 - lane
            marker, color = _KIND_STYLE.get(e.kind, (".", "#666666"))
            seen_kinds.setdefault(e.kind, (marker, color))
            ax.plot([x], [y], marker=marker, color=color, markersize=7, linestyle="none", zorder=3,
                    gid=f"ev-{e.kind}")
            if e.kind == "verdict":
                ax.annotate(f"{e.detail.get('strategy', '')}: {e.detail.get('verdict', '')}", (x, y),
                            xytext=(4, 4), textcoords="offset points", fontsize=7)
            elif annotate:
                ax.annotate(e.kind.replace("_", " "), (x, y), xytext=(2, 5), textcoords="offset points",
                            fontsize=6.5, rotation=30, color=color)
        reg = next(e for e in evs if e.kind == "registered")
        title = f"{reg.detail.get('name', '')} (slot {k[1]}, gen {k[2]})"
        for lane, name in enumerate(_LANES):
            yticks.append(base + 2 - lane)
            ylabels.append(f"{title}\n{name}" if lane == 0 else name)
        ax.axhline(base - 0.7, color="#eeeeee", linewidth=0.8)
    if seen_kinds:
        from matplotlib.lines import Line2D

        proxies = [Line2D([], [], marker=m, color=c, linestyle="none", label=kind.replace("_", " "))
                   for kind, (m, c) in seen_kinds.items()]
        ax.legend(handles=proxies, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  frameon=False, title="event", title_fontsize=8)
    ax.set_yticks(yticks)
    ax.set_yticklabels(ylabels, fontsize=7)
    ax.set_xlabel("ms since registration")
    ax.set_title("Per-worker timelines (registrant / postmaster / worker)", fontsize=10)
    _style(ax)
    return fig


# -- decomposition ------------------------------------------------------------------------------------------
DECOMPOSITION_STAGES = (
    ("request seen", "registered", "request_seen"),
    ("until fork", "request_seen", "fork_attempted"),
    ("fork()", "fork_attempted", "forked"),
    ("notify", "forked", "notified"),
    ("wake", "notified", "woke"),
)


def _stage_times(events) -> dict:
    """{stage: array of ms} over handles that have every stage's events."""
    out = {name: [] for name, _a, _b in DECOMPOSITION_STAGES}
    for evs in _by_handle(events).values():
        first = {}
        for e in evs:
            if e.kind == "notified" and e.detail.get("reason") not in (None, "forked"):
                continue
            if e.kind == "woke" and (e.detail.get("wait") != "startup" or e.detail.get("status") != "started"):
                continue
            first.setdefault(e.kind, e.t_ns)
        if all(a in first and b in first for _n, a, b in DECOMPOSITION_STAGES):
            for name, a, b in DECOMPOSITION_STAGES:
                out[name].append((first[b] - first[a]) / 1e6)
    return {k: np.array(v) for k, v in out.items()}


def decomposition_table(events):
    """The numbers behind ``plot_decomposition``: median ms of each stage, one row per group
    (``events`` as there: a list, or ``{label: events}``), and ``n`` (handles counted)."""
    import pandas as pd

    groups = events if isinstance(events, dict) else {"all": events}
    rows = {}
    for label, evs in groups.items():
        st = _stage_times(evs)
        row = {name: (float(np.median(v)) if len(v) else math.nan) for name, v in st.items()}
        row["n"] = len(next(iter(st.values()))) if st else 0
        rows[label] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def plot_decomposition(events, ax=None):
    """Where notification latency goes: stacked median of each stage, per group.

    ``events``: a list of Events, or ``{label: events}`` (e.g. ``split_events_by_load``).
    A handle counts if the log has every stage: registered -> request_seen (the
    registrant's signal wakes the postmaster) -> fork_attempted -> forked (fork()) ->
    notified (SIGUSR1 sent) -> woke (``wait_for_startup`` returned STARTED).
    """
    groups = events if isinstance(events, dict) else {"all": events}
    if ax is None:
        fig, (ax,) = _new_figure(1, figsize=(8, 1.6 + 0.7 * len(groups)))
    else:
        fig = ax.figure
    colors = ["#4575b4", "#91bfdb", "#fdae61", "#1b7837", "#d73027"]
    labels = list(groups)
    for gi, label in enumerate(labels):
        st = _stage_times(groups[label])
        y = len(labels) - 1 - gi
        left = 0.0
        n = len(next(iter(st.values()))) if st else 0
        for si, (name, _a, _b) in enumerate(DECOMPOSITION_STAGES):
            v = st[name]
            m = float(np.median(v)) if len(v) else 0.0
            ax.barh([y], [m], left=left, color=colors[si], edgecolor="white",
                    label=name if gi == 0 else None, gid=f"stage-{label}-{name}")
            left += m
        ax.annotate(f"{_fmt_ms(left)} (n={n})", (left, y), xytext=(4, 0), textcoords="offset points",
                    va="center", fontsize=8)
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(list(reversed(labels)))
    ax.set_xlabel("ms (median of each stage, stacked)")
    ax.set_title("Notification latency, stage by stage: registrant asks → registrant knows STARTED",
                 fontsize=10)
    _style(ax)
    _legend(ax, fontsize=8, ncols=5, loc="upper center", bbox_to_anchor=(0.5, -0.35), frameon=False)
    return fig


# -- death detection ------------------------------------------------------------------------------------------
def plot_death_detection(df, ax=None):
    """Learning that a worker exited: latency (ms) per method (and load), strip + median."""
    rows = [m for m in ("sigusr1", "pidfd", "poll") if m in set(df.method)] + \
        sorted(set(df.method) - {"sigusr1", "pidfd", "poll"})
    loads = list(dict.fromkeys(df["load"])) if "load" in df.columns else [None]
    cats = [(m, ld) for m in rows for ld in loads]
    if ax is None:
        fig, (ax,) = _new_figure(1, figsize=(6.8, 1.4 + 0.55 * len(cats)))
    else:
        fig = ax.figure
    rng = np.random.default_rng(0)
    for i, (m, ld) in enumerate(cats):
        sel = df[(df.method == m) & ((df["load"] == ld) if ld is not None else True)]
        v = sel.latency_ms.dropna().to_numpy()
        if not len(v):
            continue
        gid = f"death-{m}" if ld is None or len(loads) == 1 else f"death-{m}-{ld}"
        ax.plot(v, i + rng.uniform(-0.15, 0.15, len(v)), "o", color=_color(m, i), alpha=0.5,
                markersize=4, linestyle="none", gid=gid)
        med = float(np.median(v))
        ax.plot([med, med], [i - 0.3, i + 0.3], color="black", linewidth=2)
        ax.annotate(f"median {_fmt_ms(med)}", (med, i + 0.32), fontsize=8, ha="center")
    ax.set_yticks(range(len(cats)))
    ax.set_yticklabels([m if ld is None or len(loads) == 1 else f"{m}, {ld}" for m, ld in cats])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("worker exits → registrant knows (ms)")
    ax.set_title("Death detection: postmaster's SIGUSR1 vs pidfd vs polling", fontsize=10)
    _style(ax)
    return fig


# -- verdict matrix --------------------------------------------------------------------------------------------
def plot_verdict_matrix(df, ax=None):
    """Scenario x strategy: % of verdicts that match the truth, and median time to verdict
    with its 95 % interval (``median_interval``).

    Read the times with the intervals: a cell's median comes from its own trials, whose
    start latencies differ (on a busy machine by tens of ms), so two medians whose
    intervals overlap are not a difference.  And a timeout's median counts its wrong
    verdicts too: at a short T, the quick "timed_out"s pull it down.
    """
    if ax is None:
        fig, (ax,) = _new_figure(1, figsize=(1.6 + 1.35 * df.label.nunique(), 1.3 + 0.75 * df.scenario.nunique()))
    else:
        fig = ax.figure
    scenarios = list(dict.fromkeys(df.scenario))
    order = {"notify": 0, "poll_pid": 1, "timeout": 2}
    labels = sorted(dict.fromkeys(df.label), key=lambda lb: (
        order.get(df[df.label == lb].strategy.iloc[0], 3), df[df.label == lb].timeout_s.fillna(0).iloc[0]))
    acc = np.full((len(scenarios), len(labels)), np.nan)
    for i, sc in enumerate(scenarios):
        for j, lb in enumerate(labels):
            g = df[(df.scenario == sc) & (df.label == lb)]
            if len(g):
                acc[i, j] = 100 * float(_bool(g.correct).mean())
                t = g.time_to_verdict_ms.dropna()
                lo, hi = median_interval(t)
                text = f"{acc[i, j]:.0f}%\n{_fmt_ms(float(t.median()))}" if len(t) else f"{acc[i, j]:.0f}%"
                if len(t) > 1:
                    text += f"\n[{_fmt_ms(lo)}–{_fmt_ms(hi)}]"
                ax.text(j, i, text, ha="center", va="center", fontsize=6.5, gid=f"cell-{sc}-{lb}")
    if acc.size:
        ax.imshow(acc, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto", gid="verdict-matrix")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(scenarios)))
    ax.set_yticklabels(scenarios, fontsize=8)
    n = int(df.groupby(["scenario", "label"]).size().median()) if len(df) else 0
    ax.set_title("Verdicts that match the truth (%), median time to verdict [95% interval of the median]\n"
                 f"(about {n} trials per cell: overlapping intervals are noise, not a difference)",
                 fontsize=9)
    return fig


# -- export -----------------------------------------------------------------------------------------------
def save_figure(fig, path_without_suffix, *, dpi: int = 120) -> tuple[Path, Path]:
    """Write ``PATH.png`` and ``PATH.svg`` with fixed metadata (same figure -> same bytes)."""
    import matplotlib

    base = Path(path_without_suffix)
    base.parent.mkdir(parents=True, exist_ok=True)
    png, svg = base.with_name(base.name + ".png"), base.with_name(base.name + ".svg")
    with matplotlib.rc_context({"svg.hashsalt": "bgwlab", "svg.fonttype": "path"}):
        fig.savefig(png, dpi=dpi, metadata={"Software": None})
        fig.savefig(svg, metadata={"Date": None, "Creator": None})
    return png, svg
