"""The measuring probe: a small C extension (``probe/probe.c``), built with PGXS at run time.

``build_probe(server)`` copies ``probe.c`` and its ``Makefile`` into the server's temp
directory, runs ``make -C DIR USE_PGXS=1 PG_CONFIG=...`` there (nothing is downloaded and
nothing installed into the system tree) and returns the absolute path of ``probe.so``;
``install_probe(conn, path)`` creates its SQL functions from that path::

    probe_trials(strategy text, trials int, timeout_ms float8, poll_ms float8, run_ms int,
                 missing_entry bool, gap_ms float8, cap_ms float8)
      -> (trial, verdict, time_to_verdict_ms, reached_user_code, status, worker_pid,
          signin_ms, t_register_ns, t_verdict_ns, kicked)
    probe_hold(run_ms int) -> int        -- start a worker and wait for it to end
    probe_library() -> text              -- the path workers load (bgw_library_name)

:func:`run_trials` calls ``probe_trials`` and returns dicts with typed values.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path

from ..errors import BgwError

__all__ = ["build_probe", "install_probe", "run_trials", "probe_source", "pgxs_available",
           "PROBE_COLUMNS"]

PROBE_COLUMNS = ("trial", "verdict", "time_to_verdict_ms", "reached_user_code", "status",
                 "worker_pid", "signin_ms", "t_register_ns", "t_verdict_ns", "kicked")


def probe_source() -> Path:
    """The directory holding probe.c and its Makefile (package data)."""
    return Path(str(resources.files("bgwlab.pg") / "probe"))


def build_probe(server, directory=None) -> Path:
    """Build probe.so with the server's PGXS into `directory` (default: inside the server's
    temp dir) and return its absolute path, readable by the server's user."""
    dest = Path(directory) if directory else server.base / "probe"
    dest.mkdir(parents=True, exist_ok=True)
    src = probe_source()
    for name in ("probe.c", "Makefile"):
        shutil.copyfile(src / name, dest / name)
    # with_llvm=no: no JIT bitcode (clang) -- the probe is not JIT-inlined anyway.
    r = subprocess.run(["make", "-C", str(dest), "USE_PGXS=1", f"PG_CONFIG={server.pg_config}",
                        "with_llvm=no"], capture_output=True, text=True, timeout=300)
    so = dest / "probe.so"
    if r.returncode != 0 or not so.exists():
        hint = ""
        if "pgxs" in (r.stderr + r.stdout).lower() or "No such file" in r.stderr:
            hint = (" (is the server's development package installed? Debian: "
                    "postgresql-server-dev-15; `bash scripts/system-deps.sh` as root)")
        raise BgwError(f"building the probe failed{hint}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    for p in (dest, so):
        os.chmod(p, 0o755)
    return so.resolve()


def install_probe(conn, so_path) -> None:
    """Create the probe's SQL functions in `conn`'s database, loaded from `so_path`."""
    lib = str(so_path).replace("'", "''")
    conn.query(f"""
        create or replace function probe_trials(
            strategy text, trials int, timeout_ms float8 default 0, poll_ms float8 default 1,
            run_ms int default 0, missing_entry bool default false, gap_ms float8 default 0,
            cap_ms float8 default 0)
        returns table(trial int, verdict text, time_to_verdict_ms float8,
                      reached_user_code bool, status text, worker_pid int, signin_ms float8,
                      t_register_ns int8, t_verdict_ns int8, kicked bool)
        as '{lib}', 'probe_trials' language c strict;
        create or replace function probe_hold(run_ms int) returns int
        as '{lib}', 'probe_hold' language c strict;
        create or replace function probe_library() returns text
        as '{lib}', 'probe_library' language c strict;
    """)


def _typed(row: tuple) -> dict:
    d = dict(zip(PROBE_COLUMNS, row))
    for k in ("trial", "worker_pid", "t_register_ns", "t_verdict_ns"):
        d[k] = None if d[k] is None else int(d[k])
    for k in ("time_to_verdict_ms", "signin_ms"):
        d[k] = None if d[k] is None else float(d[k])
    for k in ("reached_user_code", "kicked"):
        d[k] = d[k] == "t"
    return d


def run_trials(conn, strategy: str, trials: int, *, timeout_ms: float = 0.0,
               poll_ms: float = 1.0, run_ms: int = 0, missing_entry: bool = False,
               gap_ms: float = 0.0, cap_ms: float = 0.0) -> list[dict]:
    """One ``probe_trials`` call: `trials` trials timed inside the backend."""
    rows = conn.query(
        f"select * from probe_trials('{strategy}', {int(trials)}, {float(timeout_ms)}, "
        f"{float(poll_ms)}, {int(run_ms)}, {'true' if missing_entry else 'false'}, "
        f"{float(gap_ms)}, {float(cap_ms)})")
    return [_typed(r) for r in rows]


def pgxs_available(bindir) -> tuple[bool, str]:
    """(True, "") if `bindir`'s pg_config names a PGXS makefile that exists (the server's
    development package is installed), else (False, why)."""
    from .server import INSTALL_HELP

    try:
        out = subprocess.run([os.path.join(str(bindir), "pg_config"), "--pgxs"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        return False, f"pg_config --pgxs failed ({e}). {INSTALL_HELP}"
    if not out or not os.path.exists(out):
        return False, f"no PGXS ({out or 'pg_config names none'}). {INSTALL_HELP}"
    if shutil.which("make") is None:
        return False, f"no `make` on PATH. {INSTALL_HELP}"
    return True, ""
