"""The seed's scenarios on both systems, trial by trial, in one row format.

``PgSide`` runs them on a real PostgreSQL server through the probe (timed inside the
backend); ``BgwlabSide`` runs them on a bgwlab cluster with ``bgwlab.lab.strategies``.
Both return rows with the same keys (:data:`ROW_KEYS`)::

    system        "postgresql" | "bgwlab"
    scenario      ok | fork_failure | early_crash | busy | fork_failure_back_to_back
    strategy      notify | timeout | poll_pid          timeout_s: T for timeout, else None
    verdict       started | failed | timed_out          truth: started | failed (ground truth)
    time_to_verdict_ms                                  fault_origin: none | genuine | injected
    load, status (why), kicked (PostgreSQL only: the postmaster had to be signalled again)

Ground truth is never the strategy's own opinion: on PostgreSQL it is the sign-in the worker
stamped in shared memory when it reached user code (read after the worker is gone); on
bgwlab, the worker's ``reached_main`` event.

The scenarios:

``ok``           a worker that reaches its code and runs 10 ms.
``fork_failure`` the postmaster in a pids cgroup at its limit: its fork() fails with a
                 genuine EAGAIN (PostgreSQL logs "could not fork worker process:
                 Resource temporarily unavailable").  Requests 20 ms apart.
``fork_failure_back_to_back``  the same, each request right after the last verdict: on
                 PostgreSQL 15 this meets the postmaster's lost wakeup (see
                 :data:`LOST_WAKEUP`); the probe re-signals the postmaster after ``cap_s``
                 (``kicked``), so such a trial costs cap_s instead of up to 60 s.
``early_crash``  the entry function does not exist in the worker's library / module: the
                 worker is forked and dies before user code (genuine on both systems).
``busy``         ``ok`` under bgwlab's "busy" load: 2 CPU hogs per core and the postmaster
                 frozen (SIGSTOP) 60 ms of every 200 ms.

:func:`pg_worker_crash` and :func:`bgwlab_worker_crash`: SIGKILL a running worker while its
registrant waits for it.  PostgreSQL's crash-restart kills every backend, the registrant
included; bgwlab's registrant lives outside the crash domain and is woken.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import random
import shutil
import signal
import tempfile
import time

from .cgroup import pids_limit
from .probe import build_probe, install_probe, run_trials
from .server import Server
from .wire import ConnectionLost, PgError

__all__ = ["PgSide", "BgwlabSide", "SCENARIOS", "ROW_KEYS", "LOST_WAKEUP", "pg_worker_crash",
           "bgwlab_worker_crash", "lab_module"]

ROW_KEYS = ("system", "scenario", "strategy", "timeout_s", "trial", "verdict", "truth",
            "time_to_verdict_ms", "fault_origin", "load", "status", "kicked")

# name -> (fork failure?, missing entry?, load, pause between requests in ms)
SCENARIOS = {
    "ok": dict(fork_failure=False, missing_entry=False, load="idle", gap_ms=0.0),
    "fork_failure": dict(fork_failure=True, missing_entry=False, load="idle", gap_ms=20.0),
    "fork_failure_back_to_back": dict(fork_failure=True, missing_entry=False, load="idle",
                                      gap_ms=0.0),
    "early_crash": dict(fork_failure=False, missing_entry=True, load="idle", gap_ms=0.0),
    "busy": dict(fork_failure=False, missing_entry=False, load="busy", gap_ms=0.0),
}
RUN_MS = 10
MISSING_ENTRY_BGWLAB = "bgwlab.examples:no_such_entry"

LOST_WAKEUP = """\
PostgreSQL 15, src/backend/postmaster/postmaster.c (15.18):
  ServerLoop():      DetermineSleepTime(&timeout);          1774  signals blocked: 60 s, as
                                                                  StartWorkerNeeded is false
                     PG_SETMASK(&UnBlockSig);               1776  a pending SIGUSR1 runs NOW
                     selres = select(..., &timeout);        1778  ... and select() sleeps 60 s
  sigusr1_handler(): BackgroundWorkerStateChange(); StartWorkerNeeded = true;   5210-5211
                     maybe_start_bgworkers();               5215  inside the handler
  maybe_start_bgworkers(): if (!do_start_bgworker(rw)) { StartWorkerNeeded = true; return; }
                                                            6058-6061  "come back ... on the
                                                                  next iteration of ServerLoop"
  do_start_bgworker(): fork_process() == -1 -> "could not fork worker process: %m",
                     rw_crashed_at = now                    5800-5810  (no notification)
  The NEVER_RESTART worker is forgotten, and its bgw_notify_pid signalled, only on the next
  maybe_start_bgworkers() pass (6020-6024) -- after select()'s stale 60 s timeout, unless
  another signal or connection arrives.  A request that arrives while the postmaster is busy
  (signals blocked) is handled between the timeout's computation and select(): a lost wakeup.
  A successful fork is reported from the handler itself, so only failures are delayed.
  After one loss the next is likely: the 60 s wake-up runs maybe_start_bgworkers() from
  ServerLoop (1886) -- the waiter is signalled with signals blocked -- and then, once a
  minute, RecheckDataDirLockFile() (1937-1939), which widens the window in which the
  waiter's next request arrives before PG_SETMASK(&UnBlockSig).  (Measured: the losses
  come in runs; this explanation fits them but is not proven.)
