"""For benchmarks/ab_launch.py --faults: what one parallel worker cost, fork to exit.

Preloaded by both postmasters (after the worker modules), it wraps ``main`` of
``bgwlab.parallel.worker`` and, if loaded, ``pl_worker_s6c``: when ``main`` ends, the
worker appends one line ``<minor faults> <CPU ns>`` (``/proc/self/stat`` field 10,
``/proc/self/schedstat`` field 1: both counted from the fork, a child starts at 0) to
``$BGWLAB_AB_FAULTS_DIR/<postmaster pid>``.  The reads come after ``main``: they cost
both sides alike and are not in the figure but for their own few faults.
"""

import os
import sys

_DIR = os.environ.get("BGWLAB_AB_FAULTS_DIR", "")


def _record() -> None:
    fd = os.open("/proc/self/stat", os.O_RDONLY)
    data = os.read(fd, 4096)
    os.close(fd)
    minflt = int(data[data.rindex(b")") + 2:].split()[7])
    fd = os.open("/proc/self/schedstat", os.O_RDONLY)
    cpu = int(os.read(fd, 256).split()[0])
    os.close(fd)
    fd = os.open(f"{_DIR}/{os.getppid()}", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(fd, f"{minflt} {cpu}\n".encode())
    os.close(fd)


def _wrap(mod) -> None:
    inner = mod.main

    def main(main_arg):
        try:
            return inner(main_arg)
        finally:
            if _DIR:
                _record()

    mod.main = main


for _name in ("bgwlab.parallel.worker", "pl_worker_s6c"):
    if _name in sys.modules:
        _wrap(sys.modules[_name])
