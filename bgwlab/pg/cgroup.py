"""Genuine fork failures: put a process in a pids cgroup at its limit.

::

    with pids_limit(postmaster_pid) as cg:     # root; cgroup v1 `pids` or cgroup v2
        ...                                    # every fork() of that process: EAGAIN
    # the process is back in its own cgroup and the cgroup is removed, whatever happened

The kernel's pids controller counts the tasks in a cgroup; ``pids.max`` equal to the
number the process already has (its threads) makes its next ``fork()`` fail with EAGAIN
-- a real resource limit, not an injected error.  Only the given process moves: children
it already has stay where they were (cgroup v1 moves one thread group, v2 one process).

Cleanup always runs (the process goes back, the cgroup is removed), also on
KeyboardInterrupt.  Cgroups are named ``bgwlab-<creator pid>-<random>``; one left by a
killed run is removed by :func:`remove_stale` (those whose creator is gone).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

from ..errors import BgwError

__all__ = ["pids_limit", "PidsLimit", "cgroup_available", "remove_stale", "PREFIX"]

PREFIX = "bgwlab-"
V1_ROOT = Path("/sys/fs/cgroup/pids")
V2_ROOT = Path("/sys/fs/cgroup")


def _mode() -> tuple[str, Path] | None:
    if (V1_ROOT / "cgroup.procs").exists():
        return "v1", V1_ROOT
    ctrl = V2_ROOT / "cgroup.controllers"
    if ctrl.exists() and "pids" in ctrl.read_text().split():
        return "v2", V2_ROOT
    return None


def cgroup_available() -> tuple[bool, str]:
    """(True, "") if this process can make a pids cgroup here; else (False, why)."""
    mode = _mode()
    if mode is None:
        return False, "no pids cgroup controller (cgroup v1 /sys/fs/cgroup/pids or v2 with pids)"
    if os.geteuid() != 0:
        return False, "making a pids cgroup needs root"
    if not os.access(mode[1], os.W_OK):
        return False, f"{mode[1]} is not writable (a read-only cgroup mount?)"
    return _probe(*mode)


_probed: dict = {}


def _probe(mode: str, root: Path) -> tuple[bool, str]:
    """Make and remove an empty child cgroup: does it get a ``pids.max``?  (In a cgroup v2
    namespace whose root holds processes, the pids controller cannot be delegated.)"""
    if mode in _probed:
        return _probed[mode]
    child = root / f"{PREFIX}{os.getpid()}-probe"
    try:
        if mode == "v2":
            with contextlib.suppress(OSError):
                (root / "cgroup.subtree_control").write_text("+pids")
        child.mkdir()
        ok = (child / "pids.max").exists()
        result = (True, "") if ok else (False, f"a child of {root} gets no pids.max (the pids "
                                               "controller is not delegated here)")
    except OSError as e:
        result = (False, f"cannot make a cgroup under {root}: {e}")
    finally:
        with contextlib.suppress(OSError):
            child.rmdir()
    _probed[mode] = result
    return result


def _current_cgroup(pid: int, mode: str) -> str:
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if mode == "v1" and "pids" in controllers.split(","):
                return path
            if mode == "v2" and controllers == "":
                return path
    return "/"


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


class PidsLimit:
    """A pids cgroup holding `pid` with ``pids.max`` = its current task count (+ `slack`)."""

    def __init__(self, pid: int, slack: int = 0):
        ok, why = cgroup_available()
        if not ok:
            raise BgwError(f"cannot make a genuine fork failure here: {why}")
        self.pid = pid
        self.slack = slack
        self.mode, self.root = _mode()
        remove_stale()
        self.path = self.root / f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.origin = self.root / _current_cgroup(pid, self.mode).lstrip("/")
        self.entered = False

    def __enter__(self) -> PidsLimit:
        self.path.mkdir()
        try:
            if self.mode == "v2":
                # v2: the controller must be enabled for the parent's children
                with contextlib.suppress(OSError):
                    (self.root / "cgroup.subtree_control").write_text("+pids")
            (self.path / "pids.max").write_text(str(_threads(self.pid) + self.slack))
            (self.path / "cgroup.procs").write_text(str(self.pid))
            self.entered = True
        except BaseException:
            self.close()
            raise
        return self

    @property
    def current(self) -> int:
        return int((self.path / "pids.current").read_text())

    @property
    def events(self) -> dict:
        """``pids.events``: ``max`` counts the forks the limit refused."""
        try:
            text = (self.path / "pids.events").read_text()
        except OSError:
            return {}
        return {k: int(v) for k, v in (line.split() for line in text.splitlines() if line)}

    def members(self) -> list[int]:
        try:
            return [int(x) for x in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def close(self) -> None:
        """Move every member back to where `pid` came from and remove the cgroup."""
        for member in self.members():
            for dest in (self.origin, self.root):
                try:
                    (dest / "cgroup.procs").write_text(str(member))
                    break
                except OSError:
                    continue
        with contextlib.suppress(FileNotFoundError):
            self.path.rmdir()

    def __exit__(self, *exc) -> None:
        self.close()


def pids_limit(pid: int, slack: int = 0) -> PidsLimit:
    """Context manager: `pid`'s next fork fails with EAGAIN until the block ends."""
    return PidsLimit(pid, slack)


def _creator_alive(path: Path) -> bool:
    try:
        creator = int(path.name[len(PREFIX):].split("-", 1)[0])
    except ValueError:
        return False
    return os.path.exists(f"/proc/{creator}")


def remove_stale() -> list[str]:
    """Remove ``bgwlab-<pid>-*`` pids cgroups whose creating process is gone (killed runs);
    their members go back to the root cgroup."""
    mode = _mode()
    removed = []
    if mode is None:
        return removed
    for p in mode[1].glob(f"{PREFIX}*"):
        if _creator_alive(p):
            continue
        try:
            members = (p / "cgroup.procs").read_text().split()
            for m in members:
                (mode[1] / "cgroup.procs").write_text(m)
            p.rmdir()
            removed.append(str(p))
        except OSError:
            pass
    return removed


def ours(pid: int | None = None) -> list[str]:
    """The pids cgroups that process `pid` (default: this one) made and that still exist
    (tests assert none is left)."""
    mode = _mode()
    pid = os.getpid() if pid is None else pid
    return [] if mode is None else [str(p) for p in mode[1].glob(f"{PREFIX}{pid}-*")]
