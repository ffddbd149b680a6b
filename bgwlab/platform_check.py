"""Can this system run bgwlab's engine?  One cheap, cached check, and what to do if not.

The engine -- clusters, backends, latches, the postmaster and its workers -- is built on
Linux system calls: ``pidfd_open`` (kernel 5.3), ``eventfd``, ``pipe2``, ``prctl``,
``/proc``.  ``import bgwlab`` works everywhere, and so do the pure-Python parts
(``WorkerSpec``, ``Event``, ``read_events``, the errors; ``Fault`` too, except on Windows,
whose ``signal`` module lacks SIGSTOP ...).  The first use of
the engine on a system that cannot run it raises ``bgwlab.UnsupportedPlatform``, before
anything Linux-only is imported, with a message that says what to do.

Two ways in:

- ``bgwlab.Cluster``, ``bgwlab.attach``, ``bgwlab.Backend`` ... (``bgwlab/__init__.py``
  calls ``check()`` before importing their modules);
- a direct import of an engine module (``from bgwlab.cluster import Cluster``,
  ``python -m bgwlab.postmaster``, the ``bgwlab`` command): where the import-time gate
  of ``__init__`` fails (not Linux, a kernel older than 5.3, no ``os.pidfd_open``),
  ``install_guard()`` puts a finder on ``sys.meta_path`` that refuses ``ENGINE_MODULES``.

Imports only ``os`` and ``sys``; on a good Linux nothing here runs until the engine is
used (``python -m bgwlab.platform_check`` says whether it can run here).
The Makefile prints the same words for macOS and Windows (``tests/test_platform.py``
checks that they stay the same).
"""

import os
import sys

# In __init__: its import-time gate uses them too.
from . import _MIN_KERNEL as MIN_KERNEL
from . import _kernel_version as kernel_version

# Modules that use Linux-only interfaces (the rest of the engine imports one of them).
ENGINE_MODULES = frozenset({
    "bgwlab.backend", "bgwlab.cluster", "bgwlab.latch", "bgwlab.postmaster",
    "bgwlab.procinfo", "bgwlab.worker",
})

_HEAD = "bgwlab's engine (Cluster, the postmaster) needs Linux, kernel >= 5.3 (for pidfds)"
_TAIL = "(`import bgwlab`, WorkerSpec, Event and read_events do work here.)"

MACOS = f"""\
{_HEAD};
this is macOS, which has no pidfd_open, eventfd or pipe2.
What to do on macOS: open the project in its devcontainer (.devcontainer/, with Docker
Desktop, OrbStack or Colima; VS Code: "Dev Containers: Reopen in Container"), or in a
Linux VM (UTM, Multipass, Lima), and run `make lab` there.
{_TAIL}"""

WINDOWS = f"""\
{_HEAD};
this is Windows, which has no fork, pidfd_open, eventfd or fcntl.
What to do on Windows: use WSL 2 (PowerShell: `wsl --install`, then open Ubuntu), clone
the project inside it (e.g. ~/bgwlab, not under /mnt/c) and run `make lab` there; or open
it in its devcontainer (.devcontainer/) with Docker Desktop.
{_TAIL}"""

OTHER = f"""\
{_HEAD};
this is {{platform}}.
What to do: use a Linux machine or VM, or the project's devcontainer (.devcontainer/),
and run `make lab` there.
{_TAIL}"""

OLD_KERNEL = f"""\
{_HEAD};
this kernel is {{release}}.
What to do: use a machine or VM with a newer kernel (Ubuntu 20.04 or later, Debian 11 or
later, RHEL 9 or later). A container does not help: it runs on this same kernel.
{_TAIL}"""

WSL1 = f"""\
{_HEAD};
this is WSL 1 (kernel {{release}}), which runs no real Linux kernel.
What to do: convert the distribution to WSL 2, in PowerShell: `wsl -l -v` lists them,
`wsl --set-version Ubuntu 2` converts one (use its name); then run `make lab` there.
{_TAIL}"""

OLD_WSL2 = f"""\
{_HEAD};
this is WSL 2 with an old kernel, {{release}}.
What to do: update it, in PowerShell: `wsl --update`, then `wsl --shutdown`, and open the
distribution again.
{_TAIL}"""

