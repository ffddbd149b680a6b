"""Issue 12's ratios to PostgreSQL over several runs of ``run.py``, each run alone and combined.

    .venv/bin/python benchmarks/pool_runs.py RUN_DIR [RUN_DIR ...] [--out FILE.csv]

Every ``RUN_DIR`` holds one run's ``bench_full_samples.csv.gz`` and ``bench_full.meta.json``
(``run.py --out RUN_DIR``).  One run times 1,200 starts per system: its p99 rests on the
12 largest, and its 95 % interval is wide (0.65-1.11x in one reference run, 1.09-1.37x in
the next).

The combined figure is the geometric mean of the runs' own ratios, each ratio taken within
its run, where both systems were timed in the same interleaved rounds.  (Not the ratio of
pooled statistics: runs differ in level -- the machine drifts between them -- and a p99 of
the mixture is set by whichever system had its worst run; on the six runs of 8f798ef the
pooled p99 said 0.88x while four of the six runs' own ratios were 1.09-1.13x.)  Its
interval is a stratified bootstrap: each resample redraws every run's rounds with
replacement (a drawn round keeps both systems' samples), recomputes each run's ratio and
takes their geometric mean.  The runs must come from one commit and a clean tree (checked:
the meta files say so).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import PG_TARGETS, REFERENCE, percentile, verdict  # noqa: E402


def load_run(run_dir: Path) -> tuple[list, dict]:
    """(metric, round, value) rows of the issue-12 metrics, and the run's meta."""
    wanted = {f"{s}.{k}" for _, k, _, _ in PG_TARGETS for s in ("bgwlab", REFERENCE)}
    rows = []
    with gzip.open(run_dir / "bench_full_samples.csv.gz", "rt") as f:
        for r in csv.DictReader(f):
            if r["metric"] in wanted:
                rows.append((r["metric"], int(r["round"]), float(r["value"])))
    meta = json.loads((run_dir / "bench_full.meta.json").read_text())
    return rows, meta


def _stat(xs, stat: str) -> float:
    return percentile(xs, 0.5 if stat == "median" else 0.99)


def by_round(rows, kind: str) -> list[tuple[list, list]]:
    """One run's rows of `kind`: [(bgwlab samples, PostgreSQL samples)] per round."""
    rounds: dict = {}
    for metric, rnd, value in rows:
        if metric == f"bgwlab.{kind}":
            rounds.setdefault(rnd, ([], []))[0].append(value)
        elif metric == f"{REFERENCE}.{kind}":
            rounds.setdefault(rnd, ([], []))[1].append(value)
    return [r for r in rounds.values() if r[0] and r[1]]


def run_ratio(rounds, stat: str) -> float:
    ours = [v for r in rounds for v in r[0]]
    theirs = [v for r in rounds for v in r[1]]
    if not ours or not theirs:
        return float("nan")
    return _stat(ours, stat) / _stat(theirs, stat)


def geomean(xs) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def combined_ci(runs_rounds, stat: str, resamples: int, seed: int = 0,
                level: float = 0.95) -> tuple[float, float]:
    """Stratified bootstrap of the geometric mean of per-run ratios (rounds redrawn within
    each run)."""
    rng = random.Random(seed)
    out = []
    for _ in range(resamples):
        out.append(geomean([run_ratio(rng.choices(rr, k=len(rr)), stat) for rr in runs_rounds]))
    tail = (1 - level) / 2
    return percentile(out, tail), percentile(out, 1 - tail)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run.py --out directories")
    ap.add_argument("--out", type=Path, help="write the table as CSV here")
    ap.add_argument("--resamples", type=int, default=2000)
    args = ap.parse_args(argv)

    per_run, metas = [], []
    for d in args.runs:
        rows, meta = load_run(d)
        if not rows:
            ap.error(f"{d}: no {REFERENCE} rows (a run without PostgreSQL cannot be combined)")
        per_run.append(rows)
        metas.append(meta)
    commits = {m.get("commit") for m in metas}
    dirty = [str(d) for d, m in zip(args.runs, metas) if m.get("worktree_dirty")]
    if dirty:
        ap.error(f"runs from a dirty tree name no commit that produced them: {', '.join(dirty)}")
    if len(commits) != 1:
        ap.error(f"the runs come from different commits: {sorted(map(str, commits))}")
    loads = [m.get("loadavg_1min_during", {}).get("median") for m in metas]
    print(f"{len(args.runs)} runs of commit {commits.pop()[:12]}, "
          f"{metas[0].get('cpu_model', '?')} x{metas[0].get('cpu_count', '?')}, "
          f"Python {metas[0].get('python', '?')}; dates "
          f"{min(m.get('date_utc', '') for m in metas)} .. {max(m.get('date_utc', '') for m in metas)}")
    if all(x is not None for x in loads):
        print(f"load average during the runs (median of each): {', '.join(f'{x:.2f}' for x in loads)}")
    head = f"{'x PostgreSQL':30s} {'limit':>5s}  " + "  ".join(f"run {i + 1:<3d}" for i in range(len(per_run)))
    print(head + "   geomean (95 % CI)         n/system  verdict")
    out = []
    for label, kind, stat, limit in PG_TARGETS:
        runs_rounds = [by_round(r, kind) for r in per_run]
        if not all(runs_rounds):
            continue  # a run without this row (no PostgreSQL, no genuine fork failure)
        each = [run_ratio(rr, stat) for rr in runs_rounds]
        value = geomean(each)
        lo, hi = combined_ci(runs_rounds, stat, args.resamples)
        n = sum(len(r[0]) for rr in runs_rounds for r in rr)
        met_runs = sum(1 for x in each if x <= limit)
        v = verdict(value, limit, (lo, hi))
        print(f"{label:30s} {limit:5.1f}  " + "  ".join(f"{x:7.3f}" for x in each)
              + f"   {value:6.3f}  ({lo:.3f}-{hi:.3f})  {n:8d}  {v}; {met_runs}/{len(each)} runs met")
        out.append(dict(target=f"x PostgreSQL: {label}", limit=limit, runs=len(each),
                        per_run=" ".join(f"{x:.4f}" for x in each),
                        median_of_runs=statistics.median(each), combined=value, ci_low=lo,
                        ci_high=hi, n_per_system=n, runs_met=met_runs, verdict=v))
    if args.out:
        with open(args.out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(out[0]))
            w.writeheader()
            w.writerows(out)
        # which machine, Python and commit produced the combined figures, run by run
        keep = ("commit", "date_utc", "hostname", "cpu_model", "cpu_count", "python", "seed",
                "duration_s", "loadavg_1min_during", "postgresql", "postmaster_scheduler_slice_ns")
        Path(str(args.out) + ".meta.json").write_text(json.dumps(
            {"runs": [dict(dir=str(d), **{k: m.get(k) for k in keep}) for d, m in zip(args.runs, metas)],
             "resamples": args.resamples, "unit": "rounds, redrawn within each run",
             "combined": "geometric mean of the runs' own ratios"}, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
