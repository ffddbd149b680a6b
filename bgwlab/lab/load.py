"""Making the machine busy on purpose: CPU hogs and postmaster stalls.

A "busy system" is where timeouts go wrong: the worker *does* start, only later than the
registrant was willing to wait.  Two knobs, both context managers that always clean up
(also when the body raises):

``CpuHogs(n)``
    ``n`` processes spinning in a Python loop (started and killed through psutil).  On a
    machine with fewer cores than runnable processes, the postmaster, the forked worker
    and the registrant queue for the CPU, so every stage of a start takes longer.  Each hog
    also exits by itself if its parent dies, so a crashed experiment never leaves a hog
    spinning on a shared machine.

``PostmasterStalls(cluster, period_s, stall_s)``
    Every ``period_s`` seconds, freeze the postmaster with SIGSTOP for ``stall_s`` seconds,
    then SIGCONT it: a supervisor that is descheduled, swapped out or stuck in a slow
    system call.  A request that arrives during a stall waits for its end, so start
    latencies spread from ~0 to ``stall_s``.  Exiting always sends SIGCONT.

``Load`` names a combination (``LOADS``: idle, hogs, stalls, busy) and ``Load.apply(cluster)``
enters both.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass

import psutil

__all__ = ["CpuHogs", "PostmasterStalls", "Load", "LOADS", "get_load"]

# Spins, and checks every ~million iterations that its parent is still there.
_HOG_CODE = (
    "import os\n"
    "p = os.getppid()\n"
    "while os.getppid() == p:\n"
    "    for _ in range(1_000_000):\n"
    "        pass\n"
)


class CpuHogs:
    """``n`` busy-looping processes while the ``with`` block runs (default: 2 per CPU)."""

    def __init__(self, n: int | None = None):
        if n is None:
            n = 2 * (os.cpu_count() or 1)
        if not isinstance(n, int) or n < 0:
            raise ValueError("CpuHogs(n): n must be an int >= 0")
        self.n = n
        self.procs: list[psutil.Popen] = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def start(self) -> CpuHogs:
        try:
            for _ in range(self.n):
                self.procs.append(psutil.Popen(
                    [sys.executable, "-S", "-c", _HOG_CODE], stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Kill and reap every hog.  Idempotent."""
        procs, self.procs = self.procs, []
        for p in procs:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        for p in procs:
            try:
                p.wait(timeout=10)  # psutil.Popen.wait reaps and records the returncode
            except (psutil.NoSuchProcess, psutil.TimeoutExpired, ChildProcessError):
                pass
            except Exception:
                pass

    def __enter__(self) -> CpuHogs:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self):
        return f"<CpuHogs n={self.n} running={len(self.procs)}>"


class PostmasterStalls:
    """SIGSTOP the postmaster for ``stall_s`` seconds every ``period_s`` seconds (a thread)."""

    def __init__(self, cluster, period_s: float = 0.2, stall_s: float = 0.06):
        if not 0 < stall_s < period_s:
            raise ValueError("PostmasterStalls needs 0 < stall_s < period_s")
        self.cluster = cluster
        self.period_s = float(period_s)
        self.stall_s = float(stall_s)
        self.stalls = 0  # how many stalls were applied
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopped_pm = False

    def _signal(self, sig) -> bool:
        pid = self.cluster.postmaster_pid
        if not self.cluster.alive:
            return False
        try:
            os.kill(pid, sig)  # our child (Popen), not yet reaped: the pid cannot be recycled
            return True
        except ProcessLookupError:
            return False

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.period_s - self.stall_s):
                with self._lock:
                    if self._stop.is_set() or not self._signal(signal.SIGSTOP):
                        return
                    self._stopped_pm = True
                    self.stalls += 1
                self._stop.wait(self.stall_s)
                with self._lock:
                    self._signal(signal.SIGCONT)
                    self._stopped_pm = False
        finally:
            with self._lock:
                self._signal(signal.SIGCONT)
                self._stopped_pm = False

    def start(self) -> PostmasterStalls:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="bgwlab-stalls", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop stalling; the postmaster is always left running (SIGCONT).  Idempotent."""
        self._stop.set()
        t, self._thread = self._thread, None
        if t is not None:
            t.join()
        with self._lock:
            self._signal(signal.SIGCONT)
            self._stopped_pm = False

    def __enter__(self) -> PostmasterStalls:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self):
        return f"<PostmasterStalls every {self.period_s:g}s for {self.stall_s:g}s, {self.stalls} so far>"


@dataclass(frozen=True)
class Load:
    """A named background load: ``hogs`` CPU hogs (None = 2 per CPU) and optional stalls."""

    name: str
    hogs: int | None = 0
    stall_period_s: float = 0.0
    stall_s: float = 0.0
    description: str = ""

    @property
    def n_hogs(self) -> int:
        return 2 * (os.cpu_count() or 1) if self.hogs is None else self.hogs

    @property
    def stalls(self) -> bool:
        return self.stall_s > 0

    @property
    def think_s(self) -> float:
        """Upper bound of the random pause before each trial under this load.

        A trial waits for its worker to be gone before the next one registers, and that
        wait ends when a stall ends: without a random pause, every request would arrive
        just after a stall and never meet one.  Real requests arrive independently of the
        supervisor's stalls, so the runner sleeps uniform(0, think_s) first.
        """
        return self.stall_period_s if self.stalls else 0.0

    def hogs_cm(self):
        return CpuHogs(self.n_hogs) if self.n_hogs else contextlib.nullcontext()

    def stalls_cm(self, cluster):
        if self.stalls and cluster is not None:
            return PostmasterStalls(cluster, self.stall_period_s, self.stall_s)
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def apply(self, cluster=None):
        """Enter the hogs, and the stalls of `cluster`'s postmaster (if any)."""
        with self.hogs_cm(), self.stalls_cm(cluster):
            yield self

    def as_dict(self) -> dict:
        return {"name": self.name, "hogs": self.n_hogs, "stall_period_s": self.stall_period_s,
                "stall_s": self.stall_s}


LOADS = {
    "idle": Load("idle", 0, description="nothing else running (on purpose)"),
    "hogs": Load("hogs", None, description="2 CPU hogs per core"),
    "stalls": Load("stalls", 0, 0.2, 0.06, description="postmaster frozen 60 ms of every 200 ms"),
    "busy": Load("busy", None, 0.2, 0.06,
                 description="2 CPU hogs per core + postmaster frozen 60 ms of every 200 ms"),
}


def get_load(load) -> Load:
    """A Load from a name in LOADS (or a Load, returned as is)."""
    if isinstance(load, Load):
        return load
    try:
        return LOADS[load]
    except KeyError:
        raise ValueError(f"unknown load {load!r}; choose one of {', '.join(LOADS)}") from None
