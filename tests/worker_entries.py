"""Worker entry points for the tests (``entry="worker_entries:..."``).

Workers resolve entries against the test process's ``sys.path``, which holds ``tests/``.
Each writes what it saw to a file in the cluster's directory, so a test can read back
what travelled through shared memory to the worker.
"""

from __future__ import annotations

import json
import os

from bgwlab import worker


def report_path(directory, slot: int, generation: int, run: int | None = None):
    suffix = "" if run is None else f"-{run}"
    return os.path.join(str(directory), f"report-{slot}-{generation}{suffix}.json")


def _write_report(extra: dict | None = None) -> str:
    info = worker.current()
    data = {"name": info.name, "entry": info.entry, "main_arg": info.main_arg,
            "extra": info.extra.hex(), "slot": info.slot, "generation": info.generation,
            "postmaster_pid": info.postmaster_pid, "directory": info.directory,
            "pid": os.getpid(), "ppid": os.getppid(), **(extra or {})}
    path = report_path(info.directory, info.slot, info.generation)
    tmp = path + f".{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.rename(tmp, path)  # readers never see half a report
    return path


def report(arg: int = 0) -> None:
    """Write ``worker.current()`` (and main_arg as received) to the report file; exit 0."""
    _write_report({"arg": arg})


def report_then_sleep(arg: int = 0) -> None:
    """Write the report, then run until terminated (exit 1) or the postmaster dies."""
    _write_report({"arg": arg})
    while worker.sleep(3600):
        pass
    raise SystemExit(1)


def count_runs_then_exit0(arg: int = 0) -> None:
    """Append this run's pid to a file in the cluster directory, then return (exit 0)."""
    info = worker.current()
    with open(os.path.join(info.directory, f"runs-{info.slot}-{info.generation}"), "a") as f:
        f.write(f"{os.getpid()}\n")


class Entries:
    """``entry="worker_entries:Entries.report"``: a dotted qualified name."""

    @staticmethod
    def report(arg: int = 0) -> None:
        _write_report({"arg": arg, "via": "Entries.report"})
