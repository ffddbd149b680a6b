"""``bgwlab compare-postgres``: the seed's scenarios on bgwlab and on a real PostgreSQL server.

:func:`run_compare` runs every scenario x strategy on both systems, interleaved (PostgreSQL
then bgwlab for each cell, so that drift of a shared machine hits both), and writes to `out`:

``compare.csv``            one row per trial (:data:`bgwlab.pg.scenarios.ROW_KEYS`)
``compare.metadata.json``  both versions, the machine, its load, the commit, the settings
``crash.json``             a worker SIGKILLed under a waiting registrant, on both systems
``headline.png``           the headline figure, both systems side by side
``lost_wakeup.png``        back-to-back fork failures: PostgreSQL 15's lost wakeup vs bgwlab
``timeline.png``           one PostgreSQL trial on registrant / postmaster / worker lanes

Fork failures are genuine on both systems (the postmaster in a pids cgroup at its limit);
without a writable pids cgroup (not root) those scenarios are left out and the metadata
says why.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import time
from pathlib import Path

from .cgroup import cgroup_available
from .scenarios import LOST_WAKEUP, ROW_KEYS, BgwlabSide, PgSide, bgwlab_worker_crash, pg_worker_crash
from .server import PgUnavailable, find_bindir

__all__ = ["run_compare", "plot_headline", "plot_lost_wakeup", "plot_timeline", "read_rows",
           "summarize", "DEFAULT_TIMEOUTS"]

DEFAULT_TIMEOUTS = (0.005, 0.05, 0.5)
HEADLINE_SCENARIOS = ("ok", "fork_failure", "early_crash", "busy")
SYSTEMS = ("bgwlab", "postgresql")
COLORS = {"bgwlab": "tab:blue", "postgresql": "tab:orange"}


def _metadata(pg: PgSide, bg: BgwlabSide, **settings) -> dict:
    """The experiments' run metadata (machine, CPUs, Python, commit, date, load) plus the server's."""
    from ..lab.experiments.results import run_metadata  # here, not at import: `bgwlab --help`
    #                                                      must not need psutil or pandas
    return {"postgresql_version": pg.version, "postgresql_bindir": str(pg.server.bindir),
            **run_metadata(), **settings}


def _cells(timeouts, fork_ok: bool):
    strategies = [("notify", None), ("poll_pid", None)] + [("timeout", t) for t in timeouts]
    for scenario in HEADLINE_SCENARIOS:
        if scenario == "fork_failure" and not fork_ok:
            continue
        for strategy, t in strategies:
            yield scenario, strategy, t


def run_compare(out, *, trials: int = 20, quick: bool = False, timeouts=None,
                cap_s: float | None = None, progress=None) -> dict:
    """Run the comparison and write its files to `out`; returns their paths.

    `quick`: 4 trials per cell, T in (0.005, 0.05), a 1 s cap -- well under a minute.
    `cap_s`: after this long the probe re-signals PostgreSQL's postmaster (its lost wakeup
    would otherwise cost up to 60 s); such rows have ``kicked`` = True.
    """
    find_bindir()  # PgUnavailable, with how to install, before anything starts
    from .probe import pgxs_available

    ok, why = pgxs_available(find_bindir())
    if not ok:
        raise PgUnavailable(why)
    say = progress or (lambda msg: None)
    if quick:
        trials, timeouts = min(trials, 4), tuple(timeouts or (0.005, 0.05))
        cap_s = cap_s or 1.0
    timeouts = tuple(timeouts or DEFAULT_TIMEOUTS)
    cap_s = cap_s or 5.0
    fork_ok, fork_why = cgroup_available()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    t_start = time.monotonic()
    with PgSide() as pg, BgwlabSide() as bg:
        meta = _metadata(pg, bg, trials=trials, quick=quick, timeouts_s=list(timeouts),
                         cap_s=cap_s, poll_s=0.01, run_ms=10,
                         fork_failure="genuine (pids cgroup at its limit)" if fork_ok
                         else f"left out: {fork_why}",
                         loads={"idle": "nothing else running", "busy": "2 CPU hogs per core + "
                                "the postmaster frozen (SIGSTOP) 60 ms of every 200 ms"},
                         postgresql_settings="autovacuum=off fsync=off max_worker_processes=8 "
                                             "(throwaway cluster, Unix socket only)")
        cells = list(_cells(timeouts, fork_ok))
        for i, (scenario, strategy, t) in enumerate(cells):
            say(f"[{i + 1}/{len(cells)}] {scenario} {strategy}{'' if t is None else f'({t:g}s)'}")
            for side in (pg, bg):
                rows += side.trials(scenario, strategy, trials, timeout_s=t, cap_s=cap_s,
                                    seed=i)
        if fork_ok:
            say("fork failures back to back (PostgreSQL 15's lost wakeup)")
            n = max(trials, 12)
            for side in (pg, bg):
                rows += side.trials("fork_failure_back_to_back", "notify", n, cap_s=cap_s)
        say("a worker crash under a waiting registrant")
        crash = {"postgresql": pg_worker_crash(pg), "bgwlab": bgwlab_worker_crash(bg)}
        say("one PostgreSQL trial for the timeline")
        timeline = _timeline_trial(pg)
    meta["loadavg_end"] = list(os.getloadavg())
    meta["wall_s"] = round(time.monotonic() - t_start, 1)
    meta["columns"] = list(ROW_KEYS)
    meta["lost_wakeup_source"] = LOST_WAKEUP
    paths = {"csv": out / "compare.csv", "metadata": out / "compare.metadata.json",
             "crash": out / "crash.json", "timeline_data": out / "timeline.json"}
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=ROW_KEYS)
        w.writeheader()
        w.writerows(rows)
    meta["summary"] = summarize(rows)
    paths["metadata"].write_text(json.dumps(meta, indent=2, default=str) + "\n")
    paths["crash"].write_text(json.dumps(crash, indent=2, default=str) + "\n")
    paths["timeline_data"].write_text(json.dumps(timeline, indent=2) + "\n")
    paths.update(draw_figures(rows, out, timeline=timeline, cap_s=cap_s))
    return paths


def _log_epoch_ns(line: str) -> int | None:
    """'2026-12-02 01:24:22.408 UTC [pid] ...' -> ns since the epoch (UTC), or None."""
    import datetime

    try:
        stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f")
    except ValueError:
        return None
    return int(stamp.replace(tzinfo=datetime.timezone.utc).timestamp() * 1e9)


def _timeline_trial(pg: PgSide) -> dict:
    """One PostgreSQL notify trial with the postmaster's DEBUG1 lines ("registering",
    "starting background worker process") placed on the probe's clock.

    The log's stamps are wall-clock milliseconds (%m, PostgreSQL's finest), mapped onto
    CLOCK_MONOTONIC through one (realtime, monotonic) pair read here: the postmaster lane
    is good to about a millisecond, the probe's stamps to a microsecond.
    """
    from .probe import run_trials

    conn = pg.conn
    server = pg.server

    def reload_and_wait():
        pos = server.log_size()
        conn.query("select pg_reload_conf()")
        deadline = time.monotonic() + 10  # the postmaster logs the SIGHUP, then applies it
        while "reloading configuration files" not in server.log_text(pos):
            if time.monotonic() > deadline:
                raise RuntimeError("the postmaster did not reload its configuration")
            time.sleep(0.005)

    conn.query("alter system set log_min_messages = debug1")
    reload_and_wait()
    pos = server.log_size()
    offset = time.time_ns() - time.monotonic_ns()
    r = run_trials(conn, "notify", 1, run_ms=10)[0]
    log = server.log_text(pos).splitlines()
    conn.query("alter system reset log_min_messages")
    reload_and_wait()
    t0 = r["t_register_ns"]
    events = []
    for line in log:
        ns = _log_epoch_ns(line)
        if ns is None or ("postmaster:" not in line and "bgwlab probe" not in line):
            continue
        lane = "postmaster" if "postmaster:" in line else "worker"
        events.append({"lane": lane, "ms": round((ns - offset - t0) / 1e6, 3),
                       "text": line.split(":  ", 1)[-1][:90]})
    return {"trial": r, "log": log, "events": events,
            "note": "postmaster lines: wall-clock ms (%m) mapped onto CLOCK_MONOTONIC, +-1 ms; "
                    "probe stamps: CLOCK_MONOTONIC inside the backend"}


# -- reading and summarising ----------------------------------------------------------------------
def read_rows(path) -> list[dict]:
    """compare.csv -> rows with typed values."""
    out = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            r["trial"] = int(r["trial"])
            r["time_to_verdict_ms"] = float(r["time_to_verdict_ms"])
            r["timeout_s"] = float(r["timeout_s"]) if r["timeout_s"] not in ("", "None") else None
            r["kicked"] = r["kicked"] == "True"
            out.append(r)
    return out


def _key(r) -> tuple:
    return (r["system"], r["scenario"], r["strategy"], r["timeout_s"])


def summarize(rows) -> list[dict]:
    """Per system x scenario x strategy x T: n, median / p90 time to verdict, wrong verdicts,
    spurious timeouts (timed_out although the worker ran) and lost wakeups (kicked)."""
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault(_key(r), []).append(r)
    out = []
    for (system, scenario, strategy, t), rs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        ms = sorted(r["time_to_verdict_ms"] for r in rs)
        wrong = sum(1 for r in rs if r["verdict"] != r["truth"])
        spurious = sum(1 for r in rs if r["verdict"] == "timed_out" and r["truth"] == "started")
        out.append({"system": system, "scenario": scenario, "strategy": strategy,
                    "timeout_s": t, "n": len(rs), "median_ms": round(statistics.median(ms), 3),
                    "p90_ms": round(ms[min(len(ms) - 1, int(0.9 * len(ms)))], 3),
                    "max_ms": round(ms[-1], 3), "wrong": wrong, "spurious_timeouts": spurious,
                    "kicked": sum(1 for r in rs if r.get("kicked"))})
    return out


# -- figures ---------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    if not os.environ.get("DISPLAY") and "inline" not in matplotlib.get_backend():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_headline(rows, axes=None):
    """2 x 2: columns bgwlab | PostgreSQL; top: time to report a failed start (fork failure,
    early crash) against T, notify and poll_pid as references; bottom: share of healthy
    workers given up on (spurious timeouts) under the busy load, against T."""
    plt = _plt()
    if axes is None:
        fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True, sharey="row")
    else:
        fig = axes[0][0].figure
    summ = summarize(rows)
    ts = sorted({s["timeout_s"] for s in summ if s["strategy"] == "timeout"})
    for col, system in enumerate(SYSTEMS):
        top, bottom = axes[0][col], axes[1][col]
        for scenario, marker in (("fork_failure", "o"), ("early_crash", "s")):
            pts = [(s["timeout_s"], s["median_ms"]) for s in summ if s["system"] == system
                   and s["scenario"] == scenario and s["strategy"] == "timeout"]
            if pts:
                pts.sort()
                top.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color="tab:red",
                         label=f"timeout(T): {scenario}")
            for strategy, ls in (("notify", "-"), ("poll_pid", ":")):
                ref = [s["median_ms"] for s in summ if s["system"] == system and
                       s["scenario"] == scenario and s["strategy"] == strategy]
                if ref:
                    top.axhline(ref[0], ls=ls, color="tab:green" if strategy == "notify" else "gray",
                                marker=None, lw=1.5 if marker == "o" else 0.8,
                                label=f"{strategy}: {scenario} ({ref[0]:.2f} ms)")
        if ts:
            top.plot(ts, [t * 1000 for t in ts], color="black", lw=0.5, ls="--", label="T")
        top.set_xscale("log")
        top.set_yscale("log")
        top.set_title({"bgwlab": "bgwlab", "postgresql": "PostgreSQL"}[system]
                      + ": time to report a failed start")
        top.set_ylabel("median time to verdict (ms)")
        top.legend(fontsize=7)
        busy = [s for s in summ if s["system"] == system and s["scenario"] == "busy"]
        pts = sorted((s["timeout_s"], 100 * s["spurious_timeouts"] / s["n"]) for s in busy
                     if s["strategy"] == "timeout")
        if pts:
            bottom.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color="tab:red",
                        label="timeout(T)")
        for strategy, color in (("notify", "tab:green"), ("poll_pid", "gray")):
            ref = [100 * s["wrong"] / s["n"] for s in busy if s["strategy"] == strategy]
            if ref:
                bottom.axhline(ref[0], color=color, label=f"{strategy} wrong: {ref[0]:.0f} %")
        bottom.set_xscale("log")
        bottom.set_ylim(-5, 105)
        bottom.set_xlabel("T (s)")
        bottom.set_ylabel("healthy workers given up on (%)")
        bottom.set_title("busy system: spurious timeouts")
        bottom.legend(fontsize=7)
    fig.suptitle("The seed's scenarios on bgwlab and on a real PostgreSQL server "
                 "(genuine fork failures: pids cgroup)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_lost_wakeup(rows, ax=None, cap_s: float | None = None):
    """Back-to-back genuine fork failures, notify: every trial's time to STOPPED, per system."""
    plt = _plt()
    fig, ax = (plt.subplots(figsize=(7, 4)) if ax is None else (ax.figure, ax))
    for i, system in enumerate(SYSTEMS):
        rs = [r for r in rows if r["system"] == system and r["scenario"] == "fork_failure_back_to_back"]
        if not rs:
            continue
        xs = [i + 0.3 * ((k % 7) / 7 - 0.5) for k in range(len(rs))]
        ys = [r["time_to_verdict_ms"] for r in rs]
        kept = [(x, y) for x, y, r in zip(xs, ys, rs) if not r["kicked"]]
        lost = [(x, y) for x, y, r in zip(xs, ys, rs) if r["kicked"]]
        ax.scatter([p[0] for p in kept], [p[1] for p in kept], color=COLORS[system], s=18,
                   label=f"{system}: {len(lost)} of {len(rs)} wakeups lost")
        if lost:  # these would have waited for the 60 s select() timeout: arrows up
            ax.scatter([p[0] for p in lost], [p[1] for p in lost], color="tab:red", marker="^",
                       s=40, zorder=3, label=f"{system}: lost (>= cap, else up to 60 s)")
    if cap_s:
        ax.axhline(cap_s * 1000, color="tab:red", ls=":", lw=0.8,
                   label=f"cap {cap_s:g} s: the probe re-signals the postmaster (else up to 60 s)")
    ax.set_xticks([0, 1], ["bgwlab", "PostgreSQL"])
    ax.set_yscale("log")
    ax.set_ylabel("register -> STOPPED known (ms)")
    ax.set_title("Fork failures back to back: a lost wakeup in PostgreSQL 15's ServerLoop")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_timeline(timeline: dict, ax=None):
    """One PostgreSQL trial on bgwlab's lanes (registrant / postmaster / worker): the probe's
    stamps (CLOCK_MONOTONIC in the backend, microseconds) and the postmaster's DEBUG1 log
    lines about the worker (wall-clock milliseconds, so +-1 ms), numbered and listed below."""
    plt = _plt()
    fig, ax = (plt.subplots(figsize=(9, 4)) if ax is None else (ax.figure, ax))
    r = timeline["trial"]
    lanes = {"registrant": 2, "postmaster": 1, "worker": 0}
    marks = [("registrant", 0.0, "RegisterDynamicBackgroundWorker()", "black")]
    if r.get("signin_ms") is not None:
        marks.append(("worker", r["signin_ms"], "the worker reaches user code (sign-in)", "tab:green"))
    marks.append(("registrant", r["time_to_verdict_ms"], f"verdict: {r['verdict']}", "tab:blue"))
    for e in timeline.get("events", []):
        if "bgwlab probe" in e["text"]:
            marks.append((e["lane"], e["ms"], e["text"], "tab:orange"))
    end = max(m[1] for m in marks)
    ax.hlines(list(lanes.values()), min(0.0, min(m[1] for m in marks)) - 0.5, end + 0.5,
              color="lightgray", zorder=0)
    lines = []
    for k, (lane, ms, text, color) in enumerate(marks, 1):
        ax.plot([ms], [lanes[lane]], "o" if color != "tab:orange" else "|", color=color, ms=9)
        ax.annotate(str(k), (ms, lanes[lane]), (ms, lanes[lane] + 0.18), fontsize=8, ha="center")
        lines.append(f"{k}. {ms:7.2f} ms  {lane:10s} {text}")
    ax.set_yticks(list(lanes.values()), list(lanes))
    ax.set_ylim(-0.5, 2.6)
    ax.set_xlabel("ms since registration (probe: CLOCK_MONOTONIC inside the backend; "
                  "log lines: %m wall clock, +-1 ms)", fontsize=8)
    ax.set_title("One PostgreSQL trial (notify) on bgwlab's lanes", fontsize=10)
    fig.text(0.01, 0.01, "\n".join(lines), fontsize=7, family="monospace", va="bottom")
    fig.subplots_adjust(bottom=0.18 + 0.045 * len(lines), left=0.12, right=0.98, top=0.9)
    return fig


