"""Cluster: start, join and stop a postmaster with its shared memory.

``Cluster.start()`` runs the postmaster (``bgwlab.postmaster.main``) in a separate
``python -S -u`` process (never a fork of the caller: a Jupyter kernel has a dozen threads)
and returns once the postmaster has created the segment and is ready to serve.
"""

from __future__ import annotations

import atexit
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import weakref
from pathlib import Path

from . import shmem
from .backend import Backend, read_pidfile
from .errors import BgwError
from .events import Event, read_events, write_jsonl
from .procinfo import start_ticks

_PACKAGE_PARENT = str(Path(__file__).resolve().parent.parent)
# What the postmaster process runs: the same as ``python -S -u -m bgwlab.postmaster DIR FD``,
# without -m's runpy, whose imports (importlib.util, contextlib, functools, collections...)
# would stay in the postmaster's heap -- ~0.85 MB that every fork() copies (see "The image"
# in postmaster.py).
_POSTMASTER_MAIN = "import sys; from bgwlab.postmaster import main; sys.exit(main(sys.argv))"


def _bytecode_to_private_cache(env: dict) -> None:
    """Let the postmaster load bgwlab from bytecode even where PYTHONDONTWRITEBYTECODE is set.

    Without bytecode the postmaster compiles every module it imports at each start, and
    the compiler's freed memory stays in its heap (5.0 MB private instead of 3.9 MB):
    memory that every fork() copies -- and that a fork() refused by a pids cgroup copies
    and tears down.  Measured (benchmarks/ab.py --bytecode-ab, 1,500 starts a side):
    start 0.88-0.93x, genuine fork failure 0.85-0.91x with bytecode.  The user's wish not
    to litter the source tree is kept: the bytecode goes to a private cache
    (PYTHONPYCACHEPREFIX, ~/.cache/bgwlab/pycache), never next to the sources.  An
    explicit PYTHONPYCACHEPREFIX is left alone.
    """
    if not env.get("PYTHONDONTWRITEBYTECODE") or env.get("PYTHONPYCACHEPREFIX"):
        return
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    cache = os.path.join(base, "bgwlab", "pycache")
    try:
        os.makedirs(cache, mode=0o700, exist_ok=True)
    except OSError:
        return  # nowhere to cache: compile from source, as before
    env.pop("PYTHONDONTWRITEBYTECODE")
    env["PYTHONPYCACHEPREFIX"] = cache
_STATE_FILES = ("shmem", "postmaster.pid", "registration.lock")
_live_clusters: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _stop_clusters_at_exit() -> None:
    """A script that ends with a cluster still running stops it cleanly.

    SIGUSR1 is ignored first: the shutdown notifications must not kill a process that
    is already exiting (Python restores the default action -- terminate -- late in
    interpreter shutdown, and ``__del__`` would run after that).
    """
    if not _live_clusters:
        return
    try:
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    except ValueError:
        pass  # not the main thread
    for c in list(_live_clusters):
        try:
            c.stop(timeout=5)
        except Exception:
            pass


def _prepare_directory(directory) -> tuple[Path, bool]:
    if directory is None:
        return Path(tempfile.mkdtemp(prefix="bgwlab-")), True
    d = Path(directory).absolute()
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = d.stat()
    if st.st_uid != os.geteuid():
        raise BgwError(f"{d} belongs to another user; choose a directory of your own")
    os.chmod(d, 0o700)
    if (d / "postmaster.pid").exists():
        try:
            pid, start = read_pidfile(d)
        except (OSError, ValueError):
            pid, start = 0, -1
        if pid > 0 and start_ticks(pid) == start:
            raise BgwError(f"a cluster is already running in {d} (postmaster pid {pid}); "
                           "join it with bgwlab.attach(directory), or stop it first")
    for name in _STATE_FILES:  # leftovers of a cluster whose postmaster is gone
        try:
            os.unlink(d / name)
        except FileNotFoundError:
            pass
    return d, False


