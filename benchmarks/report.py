"""Turning samples into the benchmark's tables: summary, ratios, targets, decomposition.

Pure functions on plain lists and dicts (no pandas), so that ``run.py`` stays light and
the smoke test can check them directly.

A *metric* is named ``system.kind[.variant]``; every kind is one pair of instants, the
same for every system that has it (``postgresql`` = the probe inside a PostgreSQL backend):

* kind ``start``   -- request -> the caller knows the pid (bgwlab, PostgreSQL:
  wait-for-startup returned STARTED + pid; peers: ``os.fork()`` / ``Process.start()`` /
  ``Popen()`` returned);
* kind ``running`` -- request -> the caller knows the worker's code ran (it heard from it);
* kind ``death``   -- the child's last instruction -> the caller knows it stopped;
* kind ``fail_injected`` -- request with ``Fault.fork_failure()`` (raised at the call
  site: no ``fork()`` is called) -> the registrant knows it stopped;
* kind ``fail_genuine``  -- request to a postmaster in a pids cgroup at its limit
  (``fork()`` fails with EAGAIN) -> the registrant knows it stopped;
* kind ``crash``   -- request of a worker whose entry function does not exist -> the
  registrant knows it stopped;
* kind ``rate``    -- start/exit cycles per second;
* kind ``event``   -- microseconds per ``EventWriter.emit`` call.
"""

from __future__ import annotations

import math
import random

PEERS = ("raw_fork", "mp_fork", "mp_forkserver", "mp_spawn", "popen")
REFERENCE = "postgresql"  # the real thing, where a server is installed
UNITS = {"start": "ms", "running": "ms", "death": "ms", "fail_injected": "ms",
         "fail_genuine": "ms", "crash": "ms", "rate": "cycles/s", "event": "us"}
# Which kind of the other system a row is compared with: always the same pair of instants.
RATIO_KIND = {"start": "start", "running": "running", "death": "death",
              "fail_genuine": "fail_genuine", "crash": "crash", "rate": "rate"}
COLUMNS_X = (REFERENCE,) + PEERS

SUMMARY_COLUMNS = (["metric", "system", "kind", "variant", "unit", "n", "median", "p99", "mean",
                    "min", "max", "vs_base"] + [f"x_{p}" for p in COLUMNS_X]
                   + [f"p99_x_{REFERENCE}"])


def split_metric(metric: str) -> tuple[str, str, str]:
    system, kind, *rest = metric.split(".", 2)
    return system, kind, (rest[0] if rest else "")


def percentile(xs, q: float) -> float:
    """Linear-interpolation percentile (numpy's default), q in [0, 1]."""
    xs = sorted(xs)
    if not xs:
        return math.nan
    k = (len(xs) - 1) * q
    lo = int(math.floor(k))
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summarize(samples: dict[str, list[float]]) -> list[dict]:
    """One row per metric: n, median, p99, mean, min, max; ratios filled by add_ratios()."""
    rows = []
    for metric, xs in samples.items():
        if not xs:
            continue
        system, kind, variant = split_metric(metric)
        rows.append({
            "metric": metric, "system": system, "kind": kind, "variant": variant,
            "unit": UNITS.get(kind, ""), "n": len(xs), "median": percentile(xs, 0.5),
            "p99": percentile(xs, 0.99), "mean": sum(xs) / len(xs), "min": min(xs), "max": max(xs),
        })
    add_ratios(rows)
    return rows


def add_ratios(rows: list[dict]) -> None:
    """x_<system> = this median / that system's median of the same kind (the same pair of
    instants); p99_x_postgresql likewise for p99; vs_base = / the variant-less row."""
    by_metric = {r["metric"]: r for r in rows}
    for r in rows:
        base = by_metric.get(f"{r['system']}.{r['kind']}")
        r["vs_base"] = (r["median"] / base["median"]) if (r["variant"] and base) else math.nan
        pk = RATIO_KIND.get(r["kind"])
        for p in COLUMNS_X:
            ref = by_metric.get(f"{p}.{pk}") if pk else None
            r[f"x_{p}"] = r["median"] / ref["median"] if ref and ref["median"] > 0 else math.nan
        ref = by_metric.get(f"{REFERENCE}.{pk}") if pk else None
        r[f"p99_x_{REFERENCE}"] = r["p99"] / ref["p99"] if ref and ref["p99"] > 0 else math.nan