def draw_figures(rows, out, *, timeline=None, cap_s=None) -> dict:
    out = Path(out)
    plt = _plt()
    paths = {}
    for name, fig in (("headline", plot_headline(rows)), ("lost_wakeup",
                      plot_lost_wakeup(rows, cap_s=cap_s))):
        paths[name] = out / f"{name}.png"
        fig.savefig(paths[name], dpi=110)
        plt.close(fig)
    if timeline:
        fig = plot_timeline(timeline)
        paths["timeline"] = out / "timeline.png"
        fig.savefig(paths["timeline"], dpi=110)
        plt.close(fig)
    return paths


# -- the command line: `bgwlab compare-postgres` ---------------------------------------------------
COMMAND_HELP = ("the seed's scenarios on bgwlab and on a real PostgreSQL server, side by side "
                "(CSV, metadata, figures)")


def add_parser(sub):
    """Add ``compare-postgres`` to an argparse subparsers object (bgwlab.lab.cli)."""
    p = sub.add_parser(
        "compare-postgres", help=COMMAND_HELP,
        description="Run ok, fork failure (genuine: the postmaster in a pids cgroup at its "
                    "limit; root), early crash and busy system on bgwlab and on a throwaway "
                    "PostgreSQL server (15+, Unix socket only, removed afterwards) with the "
                    "same waiting strategies, plus fork failures back to back and a worker "
                    "crash. PostgreSQL's side is timed inside the backend by a small C "
                    "extension built with PGXS. Writes compare.csv, compare.metadata.json, "
                    "crash.json and headline.png, lost_wakeup.png, timeline.png.")
    p.add_argument("--out", required=True, help="directory for the results")
    p.add_argument("--trials", type=int, default=20, help="trials per cell (default 20)")
    p.add_argument("--quick", action="store_true",
                   help="4 trials per cell, T in 0.005,0.05: well under a minute")
    p.add_argument("--timeouts", default=None,
                   help="T values in seconds for timeout(T), comma-separated "
                        f"(default {','.join(map(str, DEFAULT_TIMEOUTS))})")
    p.add_argument("--cap", type=float, default=None,
                   help="seconds after which the probe re-signals PostgreSQL's postmaster when "
                        "its wakeup was lost (default 5, quick 1)")
    p.set_defaults(func=cmd_compare_postgres)
    return p


