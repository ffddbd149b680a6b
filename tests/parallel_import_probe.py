"""A parallel worker function for tests/test_parallel_worker_imports.py: it reports which
modules its process holds.  Imports nothing but sys, so that it adds nothing to the set."""

import sys


def report_modules(worker) -> None:
    worker.send(" ".join(sorted(sys.modules)).encode())
