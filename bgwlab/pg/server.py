"""A throwaway PostgreSQL cluster: initdb into a private temp directory, start, always remove.

::

    from bgwlab.pg import Server
    with Server.start() as pg:                 # initdb + postgres, Unix socket only
        with pg.connect() as conn:
            print(conn.value("select version()"))
    # stopped and removed here -- also on error, on KeyboardInterrupt and at interpreter exit

* PostgreSQL 15 or later, found through ``$BGWLAB_PG_BINDIR``, ``pg_config --bindir`` or
  ``/usr/lib/postgresql/*/bin`` (the newest).  Without one, :class:`PgUnavailable` says how to
  install it (``scripts/system-deps.sh`` does, as root).
* The cluster lives in ``/tmp/bgwlab-pg-XXXX/`` (``data/``, the socket directory ``sock/``,
  ``server.log``).  No TCP port (``listen_addresses=''``), ``fsync=off``, trust for local
  connections, and a log with PostgreSQL's finest timestamps (``%m``: milliseconds) and the
  pid and backend type of every line.  ``autovacuum=off`` keeps the idle server idle.
* ``initdb`` refuses to run as root, so as root (CI, containers) the server runs as the
  unprivileged ``postgres`` user that Debian's package creates: ``initdb`` through
  ``runuser``, the postmaster as our own child with that user's ids (see ``_start``); the
  temp directory is handed to that user.
* The postmaster runs in its own session (a Ctrl-C in the terminal reaches us, not it); we
  stop it with a fast shutdown (SIGINT), then an immediate one (SIGQUIT), then SIGKILL to it
  and every child it left, and remove the directory.  A registry stops every server still
  running at interpreter exit (``atexit``).
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from ..errors import BgwError
from .wire import Connection, PgError, socket_path

__all__ = ["Server", "PgUnavailable", "find_bindir", "server_available", "INSTALL_HELP",
           "MIN_VERSION", "live_servers"]

MIN_VERSION = 15
SERVER_USER = "postgres"  # the unprivileged user Debian's postgresql package creates

INSTALL_HELP = (
    "bgwlab.pg needs a PostgreSQL server (15 or later) with its development files (PGXS), "
    "e.g. on Debian/Ubuntu as root: `bash scripts/system-deps.sh` (it installs the packages "
    "`postgresql` and `postgresql-server-dev-15`), or `apt-get install postgresql "
    "postgresql-server-dev-15`; elsewhere set BGWLAB_PG_BINDIR to a PostgreSQL bin directory "
    "that has pg_config, initdb and postgres.")


class PgUnavailable(BgwError):
    """No usable PostgreSQL server here.  The message says how to install one."""


def _version_of(bindir: Path) -> tuple[int, str] | None:
    try:
        out = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True,
                             text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"(\d+)(?:\.(\d+))?", out)
    if not m:
        return None
    return int(m.group(1)), m.group(0)


def _usable(bindir: Path) -> bool:
    return all((bindir / exe).is_file() for exe in ("postgres", "initdb", "pg_config"))


def find_bindir() -> Path:
    """The bin directory of the newest PostgreSQL >= 15 here, or :class:`PgUnavailable`."""
    candidates: list[Path] = []
    env = os.environ.get("BGWLAB_PG_BINDIR")
    if env:
        candidates.append(Path(env))
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                 timeout=30).stdout.strip()
            if out:
                candidates.append(Path(out))
        except (OSError, subprocess.SubprocessError):
            pass
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                    key=lambda p: [int(x) for x in re.findall(r"\d+", p)] or [0], reverse=True)
    candidates += [Path(p) for p in debian]
    seen = []
    for bindir in candidates:
        if bindir in seen or not _usable(bindir):
            seen.append(bindir)
            continue
        seen.append(bindir)
        v = _version_of(bindir)
        if v and v[0] >= MIN_VERSION:
            return bindir
    looked = ", ".join(map(str, seen)) or "nowhere (no pg_config on PATH, no /usr/lib/postgresql)"
    raise PgUnavailable(f"no PostgreSQL >= {MIN_VERSION} with postgres, initdb and pg_config "
                        f"found (looked in: {looked}). {INSTALL_HELP}")


def server_available() -> tuple[bool, str]:
    """(True, bindir) or (False, why and how to install)."""
    try:
        return True, str(find_bindir())
    except PgUnavailable as e:
        return False, str(e)


_live: set = set()
_live_lock = threading.Lock()


def live_servers() -> list:
    with _live_lock:
        return list(_live)


@atexit.register
def _stop_servers_at_exit() -> None:
    for s in live_servers():
        try:
            s.stop()
        except Exception:  # noqa: BLE001 -- at exit, stop the others anyway
            pass


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def children_of(pid: int) -> list[int]:
    """Live processes whose parent is `pid` (from /proc)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            if int(rest[1]) == pid and rest[0] not in ("Z", "X"):
                out.append(int(d))
        except (OSError, IndexError, ValueError):
            pass
    return out