OLD_PYTHON = f"""\
{_HEAD}.
This kernel ({{release}}) is recent enough, but this Python has no {{missing}}:
{{python}} was built against older kernel headers.
What to do: make the venv with a Python 3.11+ from a current distribution, e.g.
`make clean setup PYTHON=/usr/bin/python3`, or use the devcontainer (.devcontainer/).
{_TAIL}"""

SECCOMP = f"""\
{_HEAD}.
This kernel ({{release}}) is recent enough, but pidfd_open fails with {{errname}}: most
likely a container's seccomp filter forbids it (Docker before 20.10, old containerd/runc).
What to do: update Docker (or the container runtime), or start the container with
`--security-opt seccomp=unconfined`.
{_TAIL}"""


def problem(platform: str | None = None, release: str | None = None, osmod=os,
            probe: bool = False) -> str | None:
    """Why the engine cannot run here, or None if it can.

    Every input can be given, to ask about another system: `platform` as ``sys.platform``,
    `release` as ``os.uname().release``, `osmod` the ``os`` module to look into.  `probe`
    also calls ``pidfd_open`` once, which finds a seccomp filter that forbids it.
    """
    if platform is None:
        platform = sys.platform
    if platform.startswith(("win", "cygwin", "msys")):
        return WINDOWS
    if platform == "darwin":
        return MACOS
    if not platform.startswith("linux"):
        return OTHER.format(platform=platform)
    if release is None:
        release = osmod.uname().release
    if release.endswith("Microsoft"):  # WSL 1 says e.g. 4.4.0-19041-Microsoft; WSL 2 is "-microsoft-standard-WSL2"
        return WSL1.format(release=release)
    version = kernel_version(release)
    if version is not None and version < MIN_KERNEL:
        return (OLD_WSL2 if "microsoft" in release.lower() else OLD_KERNEL).format(release=release)
    missing = [f"os.{n}" for n in ("pidfd_open", "eventfd", "pipe2") if not hasattr(osmod, n)]
    if missing:
        python = f"{sys.executable or 'python'} (Python {sys.version.split()[0]})"
        return OLD_PYTHON.format(release=release, python=python, missing=" or ".join(missing))
    if probe:
        try:
            osmod.close(osmod.pidfd_open(osmod.getpid()))
        except OSError as e:
            import errno
            if e.errno in (errno.ENOSYS, errno.EPERM, errno.EACCES):
                return SECCOMP.format(release=release, errname=errno.errorcode[e.errno])
    return None


_UNKNOWN = object()
_cached = _UNKNOWN


def cached_problem() -> str | None:
    """``problem(probe=True)`` for this system, computed once per process: the first call
    costs a uname() and a pidfd_open(), the next ones nothing."""
    global _cached
    if _cached is _UNKNOWN:
        _cached = problem(probe=True)
    return _cached


def supported() -> bool:
    """True if this system can run the engine."""
    return cached_problem() is None


def check() -> None:
    """Raise UnsupportedPlatform, saying what to do, if this system cannot run the engine."""
    msg = cached_problem()
    if msg is not None:
        _install_excepthook()
        from .errors import UnsupportedPlatform
        raise UnsupportedPlatform(msg)


class EngineGuard:
    """A ``sys.meta_path`` finder that refuses the engine's modules on an unsupported
    system, before they import anything Linux-only (``fcntl``, ``os.pipe2`` ...)."""

    @staticmethod
    def find_spec(fullname, path=None, target=None):
        if fullname in ENGINE_MODULES:
            check()
        return None


def install_guard() -> None:
    """Put ``EngineGuard`` first on ``sys.meta_path`` (once)."""
    if EngineGuard not in sys.meta_path:
        sys.meta_path.insert(0, EngineGuard)


def _install_excepthook() -> None:
    """Scripts, ``python -m bgwlab.postmaster`` and the ``bgwlab`` command: an uncaught
    UnsupportedPlatform prints its message alone, not a traceback through importlib."""
    previous = sys.excepthook
    if getattr(previous, "_bgwlab", False):
        return

    def hook(etype, value, tb):
        if etype.__name__ == "UnsupportedPlatform" and etype.__module__ == "bgwlab.errors":
            print(f"UnsupportedPlatform: {value}", file=sys.stderr)
        else:
            previous(etype, value, tb)

    hook._bgwlab = True
    sys.excepthook = hook


if __name__ == "__main__":  # python -m bgwlab.platform_check: say whether the engine can run here
    msg = cached_problem()
    print(msg or f"OK: the engine can run here (Linux {os.uname().release}).")
    sys.exit(1 if msg else 0)
