"""The ``bgwlab`` command: run the experiments and draw their figures from a shell.

    bgwlab demo --out DIR                  the headline experiment, about 30 s
    bgwlab experiment NAME [options]       a named experiment or one scenario as a grid
    bgwlab plot RESULTS.csv --out DIR      redraw figures from saved results
    bgwlab list                            scenarios, loads, strategies, experiments
    bgwlab compare-postgres --out DIR      the same scenarios on a real PostgreSQL server (bgwlab.pg)

It calls the same Python API as the notebooks (``bgwlab.lab.experiments``, ``bgwlab.lab.plots``).
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
import time
from pathlib import Path

DESCRIPTION = """\
bgwlab measures one question from PostgreSQL's history: a process asks a supervisor
(the postmaster) to start a worker -- how does it learn, quickly and reliably, whether
the worker started or failed?

Three waiting strategies are compared on a real forking postmaster:

  notify       the handle + the postmaster's SIGUSR1 + a latch; no timer.  Never wrong.
  timeout(T)   the worker signs in when it reaches user code; the registrant polls for
               the sign-in and gives up after T seconds ("wait 5 s and give up").
  poll_pid     the handle without notification, polled every 10 ms.

The trade-off the headline figure shows: with a timeout, a failed start is reported only
after T -- so you want T small -- but on a busy machine a healthy worker may need longer
than T, and it is then reported as failed although it runs: a spurious timeout -- so you
want T large.  Notification needs no T: it reports a failure as soon as the postmaster
knows, and never gives up on a worker that is merely slow.

Ground truth comes from the cluster's event log (did the worker record reached_main?),
never from the strategy under test."""

EPILOG = """\
examples:
  bgwlab demo --out results/          # headline experiment + figures (under a minute)
  bgwlab demo --quick --out /tmp/x    # a few seconds (also: BGWLAB_QUICK=1)
  bgwlab experiment headline --trials 40 --out data/reference
  bgwlab experiment busy --timeouts 0.01,0.05,0.2 --trials 20
  bgwlab experiment fork_failure --strategies notify,timeout --timeouts 0.1,1
  bgwlab experiment death --trials 30  # SIGUSR1 vs pidfd vs polling
  bgwlab plot results/headline.csv --out figures/
  bgwlab list
  bgwlab compare-postgres --out results/pg --quick   # bgwlab vs a real PostgreSQL (15+)"""


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated seconds, e.g. 0.01,0.05,0.2; got {text!r}")


def _names(text: str) -> list[str]:
    return [x for x in text.replace(" ", "").split(",") if x]


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=None,
                   help="directory for NAME.csv, NAME.metadata.json, NAME.events.jsonl and the "
                        "figures (PNG + SVG)")
    p.add_argument("--quick", action="store_true",
                   help="tiny grid that runs in a few seconds (same as BGWLAB_QUICK=1)")
    p.add_argument("--trials", type=int, default=None, metavar="N", help="trials per cell of the grid")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffled trial order (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bgwlab", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"bgwlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo", help="run the headline experiment and draw its figures (under a minute)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Run the headline experiment with its defaults and write results + figures.

            Failed starts (fork() fails; the worker crashes before user code) on an idle
            machine, and good starts on an idle and on a busy machine (2 CPU hogs per usable CPU,
            postmaster frozen 60 ms of every 200 ms), each waited for by notify, poll_pid
            and timeout(T) for T from 5 ms to 500 ms.  Writes headline.csv,
            headline.metadata.json, headline.events.jsonl and the figures headline,
            latency_cdf, timeline and decomposition (PNG + SVG)."""))
    _add_run_options(demo)

    exp = sub.add_parser(
        "experiment", help="run a named experiment, or one scenario as a grid",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Run NAME, one of:
              headline   failed-start report time and spurious timeouts vs T
              matrix     every scenario x every strategy (is any strategy ever wrong?)
              death      how fast a registrant learns a running worker exited:
                         SIGUSR1 (wait_for_shutdown) vs pidfd vs polling
              parallel   a toy Gather (issue 13): time to the first message, the
                         result or the error vs nworkers, idle and busy
            or a scenario (see `bgwlab list`): ok, fork_failure, early_crash, slow_start,
            busy, slot_exhaustion, postmaster_death -- run against --strategies x
            --timeouts x --load for --trials each, in a shuffled (seeded) order."""),
        epilog="example: bgwlab experiment slow_start --timeouts 0.05,0.1,0.2,0.4 --trials 10")
    exp.add_argument("name", metavar="NAME", help="headline | matrix | death | parallel | a scenario name")
    exp.add_argument("--timeouts", type=_floats, default=None, metavar="T1,T2,...",
                     help="timeouts T in seconds for the timeout strategy (default 0.005 ... 0.5)")
    exp.add_argument("--load", type=_names, default=None, metavar="L1,L2",
                     help="loads: idle, hogs, stalls, busy (default idle; the busy scenario "
                          "always runs busy)")
    exp.add_argument("--strategies", type=_names, default=None, metavar="S1,S2",
                     help="notify, poll_pid, timeout (default: all three)")
    _add_run_options(exp)

    plot = sub.add_parser(
        "plot", help="redraw the figures from a saved results CSV",
        description="Redraw figures from NAME.csv (and NAME.events.jsonl next to it, if any).")
    plot.add_argument("csv", type=Path, metavar="RESULTS.csv")
    plot.add_argument("--out", type=Path, default=None, help="where to write figures (default: next to the CSV)")

    sub.add_parser("list", help="list scenarios, loads, strategies and experiments")

    from ..pg.compare import add_parser as add_compare_postgres

    add_compare_postgres(sub)  # `bgwlab compare-postgres`: bgwlab.pg.compare
    return parser


