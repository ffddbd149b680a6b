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

``usable_cpus()``
    How many CPUs *this process* may use: its CPU affinity (``os.sched_getaffinity``)
    and its cgroup's CPU quota (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us``), not ``os.cpu_count()``, which counts the host's CPUs.  A lab
    machine is shared: a container limited to 2 CPUs on a 64-core host gets 4 hogs by
    default, not 128.  Everything that scales with the CPUs (default hogs, default
    parallelism) asks this function; ``cpu_info()`` gives all the numbers for metadata.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass

import psutil

__all__ = ["CpuHogs", "PostmasterStalls", "Load", "LOADS", "get_load", "usable_cpus",
           "cgroup_cpu_quota", "cpu_info"]


def _read(path) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _under(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def _cgroup_dirs(root: str) -> tuple[str, list[str]] | None:
    """("v1" | "v2", [this process's cpu cgroup directory, its parent, ... up to the mount]).

    /proc/self/cgroup says which hierarchy holds the cpu controller for this process: a
    v1 line ``N:cpu,cpuacct:/path`` if the cpu controller is on a v1 hierarchy (the hybrid
    layout too), otherwise the v2 line ``0::/path``.  /proc/self/mountinfo says where that
    hierarchy is mounted and which of its cgroups the mount shows (in a container without
    a cgroup namespace, the mount's root is the container's cgroup, not ``/``).
    """
    text = _read(_under(root, "/proc/self/cgroup"))
    if not text:
        return None
    v1 = v2 = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, controllers, path = parts
        if hid == "0" and controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    version, path = ("v1", v1) if v1 is not None else ("v2", v2)
    if path is None:
        return None
    mount_root, mount_point = "/", None
    for line in (_read(_under(root, "/proc/self/mountinfo")) or "").splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        fstype, _src, opts = line.split(" - ", 1)[1].split()[:3]
        if (version == "v2" and fstype == "cgroup2") or \
                (version == "v1" and fstype == "cgroup" and "cpu" in opts.split(",")):
            mount_root, mount_point = fields[3], fields[4]
            break
    if mount_point is None:  # no mountinfo: the usual places
        mount_point = "/sys/fs/cgroup" if version == "v2" else "/sys/fs/cgroup/cpu"
    base = _under(root, mount_point)
    rel = os.path.relpath(path, mount_root) if mount_root != "/" else path.lstrip("/")
    if rel.startswith(".."):  # our cgroup is not below the mount's: only the mount is seen
        rel = "."
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    dirs = [os.path.join(base, *parts[:i]) for i in range(len(parts), -1, -1)]
    existing = [d for d in dirs if os.path.isdir(d)]
    return version, existing or [base]


def cgroup_cpu_quota(root: str = "/") -> float | None:
    """The CPU quota of this process's cgroup in CPUs (e.g. 1.5), or None for no quota.

    The tightest quota of the cgroup and its ancestors counts (a parent's limit binds its
    children).  ``root`` prefixes every path read (``/proc/self/...``, the mount points),
    so tests can point it at a fake tree.
    """
    found = _cgroup_dirs(str(root))
    if found is None:
        return None
    version, dirs = found
    quotas = []
    for d in dirs:
        if version == "v2":  # "max 100000" (no quota) or "150000 100000" (1.5 CPUs)
            fields = (_read(os.path.join(d, "cpu.max")) or "max").split() + ["100000"]
            quota, period = fields[0], fields[1]
        else:  # cfs_quota_us is -1 without a quota
            quota = _read(os.path.join(d, "cpu.cfs_quota_us")) or "-1"
            period = _read(os.path.join(d, "cpu.cfs_period_us")) or "100000"
        try:
            q, p = int(quota), int(period)
        except ValueError:  # "max", or a file we cannot make sense of: no quota here
            continue
        if q > 0 and p > 0:
            quotas.append(q / p)
    return min(quotas) if quotas else None


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def usable_cpus(root: str = "/") -> int:
    """CPUs this process may use: its affinity, capped by its cgroup quota (rounded up); >= 1."""
    n = _affinity()
    quota = cgroup_cpu_quota(root)
    if quota is not None:
        n = min(n, math.ceil(quota))
    return max(1, n)


def cpu_info(root: str = "/") -> dict:
    """All the CPU counts, for run metadata: the host's, the affinity's, the quota, usable."""
    return {"cpu_count": os.cpu_count(), "cpu_affinity": _affinity(),
            "cpu_quota": cgroup_cpu_quota(root), "usable_cpus": usable_cpus(root)}

# Spins, and checks every ~million iterations that its parent is still there.
_HOG_CODE = (
    "import os\n"
    "p = os.getppid()\n"
    "while os.getppid() == p:\n"
    "    for _ in range(1_000_000):\n"
    "        pass\n"
)


class CpuHogs:
    """``n`` busy-looping processes while the ``with`` block runs (default: 2 per usable CPU)."""

    def __init__(self, n: int | None = None):
        if n is None:
            n = 2 * usable_cpus()
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
    """A named background load: ``hogs`` CPU hogs (None = 2 per usable CPU) and optional stalls."""

    name: str
    hogs: int | None = 0
    stall_period_s: float = 0.0
    stall_s: float = 0.0
    description: str = ""

    @property
    def n_hogs(self) -> int:
        return 2 * usable_cpus() if self.hogs is None else self.hogs

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
    "hogs": Load("hogs", None, description="2 CPU hogs per usable CPU"),
    "stalls": Load("stalls", 0, 0.2, 0.06, description="postmaster frozen 60 ms of every 200 ms"),
    "busy": Load("busy", None, 0.2, 0.06,
                 description="2 CPU hogs per usable CPU + postmaster frozen 60 ms of every 200 ms"),
}


def get_load(load) -> Load:
    """A Load from a name in LOADS (or a Load, returned as is)."""
    if isinstance(load, Load):
        return load
    try:
        return LOADS[load]
    except KeyError:
        raise ValueError(f"unknown load {load!r}; choose one of {', '.join(LOADS)}") from None