def cmd_compare_postgres(args) -> int:
    import sys

    timeouts = None
    if args.timeouts:
        timeouts = [float(x) for x in args.timeouts.split(",") if x.strip()]
    if args.trials < 1:
        print("compare-postgres: --trials must be >= 1", file=sys.stderr)
        return 2
    try:
        paths = run_compare(args.out, trials=args.trials, quick=args.quick, timeouts=timeouts,
                            cap_s=args.cap, progress=lambda m: print(m, flush=True))
    except PgUnavailable as e:
        print(f"compare-postgres: {e}", file=sys.stderr)
        return 3
    rows = read_rows(paths["csv"])
    print(f"\n{len(rows)} trials; written to {args.out}:")
    for name, path in paths.items():
        print(f"  {name:14s} {path}")
    print("\nmedian time to verdict (ms), notify:")
    for s in summarize(rows):
        if s["strategy"] == "notify":
            print(f"  {s['system']:10s} {s['scenario']:26s} {s['median_ms']:9.2f}  "
                  f"(n={s['n']}, wrong={s['wrong']}, lost wakeups={s['kicked']})")
    return 0


def main(argv=None) -> int:
    """``python -m bgwlab.pg.compare --out DIR [--trials N] [--quick]`` (same as the CLI)."""
    import argparse

    parser = argparse.ArgumentParser(prog="bgwlab")
    sub = parser.add_subparsers()
    add_parser(sub)
    args = parser.parse_args(["compare-postgres", *(argv if argv is not None else __import__("sys").argv[1:])])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