def _ask_for_slice(pid: int, slice_ns: int) -> int:
    """Give the postmaster `pid` a short scheduler slice, its children the default.  Starter
    only.  Returns the slice the kernel reports (0: none set).  Best effort: a kernel or a
    policy that does not allow it leaves the default, and the cluster works as before."""
    from . import sched

    try:
        if not sched.supported() or os.sched_getscheduler(pid) != os.SCHED_OTHER:
            return 0
        return sched.set_slice(pid, slice_ns, reset_on_fork=True)
    except OSError:
        return 0


class Cluster:
    """A running postmaster, its directory and shared memory.  Use ``Cluster.start()``."""

    def __init__(self, directory: Path, proc: subprocess.Popen, owns_directory: bool,
                 max_workers: int, max_backends: int):
        self.directory = directory
        self._proc = proc
        self._owns_directory = owns_directory
        self.max_workers = max_workers
        self.max_backends = max_backends
        self.postmaster_pid = proc.pid
        self._backends: list[Backend] = []
        self._final_events: list[Event] | None = None
        self._log_seg: shmem.Segment | None = None  # mapped on the first events()
        self._stopped = False
        self.keep_directory = False  # True: stop() leaves the directory (and its event log) behind
        self.scheduler_slice_ns = 0  # the postmaster's slice as the kernel reports it (0: default)
        self.fork_path = "python"  # "c" or "python": the postmaster's fork path (bgwlab/forkpath.py)
        self.fork_path_note = ""  # why not "c", when fork_path="auto" could not use it

    @classmethod
    def start(cls, max_workers: int = 8, directory=None, *, max_backends: int = 64,
              restart_after_crash: bool = True, log_events: bool = True,
              preload=("bgwlab.examples",), pdeathsig: bool = False,
              startup_timeout: float = 30.0, scheduler_slice_us: int | None = 100,
              fork_path: str = "auto") -> Cluster:
        """Start a postmaster with `max_workers` slots in `directory` (a new temp dir if None).

        Entry points resolve against this process's sys.path and working directory.
        `pdeathsig=True` arms ``PR_SET_PDEATHSIG(SIGKILL)`` in every worker: a bgwlab-only
        safety net that kills workers the moment the postmaster dies.  Off by default, as
        PostgreSQL has none: a worker learns of the death at its next wait and exits, and
        one that never waits lives on (``stop()`` ends such orphans).

        `scheduler_slice_us`: the postmaster asks the kernel for this scheduler slice
        (Linux >= 6.12, EEVDF; ``bgwlab/sched.py`` says why), so that a request's signal
        runs it at once instead of after a busy task's slice; its workers start with the
        default slice.  bgwlab-only (PostgreSQL's postmaster does not), ignored by older
        kernels, never applied to a starter whose scheduling policy is not SCHED_OTHER.
        None: the default slice.  ``cluster.scheduler_slice_ns`` reports what the kernel
        set (0: the default).

        `fork_path`: how the postmaster forks, publishes the pid and signals the registrant
        (``bgwlab/forkpath.py``).  ``"auto"``: in C (``bgwlab/_forkpath.c``, compiled on the
        first start into a cache) where a C compiler and Python's headers exist, else in
        Python, saying why in ``cluster.fork_path_note``; ``"c"``: in C or
        ``ForkPathUnavailable`` before anything starts; ``"python"``: the Python reference.
        ``cluster.fork_path`` and the ``postmaster_started`` event say which one runs.
        bgwlab-only: PostgreSQL's postmaster is C throughout.
        """
        from .forkpath import ForkPathUnavailable, build, check_fork_path
        from .sched import slice_us_to_ns

        slice_us_to_ns("scheduler_slice_us", scheduler_slice_us)  # (ValueError before anything starts)
        check_fork_path(fork_path)
        if not isinstance(max_workers, int) or not 1 <= max_workers <= 65_536:
            raise ValueError("max_workers must be an int in 1..65536")
        if not isinstance(max_backends, int) or not 1 <= max_backends <= 4096:
            raise ValueError("max_backends must be an int in 1..4096")
        d, owns = _prepare_directory(directory)  # (a directory not ours is refused first)
        fork_c, fork_path_note = "", ""
        if fork_path != "python":
            try:
                fork_c = str(build())  # (once per machine and source: then cached)
            except (ForkPathUnavailable, ImportError, OSError) as e:
                if fork_path == "c":
                    if owns:
                        shutil.rmtree(d, ignore_errors=True)
                    if isinstance(e, ForkPathUnavailable):
                        raise
                    raise ForkPathUnavailable(f"could not build the C fork path: {e!r}") from e
                fork_path_note = str(e) if isinstance(e, ForkPathUnavailable) else repr(e)
        me = os.getpid()
        conf = [f"max_workers={max_workers}", f"max_backends={max_backends}",
                f"restart_after_crash={int(restart_after_crash)}", f"log_events={int(log_events)}",
                f"pdeathsig={int(pdeathsig)}",
                f"starter_pid={me}", f"starter_start={start_ticks(me)}",
                "preload=" + ",".join(preload), f"fork_path={fork_path}"]
        if fork_c and "\n" not in fork_c:
            conf.append(f"fork_c={fork_c}")
        if fork_path_note:
            conf.append("fork_path_note=" + " ".join(fork_path_note.split()))  # (one line)
        paths = [_PACKAGE_PARENT] + [os.path.abspath(p) if p else os.getcwd() for p in sys.path]
        seen = set()
        for p in paths:
            if p not in seen and "\n" not in p:
                seen.add(p)
                conf.append(f"path={p}")
        (d / "postmaster.conf").write_text("\n".join(conf) + "\n")
        r, w = os.pipe2(os.O_CLOEXEC)
        env = dict(os.environ)
        env["PYTHONPATH"] = _PACKAGE_PARENT
        env.pop("PYTHONSTARTUP", None)
        _bytecode_to_private_cache(env)
        log = open(d / "postmaster.log", "ab")
        try:
            proc = subprocess.Popen(
                [sys.executable, "-S", "-u", "-c", _POSTMASTER_MAIN, str(d), str(w)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, pass_fds=(w,),
                cwd=os.getcwd(), env=env, start_new_session=True)
        finally:
            log.close()
            os.close(w)
        try:
            ready = select.select([r], [], [], startup_timeout)[0]
            got = os.read(r, 2) if ready else b""
            ok = got[:1] == b"R"
        finally:
            os.close(r)
        if not ok:
            proc.kill()
            proc.wait()
            tail = (d / "postmaster.log").read_text(errors="replace")[-2000:]
            if owns:
                shutil.rmtree(d, ignore_errors=True)
            raise BgwError(f"the postmaster did not start; its log ends with:\n{tail}")
        cluster = cls(d, proc, owns, max_workers, max_backends)
        cluster.fork_path = "c" if got[1:2] == b"c" else "python"
        if cluster.fork_path == "python" and fork_path != "python" and not fork_path_note:
            fork_path_note = "the built C fork path did not load (postmaster.log says why)"
        cluster.fork_path_note = fork_path_note
        _live_clusters.add(cluster)
        if scheduler_slice_us is not None:
            cluster.scheduler_slice_ns = _ask_for_slice(proc.pid, scheduler_slice_us * 1000)
        return cluster

    # -- joining ------------------------------------------------------------------------------
    def connect(self, *, log_events: bool = True, wait_slice_us: int | None = 100) -> Backend:
        """Attach this process as a backend (a registrant) of the cluster.  `wait_slice_us`:
        see Backend (a thread that sleeps in one of its waits holds a short scheduler slice
        until the backend detaches; None: never)."""
        if self._stopped:
            raise BgwError("this cluster has been stopped; start a new one with Cluster.start()")
        b = Backend(self.directory, log_events=log_events, wait_slice_us=wait_slice_us)
        self._backends.append(b)
        return b

    # -- observing ------------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self._proc.poll() is None

    def state(self) -> str:
        """The postmaster's state as it last wrote it: running, crash_recovery, shutdown, stopped."""
        if not self.alive:
            return "dead" if not self._stopped else "stopped"
        try:
            seg = shmem.Segment(str(self.directory / "shmem"))
        except (OSError, ValueError):
            return "unknown"
        try:
            return shmem.PM_STATE_NAMES[seg.state()]
        finally:
            seg.close()

    @property
    def events_path(self) -> Path:
        return self.directory / "events.jsonl"

    def events(self) -> list[Event]:
        """Every event recorded so far by the postmaster, workers and backends, sorted by time."""
        if self._final_events is not None:
            return list(self._final_events)
        self._wait_log_complete()
        return read_events(self.events_path)

    def _wait_log_complete(self) -> None:
        """The postmaster signals a registrant before it logs what it did: wait (at most 1 s)
        until it owes the log no line of a pass, so that what the caller has seen happen --
        a STARTED, a STOPPED -- is in what it reads next (shmem.Segment.set_log_owed)."""
        seg = self._log_seg
        if seg is None:
            try:
                seg = self._log_seg = shmem.Segment(str(self.directory / "shmem"))
            except (OSError, ValueError):
                return  # not there (yet, or any more): nothing to wait for
        seg.wait_log_complete(alive=self._postmaster_running)

    def _postmaster_running(self) -> bool:
        return self._proc.poll() is None

    def export_events(self, path) -> Path:
        """Write the events as JSON Lines to `path`."""
        write_jsonl(self.events(), path)
        return Path(path)

    def worker_pids(self) -> list[int]:
        """Pids of the postmaster's live children (for teaching and tests)."""
        try:
            with open(f"/proc/{self.postmaster_pid}/task/{self.postmaster_pid}/children") as f:
                return [int(p) for p in f.read().split()]
        except OSError:
            return []

    # -- faults -----------------------------------------------------------------------------------
    def kill_postmaster(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the postmaster (SIGKILL: the 'postmaster death' scenario)."""
        if self.alive:
            os.kill(self.postmaster_pid, sig)

    # -- stopping -------------------------------------------------------------------------------------
    def stop(self, timeout: float = 15.0) -> None:
        """Shut down: SIGTERM to the postmaster, which terminates and reaps every worker.

        Then remove the segment.  Idempotent.  Events stay readable with ``events()``.
        """
        if self._stopped:
            return
        self._stopped = True
        _live_clusters.discard(self)
        proc = self._proc
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._end_orphans()
        for b in self._backends:
            b.detach()
        self._backends.clear()
        self._final_events = read_events(self.events_path)
        if self._log_seg is not None:
            self._log_seg.close()
            self._log_seg = None
        if self._owns_directory and not self.keep_directory:
            shutil.rmtree(self.directory, ignore_errors=True)
        else:
            for name in _STATE_FILES:
                try:
                    os.unlink(self.directory / name)
                except FileNotFoundError:
                    pass

    close = stop

    def _end_orphans(self) -> list[int]:
        """Once the postmaster is gone: end the workers it left behind.  Returns their pids.

        A postmaster that shut down has reaped every worker; one that was killed leaves
        orphans that run until their next wait (or for ever, if they never wait).  They are
        found by session: the postmaster led its own (``start_new_session``), its workers
        stay in it, and Linux never reuses a session's id while a member lives.
        """
        from .parallel.dsm import remove_orphans
        from .procinfo import kill_session

        ended = kill_session(self.postmaster_pid, signal.SIGKILL)
        remove_orphans()  # dynamic shared memory whose leader is gone (dsm_postmaster_shutdown)
        return ended

    def keep(self) -> Path:
        """Keep the directory when the cluster stops -- the evidence of an unexpected outcome
        (the event log, ``postmaster.log``).  Returns its path."""
        self.keep_directory = True
        return self.directory

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __del__(self):
        try:
            if not self._stopped:
                self.stop(timeout=5)
        except Exception:
            pass

    def __repr__(self):
        return (f"<Cluster {self.directory} postmaster={self.postmaster_pid} "
                f"max_workers={self.max_workers} {'alive' if self.alive else 'down'}>")


def attach(directory, *, log_events: bool = True, wait_slice_us: int | None = 100) -> Backend:
    """Join a running cluster from another process: returns a Backend."""
    return Backend(directory, log_events=log_events, wait_slice_us=wait_slice_us)