# -- commands ------------------------------------------------------------------------------------------
def _say(*args) -> None:
    print(*args, flush=True)


def draw_figures(df, out: Path, name: str, events=None) -> list[Path]:
    """The figures that suit a results DataFrame; returns the paths written."""
    from . import plots

    written = []

    def save(fig, stem):
        written.extend(plots.save_figure(fig, out / stem))

    if "method" in df.columns:  # death detection
        save(plots.plot_death_detection(df), "death_detection" if name == "death" else f"{name}_death_detection")
        return written
    if (df.strategy == "timeout").any() and df.timeout_s.nunique() > 1:
        save(plots.plot_headline(df), f"{name}_headline" if name != "headline" else "headline")
    if (df.truth == "started").any():
        save(plots.plot_latency_cdf(df), f"{name}_latency_cdf" if name != "headline" else "latency_cdf")
    if df.scenario.nunique() > 1 or name == "matrix":
        save(plots.plot_verdict_matrix(df), f"{name}_verdicts")
    if events:
        picks = _representative_handles(df)
        save(plots.plot_timeline(events, slots=picks, max_handles=len(picks) or 4),
             f"{name}_timeline" if name != "headline" else "timeline")
        groups = plots.split_events_by_load(events, df)
        save(plots.plot_decomposition(groups or events),
             f"{name}_decomposition" if name != "headline" else "decomposition")
    return written


def _representative_handles(df) -> list[tuple[int, int, int]]:
    """One notify trial per scenario, plus one spurious timeout if there is one."""
    picks = []
    rows = df[df.slot >= 0]
    for sc in dict.fromkeys(rows.scenario):
        g = rows[(rows.scenario == sc) & (rows.strategy == "notify")]
        if len(g):
            r = g.iloc[0]
            picks.append((int(r.cluster), int(r.slot), int(r.generation)))
    spurious = rows[rows.spurious_timeout.astype(bool)]
    if len(spurious):
        r = spurious.sort_values("timeout_s").iloc[-1]
        picks.append((int(r.cluster), int(r.slot), int(r.generation)))
    return picks[:5]


def _summary(df) -> str:
    import pandas as pd

    from .experiments import headline_table

    if "method" in df.columns:
        t = df.groupby("method").latency_ms.describe(percentiles=[0.5, 0.9])[["count", "50%", "90%", "max"]]
        return "death detection latency (ms):\n" + t.round(3).to_string()
    t = headline_table(df)
    cols = [c for c in t.columns if c.startswith(("label", "failed_report_median", "spurious_rate", "wrong"))]
    t = t[cols].copy()
    for c in t.columns:
        if c.startswith("spurious_rate"):
            t[c] = (100 * t[c]).round(0)
    t = t.rename(columns=lambda c: c.replace("failed_report_median_ms", "failed start reported after (ms, median)")
                 .replace("spurious_rate_", "spurious % ").replace("wrong_verdicts", "wrong verdicts"))
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        return t.round(2).to_string(index=False)