PostgreSQL 16 (7389aad6, "Use WaitEventSet API for postmaster's event loop"): handlers only
  set a flag and the latch; ServerLoop computes DetermineSleepTime() at the top of every
  iteration, after the work, and a latch set at any time ends WaitEventSetWait() at once.
"""


def lab_module(name: str):
    """``bgwlab.lab.<name>`` (strategies, load), imported when first needed."""
    return importlib.import_module(f"bgwlab.lab.{name}")


def _load(name: str):
    return lab_module("load").get_load(name)


def _row(system, scenario, strategy, timeout_s, trial, verdict, truth, ms, origin, load,
         status="", kicked=False) -> dict:
    return dict(zip(ROW_KEYS, (system, scenario, strategy,
                               timeout_s if strategy == "timeout" else None, trial, verdict,
                               truth, ms, origin, load, status, kicked)))


def _check(scenario, strategy, timeout_s):
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    if strategy not in ("notify", "timeout", "poll_pid"):
        raise ValueError("strategy must be notify, timeout or poll_pid")
    if strategy == "timeout" and not timeout_s:
        raise ValueError("the timeout strategy needs timeout_s")
    return SCENARIOS[scenario]


# -- PostgreSQL ------------------------------------------------------------------------------
class PgSide:
    """A PostgreSQL server (started here unless given) with the probe built and installed."""

    system = "postgresql"

    def __init__(self, server: Server | None = None, *, max_worker_processes: int = 8):
        self.own = server is None
        self.server = server or Server.start(max_worker_processes=max_worker_processes)
        self.conn = None
        try:
            self.probe_path = build_probe(self.server)
            self.conn = self.server.connect()
            install_probe(self.conn, self.probe_path)
            self.version = self.conn.value("show server_version")
        except BaseException:
            self.close()
            raise

    def reconnect(self, timeout: float = 60.0) -> None:
        """A new session (after a crash-restart took the old one down)."""
        if self.conn is not None:
            self.conn.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.conn = self.server.connect(timeout=5)
                self.conn.value("select 1")
                return
            except (OSError, PgError, ConnectionLost):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def trials(self, scenario: str, strategy: str, n: int, *, timeout_s: float | None = None,
               poll_s: float = 0.01, cap_s: float = 5.0, load: str | None = None,
               seed: int = 0) -> list[dict]:
        sc = _check(scenario, strategy, timeout_s)
        ld = _load(load or sc["load"])
        common = dict(timeout_ms=(timeout_s or 0) * 1000, poll_ms=poll_s * 1000, run_ms=RUN_MS,
                      missing_entry=sc["missing_entry"], cap_ms=cap_s * 1000)
        rng = random.Random(seed)
        pos = self.server.log_size()
        cg = pids_limit(self.server.postmaster_pid) if sc["fork_failure"] else contextlib.nullcontext()
        with ld.apply(self.server), cg:
            if ld.think_s > 0:  # requests arriving independently of the stalls (see Load.think_s)
                out = []
                for i in range(n):
                    time.sleep(rng.uniform(0, ld.think_s))
                    out += run_trials(self.conn, strategy, 1, **common)
            else:
                out = run_trials(self.conn, strategy, n, gap_ms=sc["gap_ms"], **common)
        self.last_log = self.server.log_text(pos)
        fork_failures = self.last_log.count("could not fork worker process")
        if sc["fork_failure"] and fork_failures == 0:
            raise AssertionError("the pids cgroup did not make the postmaster's fork fail "
                                 f"(server log: {self.last_log[-1000:]!r})")
        origin = "genuine" if sc["fork_failure"] or sc["missing_entry"] else "none"
        return [_row(self.system, scenario, strategy, timeout_s, i, r["verdict"],
                     "started" if r["reached_user_code"] else "failed", r["time_to_verdict_ms"],
                     origin, ld.name, r["status"], r["kicked"]) for i, r in enumerate(out)]

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        if self.own:
            self.server.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _postgres_children(server, needle: str) -> list[int]:
    out = []
    for pid in server.children():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if needle.encode() in f.read():
                    out.append(pid)
        except OSError:
            pass
    return out


def _pid_alive(pid) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def pg_worker_crash(side: PgSide, timeout: float = 30.0) -> dict:
    """SIGKILL a worker while its registrant waits in WaitForBackgroundWorkerShutdown().

    Returns what happened: whether the registrant's and a bystander's connections were
    dropped, what the server told them, the server log of the crash-restart, and how long
    until it accepted connections again.
    """
    server = side.server
    pos = server.log_size()
    registrant = server.connect()
    bystander = side.conn
    result = {"system": "postgresql"}
    try:
        registrant.send("select probe_hold(600000)")
        deadline = time.monotonic() + timeout
        while not (victims := _postgres_children(server, "bgwlab probe hold")):
            if time.monotonic() > deadline:
                raise AssertionError("the hold worker did not appear")
            time.sleep(0.005)
        t_kill = time.monotonic_ns()
        os.kill(victims[0], signal.SIGKILL)
        try:
            registrant.result(timeout=timeout)
            result["registrant_survived"] = True
        except ConnectionLost as e:
            result["registrant_survived"] = False
            result["registrant_lost_ms"] = (time.monotonic_ns() - t_kill) / 1e6
            result["registrant_was_told"] = [m.get("M", "") for m in e.messages]
        # every backend gets SIGQUIT: wait for the bystander's to be gone, then ask it
        deadline = time.monotonic() + timeout
        while _pid_alive(bystander.pid) and time.monotonic() < deadline:
            time.sleep(0.002)
        try:
            bystander.value("select 1")
            result["bystander_survived"] = True
        except (ConnectionLost, PgError) as e:
            result["bystander_survived"] = False
            result["bystander_was_told"] = [m.get("M", "") for m in getattr(e, "messages", [])]
        side.reconnect(timeout)
        result["recovered_ms"] = (time.monotonic_ns() - t_kill) / 1e6
        result["worker_pid"] = victims[0]
        result["log"] = [ln for ln in server.log_text(pos).splitlines()
                         if "postmaster:" in ln or "bgwlab" in ln][:12]
    finally:
        registrant.close()
    return result


# -- bgwlab ----------------------------------------------------------------------------------
class BgwlabSide:
    """A bgwlab cluster (started here unless given), and a backend in this process."""

    system = "bgwlab"

    def __init__(self, cluster=None, *, max_workers: int = 8):
        from .. import Cluster

        self.strategies = lab_module("strategies")
        self.own = cluster is None
        self.cluster = cluster or Cluster.start(max_workers=max_workers,
                                                preload=self.strategies.PRELOAD)
        self.backend = self.cluster.connect()
        self.dir = tempfile.mkdtemp(prefix="bgwlab-sent-", dir="/tmp" if os.path.isdir("/tmp") else None)
        import bgwlab

        self.version = bgwlab.__version__

    def _settle(self, handle, timeout: float = 30.0) -> None:
        """Let the worker end by itself (as the probe does: a worker given up on may still
        reach user code -- that makes a timeout spurious); terminate it after 5 s."""
        from ..backend import STOPPED

        terminate_at = time.monotonic() + 5.0
        deadline = terminate_at + timeout
        while handle.get_pid()[0] is not STOPPED:
            now = time.monotonic()
            if now > terminate_at:
                handle.terminate()
            if now > deadline:
                raise AssertionError(f"worker {handle} did not stop within {timeout} s")
            time.sleep(0.001)

    def trials(self, scenario: str, strategy: str, n: int, *, timeout_s: float | None = None,
               poll_s: float = 0.01, load: str | None = None, seed: int = 0, **_ignored) -> list[dict]:
        sc = _check(scenario, strategy, timeout_s)
        ld = _load(load or sc["load"])
        strat = self.strategies.make_strategy(strategy, timeout_s=timeout_s, poll_s=poll_s)
        rng = random.Random(seed)
        done = []
        cg = pids_limit(self.cluster.postmaster_pid) if sc["fork_failure"] else contextlib.nullcontext()
        with ld.apply(self.cluster), cg:
            for i in range(n):
                if ld.think_s > 0:
                    time.sleep(rng.uniform(0, ld.think_s))
                elif i and sc["gap_ms"]:
                    time.sleep(sc["gap_ms"] / 1000)
                spec = strat.make_spec(self.dir, name=f"cmp-{i}", run_ms=RUN_MS)
                if sc["missing_entry"]:
                    spec = spec.replace(entry=MISSING_ENTRY_BGWLAB)
                h = self.backend.register_dynamic_worker(spec)
                out = strat.wait(self.backend, h, spec)
                self._settle(h)
                done.append((h, out))
        evs = self.cluster.events()
        reached = {(e.slot, e.generation) for e in evs if e.kind == "reached_main"}
        failed = {(e.slot, e.generation): e for e in evs if e.kind == "fork_failed"}
        rows = []
        for i, (h, out) in enumerate(done):
            key = (h.slot, h.generation)
            if sc["fork_failure"]:
                ev = failed.get(key)
                if ev is None:
                    origin = "none"  # the fork did not fail: the row says so
                else:
                    injected = ev.detail.get("injected", True)
                    origin = "injected" if injected else "genuine"
                    if not injected and ev.detail.get("errno") != errno.EAGAIN:
                        origin = f"genuine (errno {ev.detail.get('errno')})"
            else:
                origin = "genuine" if sc["missing_entry"] else "none"
            rows.append(_row(self.system, scenario, strategy, timeout_s, i, out.verdict,
                             "started" if key in reached else "failed", out.time_to_verdict_ms,
                             origin, ld.name, out.status))
        for name in os.listdir(self.dir):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.dir, name))
        return rows

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.backend.detach()
        if self.own:
            self.cluster.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def bgwlab_worker_crash(side: BgwlabSide, timeout: float = 30.0) -> dict:
    """SIGKILL a worker while its registrant (this process) waits for it to end."""
    from .. import NEVER_RESTART, WorkerSpec
    from ..backend import STARTED, STOPPED

    spec = WorkerSpec(name="hold", entry="bgwlab.examples:sleep_forever", restart=NEVER_RESTART,
                      notify=True)
    h = side.backend.register_dynamic_worker(spec)
    status, pid = h.wait_for_startup(timeout=timeout)
    if status is not STARTED:
        raise AssertionError(f"the hold worker did not start: {status}")
    t_kill = time.monotonic_ns()
    os.kill(pid, signal.SIGKILL)
    st = h.wait_for_shutdown(timeout=timeout)
    woke_ms = (time.monotonic_ns() - t_kill) / 1e6
    kinds = [e.kind for e in side.cluster.events() if e.t_ns >= t_kill]
    return {"system": "bgwlab", "registrant_survived": True, "registrant_status": st.name,
            "registrant_woken_ms": woke_ms, "stopped": st is STOPPED, "worker_pid": pid,
            "events": kinds[:12]}