class Server:
    """A running throwaway cluster.  Build it with :meth:`start`."""

    def __init__(self):
        self.bindir: Path | None = None
        self.base: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.postmaster_pid: int | None = None
        self.version = ""
        self.major = 0
        self.run_as: str | None = None
        self._log = None
        self._stopped = False
        self._lock = threading.Lock()

    # -- paths -----------------------------------------------------------------------------
    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base / "sock"

    @property
    def log_path(self) -> Path:
        return self.base / "server.log"

    @property
    def pg_config(self) -> Path:
        return self.bindir / "pg_config"

    # -- lifecycle -------------------------------------------------------------------------
    @classmethod
    def start(cls, *, max_worker_processes: int = 8, settings: dict | None = None,
              bindir=None, timeout: float = 60.0) -> Server:
        """initdb + start a server; stopped and removed by :meth:`stop` (or the ``with``)."""
        self = cls()
        self.bindir = Path(bindir) if bindir else find_bindir()
        v = _version_of(self.bindir)
        if not v or v[0] < MIN_VERSION:
            raise PgUnavailable(f"{self.bindir}/postgres is not PostgreSQL >= {MIN_VERSION}. "
                                f"{INSTALL_HELP}")
        self.major, self.version = v
        with _live_lock:
            _live.add(self)
        try:
            self._start(max_worker_processes, settings or {}, timeout)
        except BaseException:  # KeyboardInterrupt too: nothing may be left behind
            self.stop()
            raise
        return self

    def _as_server_user(self, argv: list[str]) -> list[str]:
        if not self.run_as:
            return argv
        runuser = shutil.which("runuser", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
        if runuser is None:
            raise PgUnavailable("running as root, but `runuser` (util-linux) is missing: it "
                                "runs initdb as the postgres user")
        return [runuser, "-u", self.run_as, "--"] + argv

    def _start(self, max_worker_processes: int, settings: dict, timeout: float) -> None:
        # /tmp keeps the probe's absolute path short (bgw_library_name holds 95 bytes).
        parent = "/tmp" if os.path.isdir("/tmp") else None
        self.base = Path(tempfile.mkdtemp(prefix="bgwlab-pg-", dir=parent))
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise PgUnavailable(f"running as root, but there is no `{SERVER_USER}` user to "
                                    f"run the server as (initdb refuses root). {INSTALL_HELP}"
                                    ) from None
            self.run_as = SERVER_USER
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
        os.chmod(self.base, 0o700)
        init = subprocess.run(
            self._as_server_user([str(self.bindir / "initdb"), "-D", str(self.data),
                                  "-U", "postgres", "--auth=trust", "--no-sync",
                                  "--encoding=UTF8", "--locale=C"]),
            capture_output=True, text=True, timeout=timeout, start_new_session=True,
            cwd=self.base)
        if init.returncode != 0:
            raise BgwError(f"initdb failed ({init.returncode}): {init.stderr.strip()[-2000:]}")
        os.makedirs(self.socket_dir, mode=0o700)
        if self.run_as:
            pw = pwd.getpwnam(self.run_as)
            os.chown(self.socket_dir, pw.pw_uid, pw.pw_gid)
        conf = {
            "listen_addresses": "",
            "unix_socket_directories": str(self.socket_dir),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "32MB",
            "max_connections": "30",
            "max_worker_processes": str(max_worker_processes),
            "max_parallel_workers": str(max_worker_processes),
            "autovacuum": "off",
            "logging_collector": "off",
            "log_line_prefix": "%m [%p] %b: ",
            "log_min_messages": "warning",  # (LOG ranks above ERROR here: "log" hides errors)
            "lc_messages": "C",
        }
        conf.update({k: str(v) for k, v in settings.items()})
        # In postgresql.conf (the last setting wins), not on the command line, so that a
        # reload (pg_reload_conf) applies a changed setting without complaints.
        with open(self.data / "postgresql.conf", "a") as f:
            f.write("\n# bgwlab.pg\n")
            for k, val in conf.items():
                f.write(f"{k} = '{val.replace(chr(39), chr(39) * 2)}'\n")
        argv = [str(self.bindir / "postgres"), "-D", str(self.data)]
        self._log = open(self.log_path, "ab", buffering=0)
        # The postmaster is our own child, with the server user's ids set in the child
        # (Popen's user/group) rather than under `runuser`: runuser stays as a watching
        # parent that waits with WUNTRACED and stops *itself* when its child is stopped,
        # so the busy load's SIGSTOP/SIGCONT stalls would leave it frozen and the
        # postmaster unreaped.  As our child, the postmaster's pid cannot be recycled
        # before we reap it, so signalling it (stalls, shutdown) is safe.
        ids = {}
        if self.run_as:
            pw = pwd.getpwnam(self.run_as)
            ids = dict(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     close_fds=True, cwd=self.base, **ids)
        self.postmaster_pid = self.proc.pid
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise BgwError(f"postgres exited ({self.proc.returncode}) at start; its log:\n"
                               f"{self.log_text()[-3000:]}")
            if os.path.exists(socket_path(self.socket_dir)):
                try:
                    with self.connect(timeout=5) as c:
                        c.value("select 1")
                    break
                except (OSError, PgError):
                    pass  # "the database system is starting up"
            if time.monotonic() > deadline:
                raise BgwError(f"postgres did not accept connections within {timeout} s; log:\n"
                               f"{self.log_text()[-3000:]}")
            time.sleep(0.02)

    def _read_pidfile(self) -> int | None:
        try:
            with open(self.data / "postmaster.pid") as f:
                return int(f.readline().strip())
        except (OSError, ValueError):
            return None

    @property
    def alive(self) -> bool:
        return bool(self.postmaster_pid) and _alive(self.postmaster_pid) and not self._stopped

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (then immediate, then SIGKILL), and remove the directory.  Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            try:
                self._stop_processes(timeout)
            finally:
                if self._log is not None:
                    self._log.close()
                if self.base is not None:
                    shutil.rmtree(self.base, ignore_errors=True)
                with _live_lock:
                    _live.discard(self)

    def _stop_processes(self, timeout: float) -> None:
        pm = self.postmaster_pid or (self._read_pidfile() if self.base else None)
        if pm and _alive(pm):
            for sig, wait in ((signal.SIGCONT, 0), (signal.SIGINT, timeout),
                              (signal.SIGQUIT, 10.0)):
                try:
                    os.kill(pm, sig)
                except ProcessLookupError:
                    break
                deadline = time.monotonic() + wait
                while _alive(pm) and time.monotonic() < deadline:
                    time.sleep(0.01)
                if not _alive(pm):
                    break
            if _alive(pm):
                for child in children_of(pm):
                    try:
                        os.kill(child, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                try:
                    os.kill(pm, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.proc is not None:
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- use -------------------------------------------------------------------------------
    def connect(self, *, database: str = "postgres", timeout: float | None = 60.0) -> Connection:
        return Connection(self.socket_dir, user="postgres", database=database, timeout=timeout)

    def log_text(self, since: int = 0) -> str:
        """The server log from byte offset `since` (see :meth:`log_size`)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def children(self) -> list[int]:
        return children_of(self.postmaster_pid) if self.postmaster_pid else []

    def __repr__(self):
        state = "stopped" if self._stopped else f"postmaster={self.postmaster_pid}"
        return f"<bgwlab.pg.Server PostgreSQL {self.version} {self.base} {state}>"
