"""The benchmark's PostgreSQL rows: a real PostgreSQL server and ``pg_probe/bench_probe.c``.

``runner.py pg`` holds one :class:`PgBench` for a whole run: two throwaway servers
(``bgwlab.pg.Server``), the probe built with the servers' PGXS, one session on each.  The
second server's postmaster sits in a pids cgroup at its limit (``bgwlab.pg.cgroup``) from
after its session is open to the end of the run, so each of its worker forks fails with a
genuine EAGAIN.  Each trial is one ``bench_trial()`` call, timed inside the backend at the
instants bgwlab's runner uses (see the C file).  Nothing here is needed when no server is
installed: :func:`available` says why, and the run prints that and skips the rows.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
CAP_MS = 2000.0  # a failed fork's notification lost by PostgreSQL 15's postmaster: kick after this


def available() -> tuple[bool, str]:
    """(True, "") if a PostgreSQL >= 15 server with PGXS is here, else (False, why)."""
    try:
        from bgwlab.pg import server_available
        from bgwlab.pg.probe import pgxs_available
    except ImportError as e:  # pragma: no cover
        return False, f"bgwlab.pg not importable: {e}"
    ok, where = server_available()
    if not ok:
        return False, where
    ok, why = pgxs_available(where)
    return (True, "") if ok else (False, why)


def genuine_fail_available() -> tuple[bool, str]:
    from bgwlab.pg.cgroup import cgroup_available

    return cgroup_available()


def build(server, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("bench_probe.c", "Makefile"):
        shutil.copyfile(HERE / "pg_probe" / name, dest / name)
    r = subprocess.run(["make", "-C", str(dest), "USE_PGXS=1", f"PG_CONFIG={server.pg_config}",
                        "with_llvm=no"], capture_output=True, text=True, timeout=300)
    so = dest / "bench_probe.so"
    if r.returncode != 0 or not so.exists():
        raise RuntimeError(f"building the bench probe failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    for p in (dest, so):
        os.chmod(p, 0o755)
    return so.resolve()


def install(conn, so: Path) -> None:
    lib = str(so).replace("'", "''")
    conn.query(f"""
        drop type if exists bench_row cascade;
        create type bench_row as (t0 int8, t_pid int8, t_run int8, t_last int8, t_stop int8,
                                  status text);
        create or replace function bench_trial(kind text, cap_ms float8) returns bench_row
        as '{lib}', 'bench_trial' language c strict;
    """)


class PgBench:
    def __init__(self, genuine_fail: bool):
        from bgwlab.pg import Server
        from bgwlab.pg.cgroup import pids_limit

        self.servers = []
        self.conns = {}
        self.limit = None
        try:
            main = Server.start(max_worker_processes=8)
            self.servers.append(main)
            self.version = main.version
            so = build(main, main.base / "bench_probe")
            self.conns["main"] = main.connect()
            install(self.conns["main"], so)
            if genuine_fail:
                failing = Server.start(max_worker_processes=8)
                self.servers.append(failing)
                so2 = build(failing, failing.base / "bench_probe")
                self.conns["fail"] = failing.connect()
                install(self.conns["fail"], so2)
                self.conns["fail"].query("select 1")
                self.limit = pids_limit(failing.postmaster_pid)
                self.limit.__enter__()
        except BaseException:
            self.close()
            raise

    def trial(self, kind: str) -> dict:
        conn = self.conns["fail" if kind == "fail" else "main"]
        row = conn.query(f"select * from bench_trial('{kind}', {CAP_MS})")[0]
        t0, t_pid, t_run, t_last, t_stop, status = row
        out = {"t0": int(t0), "t1": int(t_pid), "t3": int(t_stop), "status": status}
        if t_run is not None:
            out["t_run"] = int(t_run)
        if t_last is not None:
            out["t_last"] = int(t_last)
        return out

    def close(self) -> None:
        if self.limit is not None:
            self.limit.close()
            self.limit = None
        for c in self.conns.values():
            try:
                c.close()
            except Exception:  # noqa: BLE001
                pass
        self.conns.clear()
        for s in self.servers:
            s.stop()
        self.servers.clear()
