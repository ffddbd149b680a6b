"""The event writer: lean enough for the postmaster and freshly forked workers.

Every process (postmaster, workers, backends) appends to one file, ``DIR/events.jsonl``,
opened with ``O_APPEND``: each event is one ``write()`` of one JSON line, which Linux
appends atomically, so lines from different processes never interleave.  Times are
``CLOCK_MONOTONIC`` nanoseconds (``time.monotonic_ns()``), comparable across processes
on one machine.

The line is formatted by hand, without importing ``json`` (which pulls in ``re``): the
postmaster writes three events on every start and stays small so that ``fork()`` stays
cheap.  The cost of one event is measured by ``benchmarks/bench_events.py``.
"""

import os
import time

_ESCAPES = {i: f"\\u{i:04x}" for i in range(32)}
_ESCAPES.update({ord('"'): '\\"', ord("\\"): "\\\\"})


def encode_value(v) -> str:
    """JSON text for str, int, float, bool, None, and flat lists/dicts of those."""
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if v == v and v not in (float("inf"), float("-inf")) else "null"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(encode_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(f"{encode_value(str(k))}:{encode_value(x)}" for k, x in v.items()) + "}"
    return '"' + str(v).translate(_ESCAPES) + '"'


class EventWriter:
    """Appends events to a cluster's log.  One per process (and per source)."""

    __slots__ = ("fd", "source", "enabled", "_own_fd")

    def __init__(self, path: str | None = None, source: str = "backend", *, fd: int | None = None,
                 enabled: bool = True):
        self.source = source
        self.enabled = enabled
        self._own_fd = fd is None
        if fd is None:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.fd = fd

    def emit(self, kind: str, slot: int = -1, generation: int = 0, t_ns: int | None = None,
             **detail) -> int:
        """Record `kind` now (or at `t_ns`); returns the timestamp used."""
        t = time.monotonic_ns() if t_ns is None else t_ns
        if not self.enabled:
            return t
        d = encode_value(detail) if detail else "{}"
        line = (f'{{"t_ns":{t},"kind":"{kind}","source":"{self.source}","pid":{os.getpid()},'
                f'"slot":{slot},"generation":{generation},"detail":{d}}}\n')
        try:
            os.write(self.fd, line.encode())
        except OSError:
            pass  # a full disk must not take a process of the cluster down
        return t

    def close(self) -> None:
        if self._own_fd and self.fd >= 0:
            os.close(self.fd)
        self.fd = -1

    def with_source(self, source: str) -> "EventWriter":
        """A writer on the same fd that records `source` (e.g. a worker after fork)."""
        return EventWriter(source=source, fd=self.fd, enabled=self.enabled)
