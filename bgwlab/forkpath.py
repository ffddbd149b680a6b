"""The postmaster's fork path: the Python reference, and the same steps in C.

A start is *fork, publish the pid, signal the registrant* (PostgreSQL's
``do_start_bgworker``: ``fork_process()``, then ``ReportBackgroundWorkerPID`` writes
``slot->pid`` and signals ``bgw_notify_pid``).  Everything the postmaster runs between
``fork()`` returning and that signal is paid while the registrant waits -- and after
``fork()`` it is dearer than it looks: the parent shares every page with the child, so
the first write to each (a frame, a reference count, a new ``int``) is a copy-on-write
fault.  CPython's ``os.fork()`` also runs the interpreter's after-fork work in the parent
(``PyOS_AfterFork_Parent``: the import lock, the ``after_in_parent`` hooks) before the
caller sees the pid.

Two siblings do the same steps in the same order:

* ``"python"`` -- the reference, the one to read: ``Postmaster.start_worker`` in
  ``bgwlab/postmaster.py`` (``os.fork()``; ``pids[word] = pid``;
  ``pidfd_send_signal``; ``sched_yield``).
* ``"c"`` -- ``bgwlab/_forkpath.c``'s ``fork_publish_notify``: ``fork()``, the pid
  stored, the signal sent and the CPU yielded before the parent runs any Python, then the
  interpreter's after-fork hooks.  The child does what ``os.fork()``'s child does.

``Cluster.start(fork_path="auto")`` (the default) uses C where it builds: the first start
on a machine compiles ``_forkpath.c`` with the C compiler (``$CC``, else ``cc``) against
this Python's headers into a cache (``$BGWLAB_CACHE_DIR``, else
``$XDG_CACHE_HOME/bgwlab``, else ``~/.cache/bgwlab``), once per source and Python; without
a compiler or headers it says why and uses Python.  ``"c"`` refuses to start without it
(``ForkPathUnavailable``); ``"python"`` never builds.  The cluster's ``fork_path`` and
the ``postmaster_started`` event say which path runs.

Measured (``benchmarks/ab.py --fork-path-ab``: the same engine, A's postmasters on the
Python path, B's on C, interleaved; three runs of 1,500 a side, B / A): fork() called ->
registrant signalled 0.88-0.89x (about 20-28 us less); start 0.93-0.96x median, 0.87-0.96x
p99; running, death, early crash and genuine fork failure within -2..+6 %, as their paths
did not change.  In PostgreSQL the
whole postmaster is C (``do_start_bgworker``), so there is no such choice: this is where
bgwlab differs, said so in the README's differences table.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .errors import ForkPathUnavailable

FORK_PATHS = ("auto", "c", "python")
MODULE = "_bgwlab_forkpath"  # PyInit__bgwlab_forkpath in _forkpath.c
SOURCE = Path(__file__).with_name("_forkpath.c")


def check_fork_path(fork_path) -> None:
    """ValueError unless `fork_path` is one of FORK_PATHS.  Starter only, before anything starts."""
    if fork_path not in FORK_PATHS:
        raise ValueError(f"fork_path must be one of {', '.join(map(repr, FORK_PATHS))}, not {fork_path!r}")


def cache_dir() -> Path:
    """Where built fork paths are kept (created on first build)."""
    if os.environ.get("BGWLAB_CACHE_DIR"):
        return Path(os.environ["BGWLAB_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bgwlab"


def _compiler() -> list[str]:
    import shlex

    cc = os.environ.get("CC") or "cc"
    return shlex.split(cc)


def build_dir() -> Path:
    """The directory that holds (or will hold) the module built from this source for this Python."""
    import hashlib
    import sysconfig

    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    key = hashlib.sha256(SOURCE.read_bytes() + suffix.encode() + sys.version.encode()
                         + " ".join(_compiler()).encode()).hexdigest()[:16]
    return cache_dir() / f"forkpath-{key}"


def build() -> Path:
    """The directory of the built module, compiling it if needed.  Starter only.

    Raises ForkPathUnavailable (with the reason) when it cannot be built here.  Safe
    against concurrent starters: each compiles to its own file and renames it into place.
    (Its imports are here: a starter that uses the Python path never loads them.)
    """
    import shutil
    import subprocess
    import sysconfig
    import tempfile

    if not sys.platform.startswith("linux"):
        raise ForkPathUnavailable(f"the C fork path needs Linux (this is {sys.platform})")
    d = build_dir()
    target = d / (MODULE + (sysconfig.get_config_var("EXT_SUFFIX") or ".so"))
    if target.exists():
        return d
    include = sysconfig.get_paths()["include"]
    if not os.path.exists(os.path.join(include, "Python.h")):
        raise ForkPathUnavailable(f"no Python.h in {include} (Debian: apt install python3-dev)")
    cc = _compiler()
    if shutil.which(cc[0]) is None:
        raise ForkPathUnavailable(f"no C compiler ({cc[0]!r} not found; set CC or install gcc)")
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".build-", suffix=".so")
    os.close(fd)
    try:
        r = subprocess.run([*cc, "-O2", "-Wall", "-shared", "-fPIC", f"-I{include}", str(SOURCE), "-o", tmp],
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise ForkPathUnavailable(f"{' '.join(cc)} failed on {SOURCE.name}: "
                                      f"{(r.stderr or r.stdout).strip()[-500:]}")
        os.replace(tmp, target)
    except OSError as e:
        raise ForkPathUnavailable(f"could not build {SOURCE.name}: {e}") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return d

