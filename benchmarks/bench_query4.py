"""A parallel query with four workers, from the request to the result with every worker
gone: PostgreSQL 15 itself, bgwlab's ParallelContext and the standard library's pools.

    .venv/bin/python benchmarks/bench_query4.py [--quick] [--rounds N] [--out DIR] [--no-save]

Issue 13 asks for a launch of four workers at half of ``multiprocessing.Pool(4)``'s time.
This benchmark puts the postmaster bgwlab imitates in the same run, on one pair of
instants for every system: *the leader asks for an answer that four workers compute ->
the leader holds it, and every worker has exited*.

* ``postgresql.query4`` -- ``select count(*)`` of a 1,000-row table with four parallel
  workers (``parallel_setup_cost = 0``, ``parallel_workers = 4`` on the table), timed by
  the client around the query.  PostgreSQL answers only after the Gather node is shut
  down, and that waits for every worker's exit (``ExecShutdownGather`` ->
  ``ExecParallelCleanup`` -> ``DestroyParallelContext`` -> ``WaitForParallelWorkersToExit``
  -> ``WaitForBackgroundWorkerShutdown``, in ``nodeGather.c`` and ``parallel.c``).
  ``postgresql.serial`` is the same query on a second session with
  ``max_parallel_workers_per_gather = 0``: what is left once the workers are taken away
  (the protocol, the planner, the scan).
* ``bgwlab.query4`` -- ``ParallelContext(nworkers=4)`` on a postmaster that preloads the
  worker's side: launch, one 8-byte message from each worker (its "partial aggregate"),
  ``wait_for_finish()``, and leaving the block (every worker waited for, the segment
  freed).
* ``mp_pool`` -- ``multiprocessing.Pool(4)``: ``map`` of four tasks, ``close()``,
  ``join()``.  ``process_pool_executor`` -- ``ProcessPoolExecutor(4)``: ``map``, then
  ``shutdown(wait=True)``.  Both start their workers with fork.

Each round runs every system once per trial, shuffled.  The table gives median and p99,
and each system's ratio to PostgreSQL's parallel query, and to it less its serial plan
(``postgresql.query4 - serial``: the medians' difference, the parallel machinery alone).
Without a PostgreSQL server (``bgwlab.pg``), its rows are left out and the run says why.
"""

from __future__ import annotations

import concurrent.futures
import os
import random
import sys
import time

from bench_parallel import CTX, _ns, _pct, parse_args, save  # this directory: the same conventions

SYSTEMS = ("postgresql.query4", "postgresql.serial", "bgwlab.query4", "mp_pool", "process_pool_executor")
ROWS = 1000
PG_SETTINGS = {"max_parallel_workers": "8", "max_parallel_workers_per_gather": "4",
               "parallel_setup_cost": "0", "parallel_tuple_cost": "0",
               "min_parallel_table_scan_size": "0"}


def _count(share: int) -> int:
    """A pool worker's part of the query (the rows of its quarter)."""
    return len(range(share, ROWS, 4))


class PgQuery:
    """A throwaway server, a 1,000-row table and two sessions: parallel and serial."""

    def __init__(self):
        from bgwlab.pg import Server

        self.server = Server.start(max_worker_processes=8, settings=PG_SETTINGS)
        try:
            self.parallel = self.server.connect()
            self.serial = self.server.connect()
            self.parallel.query("create table t (i int) with (parallel_workers = 4)")
            self.parallel.query(f"insert into t select generate_series(1, {ROWS})")
            self.parallel.query("vacuum analyze t")
            self.serial.query("set max_parallel_workers_per_gather = 0")
            plan = "\n".join(r[0] for r in self.parallel.query(
                "explain (analyze, costs off, timing off, summary off) select count(*) from t"))
            if "Workers Launched: 4" not in plan:
                raise RuntimeError(f"PostgreSQL did not launch 4 workers:\n{plan}")
            self.version = self.server.version
        except BaseException:
            self.close()
            raise

    def trial(self, serial: bool) -> int:
        conn = self.serial if serial else self.parallel
        t0 = _ns()
        (n,), = conn.query("select count(*) from t")
        t1 = _ns()
        if int(n) != ROWS:
            raise RuntimeError(f"count(*) = {n}")
        return t1 - t0

    def close(self) -> None:
        for name in ("parallel", "serial"):
            conn = getattr(self, name, None)
            if conn is not None:
                conn.close()
        self.server.stop()


def bgwlab_trial(backend) -> int:
    from bgwlab.parallel import ParallelContext

    t0 = _ns()
    with ParallelContext(backend, "bgwlab.parallel.examples:first_message", nworkers=4) as pcxt:
        if pcxt.launch() != 4:
            raise RuntimeError("fewer than 4 worker slots for the benchmark")
        got = sorted(int.from_bytes(m, "little") for _n, m in pcxt.messages())
        pcxt.wait_for_finish()
    t1 = _ns()
    if got != [0, 1, 2, 3]:
        raise RuntimeError(f"messages from workers {got}")
    return t1 - t0