def _run_and_save(name: str, df, events, out: Path) -> None:
    from .experiments import save_results

    out.mkdir(parents=True, exist_ok=True)
    paths = save_results(df, out, events, name=name)
    figs = draw_figures(df, out, name, events)
    meta = df.attrs.get("metadata", {})
    _say(_summary(df))
    _say(f"\n{meta.get('n_trials', len(df))} trials in {meta.get('duration_s', float('nan')):.1f} s "
         f"on {meta.get('usable_cpus', meta.get('cpu_count'))} usable CPUs of {meta.get('cpu_count')} "
         f"(load average at start {meta.get('loadavg_start', ['?'])[0]:.2f})")
    for p in [*paths.values(), *figs]:
        _say(f"wrote {p}")


def cmd_demo(args) -> int:
    from .experiments import headline_experiment

    out = args.out or Path("bgwlab-demo")
    events: list = []
    df = headline_experiment(quick=args.quick, progress=not args.no_progress, trials=args.trials,
                             seed=args.seed, events=events)
    _run_and_save("headline", df, events, out)
    return 0


def cmd_experiment(args) -> int:
    from .experiments import EXPERIMENTS, SCENARIOS, run_experiment

    if args.name == "parallel":  # issue 13: its own grid, table and figures
        from .experiments.parallel import run_cli

        return run_cli(args)
    if args.name not in EXPERIMENTS and args.name not in SCENARIOS:
        _say(f"bgwlab: unknown experiment {args.name!r}; choose one of "
             f"{', '.join([*EXPERIMENTS, *SCENARIOS])} (see `bgwlab list`)")
        return 2
    out = args.out or Path(f"bgwlab-{args.name}")
    events: list = []
    try:
        df = run_experiment(args.name, trials=args.trials, timeouts=args.timeouts, loads=args.load,
                            strategies=args.strategies, quick=args.quick,
                            progress=not args.no_progress, seed=args.seed, events=events)
    except ValueError as e:
        _say(f"bgwlab: {e}")
        return 2
    _run_and_save(args.name, df, events, out)
    return 0


def cmd_plot(args) -> int:
    from .experiments import load_events, load_results

    if not args.csv.exists():
        _say(f"bgwlab: {args.csv} does not exist; run `bgwlab demo --out DIR` first")
        return 2
    df = load_results(args.csv)
    events = load_events(args.csv)
    name = args.csv.name[:-4] if args.csv.name.endswith(".csv") else args.csv.name
    out = args.out or args.csv.parent
    for p in draw_figures(df, out, name, events):
        _say(f"wrote {p}")
    return 0


def cmd_list(args) -> int:
    from .experiments import EXPERIMENTS, SCENARIOS
    from .load import LOADS

    _say("experiments:")
    for k, v in EXPERIMENTS.items():
        _say(f"  {k:18} {v}")
    _say("scenarios:")
    for s in SCENARIOS.values():
        _say(f"  {s.name:18} {s.description} (truth: {s.expected})")
    _say("loads:")
    for ld in LOADS.values():
        _say(f"  {ld.name:18} {ld.description}")
    _say("strategies:\n  notify             handle + notification + latch, no timer\n"
         "  timeout            sentinel polled every 10 ms, give up after T\n"
         "  poll_pid           handle polled every 10 ms, no notification")
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if getattr(args, "quick", False):
        os.environ["BGWLAB_QUICK"] = "1"
    t0 = time.monotonic()
    if args.command == "compare-postgres":
        return args.func(args)
    rc = {"demo": cmd_demo, "experiment": cmd_experiment, "plot": cmd_plot, "list": cmd_list}[args.command](args)
    if args.command in ("demo", "experiment"):
        _say(f"done in {time.monotonic() - t0:.1f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
