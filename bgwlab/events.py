"""Timestamped events from every process of a cluster.

The writer lives in ``eventlog.py`` (lean, for the postmaster and workers); this module
reads, exports and tabulates what was written.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

from .eventlog import EventWriter  # noqa: F401  (re-exported)

KINDS = (
    "postmaster_started", "registered", "request_seen", "fork_attempted", "fork_failed",
    "forked", "reached_main", "early_crash", "worker_error", "notified", "notify_dropped",
    "woke", "terminate_requested", "terminate_seen", "exited", "restart_scheduled",
    "unregistered", "crash_restart", "slot_rejected", "backend_attached", "backend_detached",
    "backend_gone", "postmaster_stopping", "postmaster_stopped", "postmaster_died",
    "verdict",
)
SOURCES = ("postmaster", "worker", "backend")


@dataclass(frozen=True)
class Event:
    """One thing that happened, as recorded by the process it happened in."""

    t_ns: int
    kind: str
    source: str
    pid: int
    slot: int = -1
    generation: int = 0
    detail: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def parse_line(line: str) -> Event | None:
    try:
        d = json.loads(line)
        return Event(int(d["t_ns"]), str(d["kind"]), str(d["source"]), int(d["pid"]),
                     int(d.get("slot", -1)), int(d.get("generation", 0)), dict(d.get("detail") or {}))
    except (ValueError, KeyError, TypeError):
        return None  # a torn or foreign line: skip it rather than fail the whole read


def read_events(path: str | os.PathLike) -> list[Event]:
    """All events in a log, sorted by time.  Unparseable lines are skipped."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            evs = [e for e in map(parse_line, f) if e is not None]
    except FileNotFoundError:
        return []
    evs.sort(key=lambda e: e.t_ns)
    return evs


def write_jsonl(events, path: str | os.PathLike) -> None:
    """Export events as JSON Lines (one object per line, the fields of Event)."""
    with open(path, "w", encoding="utf-8") as f:
        for e in events:
            f.write(json.dumps(e.to_dict(), sort_keys=True) + "\n")


def slot_history(events, slot: int, generation: int) -> list[Event]:
    """The events of one worker: those of `slot` and `generation`, in time order."""
    return [e for e in events if e.slot == slot and e.generation == generation]


def format_events(events, *, t0_ns: int | None = None) -> str:
    """Events as text, one per line: ms since the first (or `t0_ns`), kind, source, pid, detail.

    For assertion messages and failure reports: what the log says happened.
    """
    events = list(events)
    if not events:
        return "  (no events)"
    t0 = events[0].t_ns if t0_ns is None else t0_ns
    lines = []
    for e in events:
        detail = " ".join(f"{k}={v!r}" for k, v in e.detail.items() if k != "traceback")
        lines.append(f"  {(e.t_ns - t0) / 1e6:10.3f} ms  {e.kind:<18} {e.source:<10} pid {e.pid:<7} "
                     f"slot {e.slot} gen {e.generation}  {detail}".rstrip())
        tb = e.detail.get("traceback")
        if tb:
            lines.extend("      | " + line for line in str(tb).rstrip().splitlines())
    return "\n".join(lines)


def to_dataframe(events):
    """Events as a pandas DataFrame (one row per event, detail kept as a dict column)."""
    import pandas as pd

    return pd.DataFrame([e.to_dict() for e in events],
                        columns=["t_ns", "kind", "source", "pid", "slot", "generation", "detail"])