def pool_trial(kind: str) -> int:
    t0 = _ns()
    if kind == "mp_pool":
        pool = CTX.Pool(4)
        total = sum(pool.map(_count, range(4)))
        pool.close()
        pool.join()
    else:
        ex = concurrent.futures.ProcessPoolExecutor(4, mp_context=CTX)
        total = sum(ex.map(_count, range(4)))
        ex.shutdown(wait=True)
    t1 = _ns()
    if total != ROWS:
        raise RuntimeError(f"{kind} counted {total}")
    return t1 - t0


def run(rounds: int, trials: int, seed: int = 0, progress: bool = True):
    from tqdm.auto import tqdm

    from bgwlab import Cluster
    from bgwlab.pg import server_available

    ok, why = server_available()
    pg = PgQuery() if ok else None
    systems = [s for s in SYSTEMS if pg or not s.startswith("postgresql")]
    rng = random.Random(seed)
    samples = []
    c = Cluster.start(max_workers=8, preload=("bgwlab.parallel.examples", "bgwlab.parallel.worker"))
    b = c.connect()
    bar = tqdm(total=rounds * trials * len(systems), desc="bench_query4", disable=not progress)
    try:
        for k in range(rounds):
            order = systems * trials
            rng.shuffle(order)
            for system in order:
                if system.startswith("postgresql"):
                    x = pg.trial(serial=system.endswith("serial"))
                elif system == "bgwlab.query4":
                    x = bgwlab_trial(b)
                else:
                    x = pool_trial(system)
                samples.append({"system": system, "round": k, "ms": x / 1e6})
                bar.update(1)
    finally:
        bar.close()
        b.detach()
        c.stop()
        if pg is not None:
            pg.close()
    return samples, {"postgresql": pg.version if pg else None, "postgresql_why_not": None if ok else why}


def summarize(samples) -> list[dict]:
    rows = []
    for system in [x for x in SYSTEMS if any(s["system"] == x for s in samples)]:
        xs = [s["ms"] for s in samples if s["system"] == system]
        rows.append({"system": system, "n": len(xs), "median_ms": _pct(xs, 50), "p99_ms": _pct(xs, 99)})
    by = {r["system"]: r for r in rows}
    pg, serial = by.get("postgresql.query4"), by.get("postgresql.serial")
    machinery = pg["median_ms"] - serial["median_ms"] if pg and serial else float("nan")
    for r in rows:
        r["x_postgresql_query4"] = r["median_ms"] / pg["median_ms"] if pg else float("nan")
        r["x_postgresql_parallel_part"] = r["median_ms"] / machinery if pg and serial else float("nan")
    return rows


def report(rows, info) -> str:
    lines = ["request -> the leader holds the answer of four workers, and every worker has exited",
             "", f"{'system':<24} {'n':>5} {'median':>10} {'p99':>10}  {'x PG query':>10}  "
             f"{'x PG parallel part':>18}", "-" * 86]
    for r in rows:
        lines.append(f"{r['system']:<24} {r['n']:>5} {r['median_ms']:>7.3f} ms {r['p99_ms']:>7.3f} ms  "
                     f"{r['x_postgresql_query4']:>9.2f}x  {r['x_postgresql_parallel_part']:>17.2f}x")
    lines.append("(PG parallel part: postgresql.query4's median less postgresql.serial's)")
    if info["postgresql"]:
        lines.append(f"PostgreSQL: {info['postgresql']}")
    else:
        lines.append(f"PostgreSQL: not measured ({info['postgresql_why_not']})")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(__doc__, argv)
    rounds = args.rounds or (2 if args.quick else 30)
    trials = 2 if args.quick else 5
    t_start, load_start = time.monotonic(), os.getloadavg()
    samples, info = run(rounds, trials, args.seed, progress=not args.no_progress)
    rows = summarize(samples)
    text = report(rows, info)
    print(text, flush=True)
    if args.no_save:
        return 0
    from bgwlab.lab.experiments.results import run_metadata

    meta = run_metadata()
    meta.update(info, benchmark="bench_query4", mode="quick" if args.quick else "full", rounds=rounds,
                trials_per_round=trials, rows=ROWS, postgresql_settings=PG_SETTINGS,
                duration_s=round(time.monotonic() - t_start, 2), loadavg_start=list(load_start),
                loadavg_end=list(os.getloadavg()))
    save(args.out / f"query4_{meta['mode']}", rows, samples, text, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