# -- targets (issue 6) ------------------------------------------------------------------------------
def ratio_ci(sample_rows, ours: str, theirs: str, stat: str, resamples: int = 2000,
             seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Bootstrap interval of stat(ours) / stat(theirs), resampling *rounds*.

    `sample_rows`: (metric, round, value) as ``run.py`` keeps them.  Both systems were
    timed in the same interleaved rounds, so a resample draws whole rounds with
    replacement and keeps both systems' samples of each drawn round together: a round the
    machine slowed down stays one round, for both.  `stat` is "median" or "p99".  NaNs
    when either side has no samples.  (A p99 of 1,200 samples rests on its 12 largest:
    its interval is wide, and this says how wide.)
    """
    q = 0.5 if stat == "median" else 0.99
    by_round: dict = {}
    for metric, rnd, value in sample_rows:
        if metric == ours or metric == theirs:
            by_round.setdefault(rnd, ([], []))[metric == theirs].append(value)
    rounds = [v for v in by_round.values() if v[0] and v[1]]
    if not rounds:
        return math.nan, math.nan
    rng = random.Random(seed)
    ratios = []
    for _ in range(resamples):
        a, b = [], []
        for r in rng.choices(rounds, k=len(rounds)):
            a += r[0]
            b += r[1]
        ratios.append(percentile(a, q) / percentile(b, q))
    tail = (1 - level) / 2
    return percentile(ratios, tail), percentile(ratios, 1 - tail)


# issue 12: against PostgreSQL, the same pair of instants, the same run (label, kind, stat, limit)
PG_TARGETS = (("start median", "start", "median", 1.0),
              ("start p99", "start", "p99", 1.0),
              ("running median", "running", "median", 1.2),
              ("death median", "death", "median", 1.0),
              ("genuine fork failure median", "fail_genuine", "median", 1.0),
              ("early crash median", "crash", "median", 1.5))


def verdict(value: float, limit: float, ci=(math.nan, math.nan)) -> str:
    """'met' or 'missed' (value <= limit), and ', CI spans limit' when the interval
    contains the limit: the measurement cannot tell the value from the limit."""
    out = "met" if (not math.isnan(value)) and value <= limit else "missed"
    if ci[0] <= limit <= ci[1]:
        out += ", CI spans limit"
    return out


def evaluate_targets(rows: list[dict], sample_rows=None) -> list[dict]:
    """The issue's targets, each with the measured value and whether it is met.

    With `sample_rows` ((metric, round, value), as run.py keeps them), each ratio to
    PostgreSQL also gets a 95 % bootstrap interval (``ratio_ci``), and its verdict says
    when the interval spans the limit: the run cannot tell that target from its limit.
    """
    m = {r["metric"]: r for r in rows}
    out = []

    def add(name, value, limit, unit, note="", ci=(math.nan, math.nan)):
        ok = (not math.isnan(value)) and value <= limit
        out.append({"target": name, "value": value, "limit": limit, "unit": unit,
                    "met": bool(ok), "ci_low": ci[0], "ci_high": ci[1],
                    "verdict": verdict(value, limit, ci), "note": note})

    def get(metric, stat="median"):
        r = m.get(metric)
        return r[stat] if r else math.nan

    start, p99 = get("bgwlab.start"), get("bgwlab.start", "p99")
    death, fail = get("bgwlab.death"), get("bgwlab.fail_injected")
    add("start notification median", start, 1.0, "ms")
    add("start median / multiprocessing fork median", start / get("mp_fork.start"), 0.6, "x",
        "the same pair on both: request -> pid known (Process.start() returned)")
    add("start notification p99", p99, 3.0, "ms",
        f"same run: raw fork+signal p99 {get('raw_fork.start', 'p99'):.3f}, "
        f"mp fork p99 {get('mp_fork.start', 'p99'):.3f} ms")
    add("death notification median", death, 1.0, "ms")
    add("failed start reported (median)", fail, 2.0, "ms", "injected fork failure")
    add("failed start reported (p99)", get("bgwlab.fail_injected", "p99"), 2.0, "ms",
        "injected; stricter reading")
    for label, metric, stat in (("start median", "bgwlab.start", "median"),
                                ("start p99", "bgwlab.start", "p99"),
                                ("death median", "bgwlab.death", "median"),
                                ("failed start median", "bgwlab.fail_injected", "median")):
        # against its control (a registrant without the heap on the same trials, run.py),
        # or, in a run without one, the lean registrant
        control = get(metric + ".control", stat)
        base, vs = (control, "control") if not math.isnan(control) else (get(metric, stat), "lean")
        heavy = get(metric + ".heap200", stat)
        add(f"200 MB registrant: change of {label}", abs(heavy / base - 1) * 100, 20.0, "%",
            f"{heavy:.3f} vs {base:.3f} ms ({vs})")
    # against its control (a cluster like the base with log_off's trials, run.py), or, in a
    # run without one, the base cluster
    on_metric = "bgwlab.start.log_on" if "bgwlab.start.log_on" in m else "bgwlab.start"
    on, off = get(on_metric), get("bgwlab.start.log_off")
    lo, hi = (ratio_ci(sample_rows, on_metric, "bgwlab.start.log_off", "median")
              if sample_rows else (math.nan, math.nan))
    add("event logging: added to start median", (on / off - 1) * 100, 5.0, "%",
        f"{on:.3f} (on{', control' if on_metric.endswith('log_on') else ''}) vs {off:.3f} ms (off)",
        ((lo - 1) * 100, (hi - 1) * 100))
    for label, kind, stat, limit in PG_TARGETS:
        ours, theirs = get(f"bgwlab.{kind}", stat), get(f"{REFERENCE}.{kind}", stat)
        if math.isnan(theirs):
            continue
        ci = (ratio_ci(sample_rows, f"bgwlab.{kind}", f"{REFERENCE}.{kind}", stat)
              if sample_rows else (math.nan, math.nan))
        add(f"x PostgreSQL: {label}", ours / theirs, limit, "x",
            f"{ours:.3f} vs {theirs:.3f} ms", ci)
    return out


# -- decomposition from the event log ---------------------------------------------------------------
START_STAGES = (
    ("t0", "registered", "registrant: validate, lock, write slot"),
    ("registered", "request_seen", "registrant logs+signals; postmaster wakes"),
    ("request_seen", "fork_attempted", "postmaster: check+copy spec, log, pick"),
    ("fork_attempted", "forked", "fork() in the postmaster"),
    ("forked", "notified", "postmaster: publish pid, find backend"),
    ("notified", "woke", "signal -> registrant awake, reads pid"),
    ("woke", "t1", "registrant: log 'woke', return"),
)
START_SIDE = (("forked", "reached_main", "(worker: fork -> user code, in parallel)"),)
DEATH_STAGES = (
    ("t_last", "exited", "worker exits -> SIGCHLD -> postmaster reaps"),
    ("exited", "unregistered", "postmaster: log 'exited', free the slot"),
    ("unregistered", "notified", "postmaster: log, find backend"),
    ("notified", "woke", "signal -> registrant awake, reads slot"),
    ("woke", "t3", "registrant: log 'woke', return"),
)
FAIL_STAGES = START_STAGES[:3] + (  # the same request, then the fork that fails
    ("fork_attempted", "fork_failed", "the failing fork call (injected: no fork())"),
    ("fork_failed", "unregistered", "postmaster: log, free the slot"),
    ("unregistered", "notified", "postmaster: log, find backend"),
    ("notified", "woke", "signal -> registrant awake, reads slot"),
    ("woke", "t1", "registrant: log 'woke', return"),
)
FAIL_GENUINE_STAGES = tuple(
    ("fork_attempted", "fork_failed", "fork() failing with EAGAIN (pids cgroup)")
    if st[:2] == ("fork_attempted", "fork_failed") else st for st in FAIL_STAGES)


def _trial_marks(evs, wait: str) -> dict[str, int]:
    """First time of each kind in one (slot, generation)'s events, for one wait."""
    marks = {}
    for e in evs:
        k = e.kind
        if k == "woke":
            if e.detail.get("wait") != wait:
                continue
        elif k == "notified":
            reason = e.detail.get("reason")
            if (wait == "startup") != (reason in ("forked", "fork failed")):
                continue
        marks.setdefault(k, e.t_ns)
    return marks


def decompose(events, trials: list[dict], path: str) -> list[dict]:
    """Median / p99 of each stage, in microseconds, over `trials` (dicts with slot,
    generation and the runner's own stamps).  `path` is start, death, fail (injected) or
    fail_genuine."""
    main = {"start": START_STAGES, "death": DEATH_STAGES, "fail": FAIL_STAGES,
            "fail_genuine": FAIL_GENUINE_STAGES}[path]
    stages = main + (START_SIDE if path == "start" else ())
    wait = "shutdown" if path == "death" else "startup"
    want = {(t["slot"], t["generation"]): t for t in trials}
    by_key: dict = {}
    for e in events:
        key = (e.slot, e.generation)
        if key in want:
            by_key.setdefault(key, []).append(e)
    per_stage = {s[2]: [] for s in stages}
    totals = []
    first, last = main[0][0], main[-1][1]
    for key, t in want.items():
        marks = _trial_marks(by_key.get(key, []), wait)
        for k in ("t0", "t1", "t_last", "t3"):
            if k in t:
                marks[k] = t[k]
        if not all(a in marks and b in marks for a, b, _ in stages):
            continue
        for a, b, label in stages:
            per_stage[label].append((marks[b] - marks[a]) / 1000)
        totals.append((marks[last] - marks[first]) / 1000)
    total_median = percentile(totals, 0.5)
    rows = []
    for a, b, label in stages:
        xs = per_stage[label]
        med = percentile(xs, 0.5)
        side = (a, b, label) in START_SIDE
        rows.append({"path": path, "stage": label, "from": a, "to": b, "n": len(xs),
                     "median_us": med, "p99_us": percentile(xs, 0.99),
                     "share": math.nan if side else med / total_median})
    rows.append({"path": path, "stage": "total", "from": first, "to": last, "n": len(totals),
                 "median_us": total_median, "p99_us": percentile(totals, 0.99), "share": 1.0})
    return rows


# -- printing ------------------------------------------------------------------------------------------
def _fmt(v, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if unit == "cycles/s":
        return f"{v:.0f}"
    if unit == "us":
        return f"{v:.2f}"
    if abs(v) >= 100:
        return f"{v:.1f}"
    return f"{v:.3f}"


def _ratio(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.2f}x"


def format_table(rows: list[dict]) -> str:
    head = (f"{'metric':<40} {'unit':>8} {'n':>5} {'median':>9} {'p99':>9} {'vs base':>8} "
            + " ".join(f"{'x ' + p:>14}" for p in COLUMNS_X) + f" {'p99 x postgres':>14}")
    lines = [head, "-" * len(head)]
    order = {"start": 0, "running": 1, "death": 2, "fail_genuine": 3, "fail_injected": 4,
             "crash": 5, "rate": 6, "event": 7}
    sysorder = {"bgwlab": 0, "bgwlab_before": 1, REFERENCE: 2}
    for r in sorted(rows, key=lambda r: (order.get(r["kind"], 9), sysorder.get(r["system"], 2),
                                         r["metric"])):
        u = r["unit"]
        lines.append(f"{r['metric']:<40} {u:>8} {r['n']:>5} {_fmt(r['median'], u):>9} "
                     f"{_fmt(r['p99'], u):>9} {_ratio(r['vs_base']):>8} "
                     + " ".join(f"{_ratio(r['x_' + p]):>14}" for p in COLUMNS_X)
                     + f" {_ratio(r['p99_x_' + REFERENCE]):>14}")
    return "\n".join(lines)


def format_targets(targets: list[dict]) -> str:
    lines = [f"{'target':<52} {'value':>9} {'limit':>8}    {'95% CI':<13} {'verdict':<22} note",
             "-" * 124]
    for t in targets:
        lo, hi = t.get("ci_low", math.nan), t.get("ci_high", math.nan)
        ci = "" if math.isnan(lo) else f"{lo:.2f}-{hi:.2f}"
        verdict = t.get("verdict") or ("met" if t["met"] else "missed")
        lines.append(f"{t['target']:<52} {_fmt(t['value']):>9} {_fmt(t['limit']):>8} "
                     f"{t['unit']:<2} {ci:<13} {verdict.replace('missed', 'MISSED'):<22} {t['note']}")
    return "\n".join(lines)


def format_decomposition(rows: list[dict]) -> str:
    lines = [f"{'path':<12} {'stage':<45} {'n':>5} {'median us':>10} {'p99 us':>10} {'share':>6}",
             "-" * 92]
    for r in rows:
        share = "-" if math.isnan(r["share"]) else f"{100 * r['share']:.0f}%"
        lines.append(f"{r['path']:<12} {r['stage']:<45} {r['n']:>5} {_fmt(r['median_us'], 'us'):>10} "
                     f"{_fmt(r['p99_us'], 'us'):>10} {share:>6}")
    return "\n".join(lines)
