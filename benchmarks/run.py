"""bgwlab's benchmark suite: start / death / failed-start notification against the peers.

    make bench          # full run, ~5-10 minutes; writes data/bench/bench_full*
    make bench-quick    # under a minute; writes data/bench/bench_quick*
    .venv/bin/python benchmarks/run.py [--quick] [--rounds N] [--out DIR] [--no-save]
                                       [--before PATCH]

What one run does (everything interleaved: every round runs every trial in a shuffled
order, so that a disturbance of the machine hits all of them alike):

* six clusters: ``max_workers`` 8 (the base, events logged), 8 with ``log_events=False``,
  8 logged as the base but with the unlogged one's trials (its control: ``.log_on``),
  64, 256 and 1,024 slots;
* measuring processes (``runner.py``): a lean registrant, a registrant holding a 200 MB
  heap of Python objects and its control (no heap, the same trials: ``.control``), three
  more registrants for the 4-registrant cycles, and two
  peer runners (lean and 200 MB) for ``os.fork`` + signal, ``multiprocessing`` fork /
  forkserver / spawn and ``subprocess.Popen``;
* per trial, every system on the same pairs of instants: request -> pid known
  (``wait_for_startup``; the peers' ``os.fork()`` / ``Process.start()`` / ``Popen()``
  returning), request -> "I run" heard from the worker, the worker's last instruction ->
  stop known (``wait_for_shutdown``); a start with ``Fault.fork_failure()`` (injected: no
  ``fork()``) and, where root and a pids controller allow, a genuine one (a cluster in a
  pids cgroup at its limit, ``failcg``) -> failure known; a missing entry -> STOPPED
  known; every few rounds, start/exit cycles per second for a fixed time;
* PostgreSQL 15 itself where a server is installed (``pg_bench.py``, the ``pg`` runner):
  the same trials timed inside a backend by ``pg_probe/bench_probe.c``, in the same
  shuffled rounds; with ``--before PATCH``, the old engine too (``bgwlab_before.*``);
* after the rounds, the *busy phase*: a sixth cluster of 1,024 slots, ~1,000 of them
  running sleepers, with starts on it interleaved with starts on the base cluster.  It
  has a phase of its own because 1,000 live Python processes slow down every fork on
  the machine, not only their own cluster's: each shares libpython's mappings, and the
  kernel's reverse-map walks over them (here: kdamond) hold the mapping lock that fork()
  needs (``tail_trace.py`` shows it: with them alive during the main rounds, the base
  cluster's start p99 was 4.3-7.0 ms instead of 1.3 ms, 120 rounds, twice each way);
* at the end: the latency decomposition from the base cluster's event log (the lean
  registrant's trials; its start and injected failure also for the 200 MB registrant and
  its control), the issue's
  targets, and the cost of one event (``bench_events.py``).

Output: a table of medians, p99 and ratios to each peer on stdout, and under ``--out``
(default ``data/bench``): ``bench_<mode>.csv`` (summary), ``_samples.csv.gz``,
``_decomposition.csv``, ``_targets.csv``, ``.txt`` (the printed report) and
``.meta.json`` (machine, CPUs, Python, commit, date, load averages, plan).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import gzip
import io
import json
import math
import os
import platform
import random
import select
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # bench_entry (preloaded by the postmasters), peers, report

import report  # noqa: E402

PRELOAD = ("bench_entry",)  # (the entries of every timed worker; see bench_entry.py)
HEAP_MB = 200


@dataclass
class Plan:
    """How much of everything one run does."""

    mode: str
    rounds: int
    base_reps: int  # timed trials per round on the base cluster and its main variants
    variant_reps: int  # per round on each max_workers variant (= base_reps: equally warm)
    fail_reps: int
    fast_peer_reps: int  # raw fork, multiprocessing fork (lean and 200 MB)
    slow_peer_reps: int  # forkserver, spawn, Popen
    cycles_every: int  # run the cycles block after every n-th round
    cycles_s: float  # duration of one cycles measurement
    busy_workers: int  # sleepers in the max_workers=1024 "busy" cluster
    busy_rounds: int  # rounds of the busy phase (each: variant_reps starts there + on the base)
    event_n: int  # events per shape in bench_events

    @property
    def busy_variant(self) -> str:
        return f"mw1024_busy{self.busy_workers}"


QUICK = Plan("quick", rounds=15, base_reps=2, variant_reps=2, fail_reps=2, fast_peer_reps=1,
             slow_peer_reps=1, cycles_every=5, cycles_s=0.2, busy_workers=100, busy_rounds=5,
             event_n=5_000)
FULL = Plan("full", rounds=300, base_reps=4, variant_reps=4, fail_reps=3, fast_peer_reps=2,
            slow_peer_reps=1, cycles_every=10, cycles_s=0.5, busy_workers=1000, busy_rounds=100,
            event_n=50_000)


class BenchError(RuntimeError):
    pass


# -- measuring processes ---------------------------------------------------------------------------
class Runner:
    """A ``runner.py`` child, spoken to one JSON line at a time."""

    def __init__(self, role: str, name: str):
        self.name = name
        self.proc = subprocess.Popen([sys.executable, str(HERE / "runner.py"), role],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=os.getcwd())
        self.pid = self.proc.pid

    def send(self, **cmd) -> None:
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()

    def recv(self, timeout: float = 120.0) -> dict:
        if not select.select([self.proc.stdout], [], [], timeout)[0]:
            raise BenchError(f"runner {self.name} did not answer within {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            raise BenchError(f"runner {self.name} exited (code {self.proc.poll()})")
        res = json.loads(line)
        if not res.pop("ok"):
            raise BenchError(f"runner {self.name}: {res['error']}\n{res.get('traceback', '')}")
        return res

    def call(self, timeout: float = 120.0, **cmd) -> dict:
        self.send(**cmd)
        return self.recv(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call(timeout=10, op="quit")
                self.proc.wait(10)
            except (BenchError, OSError, ValueError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


# -- metadata ---------------------------------------------------------------------------------------
def _git(*args) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _cpu_model() -> str:
    from bgwlab.lab.experiments.results import _cpu_model as cpu_model  # one definition of the machine's CPU

    return cpu_model()


def machine_metadata() -> dict:
    from bgwlab.lab.load import cpu_info

    status = _git("status", "--porcelain")
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        **cpu_info(),  # cpu_count (the host's), cpu_affinity, cpu_quota, usable_cpus
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "commit": _git("rev-parse", "HEAD"),
        "worktree_dirty": bool(status),
        "loadavg_start": list(os.getloadavg()),
        "busy_processes_at_start": busy_processes(),
        "note": ("a VM on a shared host, not reserved for the run: the load averages (at start, "
                 "per round, at the end) and the processes using > 1 % of a CPU at the start are "
                 "recorded; kernel threads and the host are not under the benchmark's control "
                 "(benchmarks/tail_trace.py measures their share of the tail)"),
    }


def busy_processes(window_s: float = 0.5, threshold_pct: float = 1.0) -> list[dict]:
    """Processes (kernel threads included) using more than `threshold_pct` of a CPU just now."""
    import psutil

    procs = [p for p in psutil.process_iter(["name"]) if p.pid != os.getpid()]
    for p in procs:
        try:
            p.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(window_s)
    out = []
    for p in procs:
        try:
            pct = p.cpu_percent(None)
        except psutil.Error:
            continue
        if pct > threshold_pct:
            out.append({"pid": p.pid, "name": p.info["name"], "cpu_pct": round(pct, 1)})
    return sorted(out, key=lambda d: -d["cpu_pct"])


# -- the run ----------------------------------------------------------------------------------------
class Bench:
    def __init__(self, plan: Plan, *, seed: int = 0, progress: bool = True, log=print,
                 before: str | None = None):
        self.plan = plan
        self.before = before  # an ab_patches module: the engine before, as "bgwlab_before"
        self.rng = random.Random(seed)
        self.seed = seed
        self.progress = progress
        self.log = log
        self.samples: dict[str, list[float]] = {}
        self.sample_rows: list[tuple] = []
        self.trials: dict[str, list[dict]] = {"start": [], "fail": [], "fail_genuine": [],
                                              "start.heap200": [], "fail.heap200": [],
                                              "start.control": [], "fail.control": []}
        self.pg_kicked = 0
        self.clusters: dict = {}
        self.runners: dict[str, Runner] = {}
        self.loads: list[float] = []
        self.meta: dict = {}
        self.limit = self.before_limit = None
        self.genuine = self.pg = False
        self.failcg_events: list = []

    # -- setup / teardown -------------------------------------------------------------------------
    def setup(self) -> None:
        from bgwlab import Cluster

        p = self.plan
        # log_on: log_off's control, a cluster like the base with the same trials as log_off
        # (the base's postmaster serves three registrants and is the warmer for it)
        specs = {"base": (8, True), "log_off": (8, False), "log_on": (8, True), "mw64": (64, True),
                 "mw256": (256, True), "mw1024": (1024, True)}
        import pg_bench

        self.genuine, why = pg_bench.genuine_fail_available()
        self.meta["genuine_fork_failure"] = {"available": self.genuine, "why_not": why,
                                             "how": "the postmaster in a pids cgroup at its limit"}
        if not self.genuine:
            self.log(f"bench: no genuine fork failure here ({why}): skipping those rows",
                     file=sys.stderr)
        else:
            specs["failcg"] = (8, True)
        if self.before:
            specs["before"] = (8, True)
            if self.genuine:
                specs["before_failcg"] = (8, True)
            self.meta["before"] = {"patch": self.before,
                                   "what": "clusters whose postmaster preloads this "
                                           "benchmarks/ab_patches module: the old engine code"}
        self.pg, why = pg_bench.available()
        self.meta["postgresql"] = {"available": self.pg, "why_not": why}
        if not self.pg:
            self.log(f"bench: no PostgreSQL server here, skipping its rows: {why}", file=sys.stderr)
        from ab import compile_bytecode  # (else the first postmaster to start compiles bgwlab,
        compile_bytecode(self.before)     #  and keeps the compiler's garbage in its heap)
        # The engine as it was had no scheduler slices of its own (bgwlab/sched.py): the
        # before clusters' postmasters and their registrant keep the kernel's default,
        # unless the patch says otherwise (BEFORE_POSTMASTER_SLICE_US / BEFORE_WAIT_SLICE_US)
        self.before_slices = _before_slices(self.before)
        # ... and forked through the Python path (bgwlab/forkpath.py), unless BEFORE_FORK_PATH
        self.before_fork_path = _before_fork_path(self.before)
        if self.before:
            self.meta["before"]["scheduler_slice_us"], self.meta["before"]["wait_slice_us"] = self.before_slices
            self.meta["before"]["fork_path"] = self.before_fork_path
        for name, (mw, log) in specs.items():
            before = name.startswith("before")
            pre = PRELOAD + ((self.before,) if before else ())
            self.clusters[name] = Cluster.start(
                max_workers=mw, log_events=log, preload=pre,
                **({"scheduler_slice_us": self.before_slices[0], "fork_path": self.before_fork_path}
                   if before else {}))
        self.meta["postmaster_scheduler_slice_ns"] = {
            name: c.scheduler_slice_ns for name, c in self.clusters.items()}  # 0: the kernel's default
        self.meta["fork_path"] = {name: c.fork_path for name, c in self.clusters.items()}  # "c" / "python"
        self.meta["fork_path_note"] = {name: c.fork_path_note for name, c in self.clusters.items() if c.fork_path_note}
        self.meta["registrant_wait_slice_us"] = {  # Backend(wait_slice_us=); None: default slice
            name: self.before_slices[1] if name.startswith("before") else 100 for name in self.clusters}
        if self.genuine:
            from bgwlab.pg.cgroup import pids_limit

            self.limit = pids_limit(self.clusters["failcg"].postmaster_pid)
            self.limit.__enter__()
            if self.before:
                self.before_limit = pids_limit(self.clusters["before_failcg"].postmaster_pid)
                self.before_limit.__enter__()
        roles = [("lean", "bgw"), ("heavy", "bgw"), ("control", "bgw"), ("c1", "bgw"), ("c2", "bgw"),
                 ("c3", "bgw"), ("peers", "peers"), ("peers_heavy", "peers")]
        if self.pg:
            roles.append(("pg", "pg"))
        for name, role in roles:
            self.runners[name] = Runner(role, name)
        if self.pg:
            res = self.runners["pg"].call(op="setup", genuine_fail=self.genuine, timeout=600)
            self.meta["postgresql"].update(res)
        # the before-engine's registrant waits as it did then (on its default slice)
        dirs = {n: [str(c.directory), n != "log_off"] + ([self.before_slices[1]] if n.startswith("before") else [])
                for n, c in self.clusters.items()}
        self.runner_pids = {n: r.pid for n, r in self.runners.items()}
        self.runners["lean"].call(op="attach", clusters=dirs)
        for n in ("heavy", "control", "c1", "c2", "c3"):
            self.runners[n].call(op="attach", clusters={k: dirs[k] for k in ("base", "log_off")})
        heaps = {}
        for n in ("heavy", "peers_heavy"):
            heaps[n] = self.runners[n].call(op="heap", mb=HEAP_MB, timeout=300)
        lean_rss = {n: self.runners[n].call(op="ping")["rss_mb"] for n in ("lean", "peers")}
        self.meta["heap"] = {"requested_mb": HEAP_MB, "kind": "list of 99-byte bytes objects",
                             **{n: {"rss_mb": round(h["rss_mb"], 1),
                                    "rss_before_mb": round(h["rss_before_mb"], 1),
                                    "objects": h["objects"]} for n, h in heaps.items()},
                             "lean_rss_mb": {n: round(v, 1) for n, v in lean_rss.items()}}

    def _fill_busy(self, cluster, n: int) -> None:
        from bgwlab import NEVER_RESTART, WorkerSpec

        b = cluster.connect()
        spec = WorkerSpec(name="busy", entry="bench_entry:sleep_forever", main_arg=0,
                          extra=b"", restart=NEVER_RESTART, notify=False)
        for _ in range(n):
            b.register_dynamic_worker(spec)
        deadline = time.monotonic() + 120
        while len(cluster.worker_pids()) < n:
            if time.monotonic() > deadline:
                raise BenchError(f"only {len(cluster.worker_pids())} of {n} busy workers started")
            time.sleep(0.02)

    def teardown(self, keep: bool = False) -> list:
        """Stop the runners and clusters.  `keep`: leave the clusters' directories (the
        evidence of a failed run) and say where they are."""
        for r in self.runners.values():
            r.close()
        if self.limit is not None:
            self.meta["genuine_fork_failure"]["pids_events"] = self.limit.events  # before close()
            self.limit.close()
            self.limit = None
        if self.before_limit is not None:
            self.before_limit.close()
            self.before_limit = None
        base_events = []
        for name, c in self.clusters.items():
            if keep:
                self.log(f"bench: kept cluster {name!r} for inspection: {c.keep()}", file=sys.stderr)
            c.stop()
            if name == "base":
                base_events = c.events()
            elif name == "failcg":
                self.failcg_events = c.events()
        return base_events

    # -- recording --------------------------------------------------------------------------------
    def add(self, metric: str, value: float, rnd: int) -> None:
        self.samples.setdefault(metric, []).append(value)
        self.sample_rows.append((metric, rnd, value))

    # -- tasks ------------------------------------------------------------------------------------
    def timed_tasks(self, runner, cluster, suffix, reps, keep=("start", "running", "death"),
                    trials: list | None = None, system: str = "bgwlab") -> list:
        """`reps` timed start/stop trials of `runner` on `cluster`; each response is also
        appended to `trials` if given (for the decomposition and tail_trace.py)."""
        def record(res, rnd):
            ms = {"start": (res["t1"] - res["t0"]) / 1e6,
                  "running": (res["t_run"] - res["t0"]) / 1e6,
                  "death": (res["t3"] - res["t_last"]) / 1e6}
            for k in keep:
                self.add(f"{system}.{k}{suffix}", ms[k], rnd)
            if trials is not None:
                trials.append(res)
        return [(runner, {"op": "timed", "cluster": cluster}, record)] * reps

    def tasks(self) -> list:
        """(runner, command, record) triples for one round; record(response, round)."""
        p = self.plan
        out = []

        def timed(*args, **kw):
            out.extend(self.timed_tasks(*args, **kw))

        def fail(runner, cluster, suffix, reps, trials=None, genuine=False, system="bgwlab"):
            kind = "fail_genuine" if genuine else "fail_injected"

            def record(res, rnd):
                self.add(f"{system}.{kind}{suffix}", (res["t1"] - res["t0"]) / 1e6, rnd)
                if trials is not None:
                    trials.append(res)
            out.extend([(runner, {"op": "fail", "cluster": cluster, "genuine": genuine},
                         record)] * reps)

        def crash(runner, cluster, reps, system="bgwlab"):
            def record(res, rnd):
                self.add(f"{system}.crash", (res["t1"] - res["t0"]) / 1e6, rnd)
            out.extend([(runner, {"op": "crash", "cluster": cluster}, record)] * reps)

        def peer(runner, name, suffix, reps):
            def record(res, rnd):
                self.add(f"{name}.start{suffix}", (res["t_pid"] - res["t0"]) / 1e6, rnd)
                self.add(f"{name}.running{suffix}", (res["t1"] - res["t0"]) / 1e6, rnd)
                self.add(f"{name}.death{suffix}", (res["t3"] - res["t_last"]) / 1e6, rnd)
            out.extend([(runner, {"op": "trial", "name": name}, record)] * reps)

        def pg(kind, reps):
            def record(res, rnd):
                if "kicked" in res["status"]:
                    self.pg_kicked += 1
                if kind == "timed":
                    if not res["status"].startswith("STARTED/STOPPED") or "t_run" not in res:
                        raise BenchError(f"PostgreSQL timed trial: {res['status']}")
                    self.add("postgresql.start", (res["t1"] - res["t0"]) / 1e6, rnd)
                    self.add("postgresql.running", (res["t_run"] - res["t0"]) / 1e6, rnd)
                    self.add("postgresql.death", (res["t3"] - res["t_last"]) / 1e6, rnd)
                else:
                    if "t_run" in res:
                        raise BenchError(f"PostgreSQL {kind} trial reached user code")
                    if kind == "fail" and not res["status"].startswith("STOPPED"):
                        raise BenchError(f"PostgreSQL fork did not fail: {res['status']}")
                    name = "fail_genuine" if kind == "fail" else "crash"
                    self.add(f"postgresql.{name}", (res["t3"] - res["t0"]) / 1e6, rnd)
            out.extend([("pg", {"op": "trial", "kind": kind}, record)] * reps)

        timed("lean", "base", "", p.base_reps, trials=self.trials["start"])
        timed("heavy", "base", ".heap200", p.base_reps, trials=self.trials["start.heap200"])
        # the 200 MB registrant's control: a registrant without the heap that runs exactly its
        # trials.  Against the lean one, which runs most of the round's trials, the heavy
        # one's code and data are colder in the caches whatever its heap (a registrant of
        # neither kind, on 1 trial in 6, took 67 instead of 29 us to write its slot)
        timed("control", "base", ".control", p.base_reps, trials=self.trials["start.control"])
        timed("lean", "log_off", ".log_off", p.base_reps, keep=("start", "death"))
        timed("lean", "log_on", ".log_on", p.base_reps, keep=("start", "death"))
        for v in ("mw64", "mw256", "mw1024"):
            timed("lean", v, f".{v}", p.variant_reps, keep=("start", "death"))
        fail("lean", "base", "", p.fail_reps, trials=self.trials["fail"])
        fail("heavy", "base", ".heap200", p.fail_reps, trials=self.trials["fail.heap200"])
        fail("control", "base", ".control", p.fail_reps, trials=self.trials["fail.control"])
        fail("lean", "log_off", ".log_off", p.fail_reps)
        fail("lean", "log_on", ".log_on", p.fail_reps)
        crash("lean", "base", p.fail_reps)
        if self.genuine:
            fail("lean", "failcg", "", p.fail_reps, trials=self.trials["fail_genuine"], genuine=True)
        if self.before:
            timed("lean", "before", "", p.base_reps, system="bgwlab_before")
            crash("lean", "before", p.fail_reps, system="bgwlab_before")
            if self.genuine:
                fail("lean", "before_failcg", "", p.fail_reps, genuine=True, system="bgwlab_before")
        if self.pg:
            pg("timed", p.base_reps)
            pg("crash", p.fail_reps)
            if self.genuine:
                pg("fail", p.fail_reps)
        for name in ("raw_fork", "mp_fork"):
            peer("peers", name, "", p.fast_peer_reps)
            peer("peers_heavy", name, ".heap200", p.fast_peer_reps)
        for name in ("mp_forkserver", "mp_spawn", "popen"):
            peer("peers", name, "", p.slow_peer_reps)
        return out

    def cycle_blocks(self) -> list:
        """(metric, [(runner, command)]) -- the runners of one block run at the same time."""
        regs = ("c1", "c2", "c3")
        bgw = {"op": "cycles", "cluster": "base"}
        return [
            ("bgwlab.rate", [("lean", bgw)]),
            ("bgwlab.rate.4_registrants", [("lean", bgw)] + [(c, bgw) for c in regs]),
            ("bgwlab.rate.heap200", [("heavy", bgw)]),
            ("bgwlab.rate.4_registrants_heap200", [("heavy", bgw)] + [(c, bgw) for c in regs]),
            ("raw_fork.rate", [("peers", {"op": "cycles", "name": "raw_fork"})]),
            ("mp_fork.rate", [("peers", {"op": "cycles", "name": "mp_fork"})]),
            ("mp_fork.rate.heap200", [("peers_heavy", {"op": "cycles", "name": "mp_fork"})]),
        ]

    def run_busy_phase(self) -> None:
        """Starts on a cluster with ~1,000 sleeping workers, interleaved with starts on the base.

        ``.mw1024_busyN`` = that cluster; ``.busy_phase`` = the base cluster while those
        sleepers exist (the machine-wide cost of 1,000 live processes, see the docstring).
        """
        from bgwlab import Cluster

        p = self.plan
        name = p.busy_variant
        t_begin = time.monotonic_ns()
        self.clusters[name] = Cluster.start(max_workers=1024, preload=PRELOAD)
        self._fill_busy(self.clusters[name], p.busy_workers)
        self.runners["lean"].call(op="attach", clusters={name: [str(self.clusters[name].directory), True]})
        self.meta["busy_phase"] = {"workers": p.busy_workers, "rounds": p.busy_rounds,
                                   "t_begin_ns": t_begin,
                                   "fill_s": round((time.monotonic_ns() - t_begin) / 1e9, 1)}
        self.trials["busy_phase"] = []
        keep = ("start", "death")
        tasks = (self.timed_tasks("lean", name, f".{name}", p.variant_reps, keep)
                 + self.timed_tasks("lean", "base", ".busy_phase", p.variant_reps, keep,
                                    trials=self.trials["busy_phase"]))
        self.warm_up(tasks)
        t_measure = time.monotonic_ns()
        for rnd in range(p.rounds + 1, p.rounds + 1 + p.busy_rounds):
            self.run_round(tasks, rnd)
        self.meta["busy_phase"]["window_ns"] = [t_measure, time.monotonic_ns()]

    def fault_probe(self, n: int = 100) -> float:
        """Minor page faults the base postmaster takes per timed start/exit cycle.

        After every fork() the kernel write-protects the postmaster's memory, so each
        page its Python code writes next (reference counts...) faults once per cycle.
        """
        pid = self.clusters["base"].postmaster_pid

        def minflt() -> int:
            with open(f"/proc/{pid}/stat") as f:
                return int(f.read().rsplit(")", 1)[1].split()[7])

        before = minflt()
        for _ in range(n):
            self.runners["lean"].call(op="timed", cluster="base")
        return (minflt() - before) / n

    def run_cycles(self, rnd: int) -> None:
        blocks = self.cycle_blocks()
        self.rng.shuffle(blocks)
        for metric, members in blocks:
            t_begin = time.monotonic_ns() + 20_000_000
            for name, cmd in members:
                self.runners[name].send(**cmd, t_begin=t_begin, duration_s=self.plan.cycles_s)
            results = [self.runners[name].recv() for name, _ in members]
            elapsed = (max(r["t_done"] for r in results) - t_begin) / 1e9
            self.add(metric, sum(r["count"] for r in results) / elapsed, rnd)

    def warm_up(self, tasks: list) -> None:
        """Each distinct (runner, command) once, unrecorded: first forks, forkserver, imports."""
        for runner, cmd, _ in {(r, json.dumps(c, sort_keys=True)): (r, c, None)
                               for r, c, _ in tasks}.values():
            self.runners[runner].call(**cmd)

    def run_round(self, tasks: list, rnd: int) -> None:
        """Every task once, in a shuffled order, each response recorded."""
        order = list(tasks)
        self.rng.shuffle(order)
        for runner, cmd, record in order:
            record(self.runners[runner].call(**cmd), rnd)

    # -- the whole run ----------------------------------------------------------------------------
    def run(self) -> dict:
        p = self.plan
        t_start = time.monotonic()
        self.meta.update(machine_metadata())
        self.meta["plan"] = asdict(p)
        self.meta["seed"] = self.seed
        failed = True
        try:
            self.setup()
            tasks = self.tasks()
            self.warm_up(tasks)
            rounds = range(1, p.rounds + 1)
            if self.progress:
                from tqdm.auto import tqdm

                rounds = tqdm(rounds, desc=f"bench ({p.mode})", unit="round", file=sys.stderr)
            for rnd in rounds:
                self.run_round(tasks, rnd)
                if rnd % p.cycles_every == 0:
                    self.run_cycles(rnd)
                self.loads.append(os.getloadavg()[0])
            self.meta["postmaster_minor_faults_per_cycle"] = self.fault_probe()
            self.run_busy_phase()
            failed = False
        finally:
            events = self.teardown(keep=failed)
        from bench_events import measure

        for shape, xs in measure(p.event_n).items():
            for x in xs:
                self.add(f"eventlog.event.{shape}", x, 0)
        self.meta["loadavg_end"] = list(os.getloadavg())
        self.meta["loadavg_1min_during"] = {
            "min": min(self.loads, default=math.nan), "median": report.percentile(self.loads, 0.5),
            "max": max(self.loads, default=math.nan)}
        self.meta["loadavg_1min_per_round"] = [round(x, 2) for x in self.loads]
        self.meta["duration_s"] = round(time.monotonic() - t_start, 1)
        self.meta["runner_pids"] = self.runner_pids
        summary = report.summarize(self.samples)
        decomposition = (report.decompose(events, self.trials["start"], "start")
                         + report.decompose(events, self.trials["start"], "death")
                         + report.decompose(events, self.trials["fail"], "fail"))
        if self.trials["fail_genuine"]:
            decomposition += report.decompose(self.failcg_events, self.trials["fail_genuine"],
                                              "fail_genuine")
        for variant in ("heap200", "control"):  # the 200 MB registrant and its control
            for path in ("start", "fail"):
                for r in report.decompose(events, self.trials[f"{path}.{variant}"], path):
                    decomposition.append({**r, "path": f"{path}.{variant}"})
        self.meta["postgresql"]["kicked"] = self.pg_kicked
        return {"summary": summary, "targets": report.evaluate_targets(summary, self.sample_rows),
                "decomposition": decomposition, "metadata": self.meta,
                "samples": self.sample_rows}


# -- output -----------------------------------------------------------------------------------------
def render(result: dict) -> str:
    m = result["metadata"]
    la = m["loadavg_1min_during"]
    busy = ", ".join(f"{p['name']} {p['cpu_pct']}%" for p in m.get("busy_processes_at_start", []))
    pgm = m.get("postgresql", {})
    pg = (f"{pgm.get('version')} (probe in the backend, same interleaved run; "
          f"{pgm.get('kicked', 0)} lost wakeups kicked)" if pgm.get("available")
          else f"skipped: {pgm.get('why_not', '?')}")
    gm = m.get("genuine_fork_failure", {})
    if not gm.get("available", False):
        pg += f"; genuine fork failure skipped: {gm.get('why_not', '?')}"
    head = (f"bgwlab benchmark ({m['plan']['mode']}): {m['date_utc']}  {m['hostname']}  "
            f"{m['cpu_model']} x{m['cpu_count']}  Python {m['python']}  commit {m['commit'][:12]}"
            f"{' (dirty tree)' if m['worktree_dirty'] else ''}\n"
            f"load average (1 min) at start {m['loadavg_start'][0]:.2f}, during "
            f"{la['min']:.2f}..{la['max']:.2f} (median {la['median']:.2f}), at end "
            f"{m['loadavg_end'][0]:.2f}; {m['duration_s']} s; busy at start: "
            f"{busy or 'nothing'}\n"
            f"PostgreSQL: {pg}\n"
            "Every row is a pair of instants, the same for every system: "
            "start = request -> the caller knows the pid (bgwlab/PostgreSQL: wait for startup "
            "returned STARTED + pid; os.fork / Process.start / Popen returned); "
            "running = request -> the caller knows the worker's code ran (it heard from it); "
            "death = worker's last instruction -> the caller knows it stopped; "
            "fail_injected = request with Fault.fork_failure() (raised at the call site, fork() "
            "is never called) -> STOPPED known; fail_genuine = request to a postmaster in a "
            "pids cgroup at its limit (fork() fails with EAGAIN) -> STOPPED known; "
            "crash = request of a worker whose entry function does not exist -> STOPPED known.  "
            "x peer = median / that system's median of the same kind")
    return "\n\n".join([head, report.format_table(result["summary"]),
                        "Targets (issue 6) and against PostgreSQL (issue 12)\n" + report.format_targets(result["targets"]),
                        "Where the time goes (base cluster's event log, lean registrant; "
                        f"{m.get('postmaster_minor_faults_per_cycle', math.nan):.0f} minor page "
                        "faults in the postmaster per start/exit cycle)\n"
                        + report.format_decomposition(result["decomposition"])])


def _csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def save(result: dict, out: Path, text: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"bench_{result['metadata']['plan']['mode']}"
    _csv(stem.with_suffix(".csv"), result["summary"], report.SUMMARY_COLUMNS)
    _csv(Path(f"{stem}_targets.csv"), result["targets"],
         ["target", "value", "limit", "unit", "met", "ci_low", "ci_high", "verdict", "note"])
    _csv(Path(f"{stem}_decomposition.csv"), result["decomposition"],
         ["path", "stage", "from", "to", "n", "median_us", "p99_us", "share"])
    # Every sample, gzipped (deterministic: no name or time in the header).
    with open(f"{stem}_samples.csv.gz", "wb") as raw, \
            gzip.GzipFile(fileobj=raw, mode="wb", filename="", mtime=0) as gz, \
            io.TextIOWrapper(gz, newline="") as f:
        w = csv.writer(f)
        w.writerow(["metric", "round", "value"])
        w.writerows((m, r, f"{v:.6g}") for m, r, v in result["samples"])
    Path(f"{stem}.txt").write_text(text + "\n")
    Path(f"{stem}.meta.json").write_text(json.dumps(result["metadata"], indent=2, sort_keys=True) + "\n")
    return stem.with_suffix(".csv")


def _before_slices(patch: str | None) -> tuple:
    """(postmaster's scheduler_slice_us, registrant's wait_slice_us) for the before clusters:
    None, None unless the patch module sets BEFORE_POSTMASTER_SLICE_US / BEFORE_WAIT_SLICE_US
    (read from its text: importing it here would apply it to this process)."""
    import re

    found = {}
    if patch:
        text = (HERE / "ab_patches" / f"{patch}.py").read_text()
        for key in ("BEFORE_POSTMASTER_SLICE_US", "BEFORE_WAIT_SLICE_US"):
            m = re.search(rf"^{key} = (\d+|None)\s*(#.*)?$", text, re.M)
            found[key] = int(m.group(1)) if m and m.group(1) != "None" else None
    return found.get("BEFORE_POSTMASTER_SLICE_US"), found.get("BEFORE_WAIT_SLICE_US")


def _before_fork_path(patch: str | None) -> str:
    """The before clusters' fork_path: "python" (the engine before the C path had only that)
    unless the patch module sets BEFORE_FORK_PATH (read from its text, as _before_slices)."""
    import re

    if patch:
        m = re.search(r'^BEFORE_FORK_PATH = "(auto|c|python)"\s*(#.*)?$',
                      (HERE / "ab_patches" / f"{patch}.py").read_text(), re.M)
        if m:
            return m.group(1)
    return "python"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="bgwlab benchmark suite (issue 6)")
    ap.add_argument("--quick", action="store_true", help="small run, under a minute")
    ap.add_argument("--rounds", type=int, help="override the number of rounds")
    ap.add_argument("--out", default=str(ROOT / "data" / "bench"), help="output directory")
    ap.add_argument("--no-save", action="store_true", help="print only")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--before", metavar="PATCH",
                    help="also time the engine as it was: clusters whose postmaster preloads "
                         "benchmarks/ab_patches/PATCH.py (rows bgwlab_before.*)")
    args = ap.parse_args(argv)
    if args.before:
        sys.path.insert(0, str(HERE / "ab_patches"))
    plan = QUICK if args.quick else FULL
    if args.rounds:
        plan = Plan(**{**asdict(plan), "rounds": args.rounds})
    result = Bench(plan, seed=args.seed, progress=not args.no_progress,
                   before=args.before).run()
    text = render(result)
    print(text)
    if not args.no_save:
        path = save(result, Path(args.out), text)
        print(f"\nsaved {path} (+ _samples.csv.gz, _targets.csv, _decomposition.csv, .txt, .meta.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
