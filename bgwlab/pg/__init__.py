"""bgwlab.pg -- the real thing: bgwlab's scenarios held against a real PostgreSQL server.

* :mod:`.server` -- a throwaway cluster (initdb into a temp dir, Unix socket only), always
  stopped and removed;
* :mod:`.wire` -- a minimal client (protocol 3.0 over the socket, no dependency);
* :mod:`.probe` -- a small C extension built with PGXS at run time that registers dynamic
  background workers and times the waiting strategies from inside the backend;
* :mod:`.cgroup` -- genuine fork failures: a process in a pids cgroup at its limit;
* :mod:`.scenarios` -- ok, fork failure, early crash, busy system, worker crash, and the
  lost wakeup of PostgreSQL 15's postmaster, on PostgreSQL and on bgwlab.
"""

from .server import INSTALL_HELP, PgUnavailable, Server, find_bindir, server_available

__all__ = ["Server", "PgUnavailable", "find_bindir", "server_available", "INSTALL_HELP"]
