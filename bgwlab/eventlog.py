"""The event writer: lean enough for the postmaster and freshly forked workers.

Every process (postmaster, workers, backends) appends to one file, ``DIR/events.jsonl``,
opened with ``O_APPEND``: each ``write()`` appends one or more whole JSON lines, which
Linux appends atomically, so lines from different processes never interleave.  Times are
``CLOCK_MONOTONIC`` nanoseconds (``time.monotonic_ns()``), comparable across processes
on one machine.

The line is formatted by hand, without importing ``json`` (which pulls in ``re``): the
postmaster writes four events on every start and stays small so that ``fork()`` stays
cheap.  The hot shapes cost little: the part of a line that names the kind and source is
built once per kind, each detail key is encoded once, and a value of a plain type (int,
str without anything to escape, bool, None) is written without the general encoder.
``line()`` formats without writing, so that a process can take each timestamp where the
thing happens and write several events in one ``write()`` afterwards (the postmaster does,
after it has signalled the registrant).  The cost of one event is measured by
``benchmarks/bench_events.py``.
"""

import os
import time

_ESCAPES = {i: f"\\u{i:04x}" for i in range(32)}
_ESCAPES.update({ord('"'): '\\"', ord("\\"): "\\\\"})
_monotonic_ns = time.monotonic_ns
_getpid = os.getpid


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


def _encode_str(s: str) -> str:
    if s.isascii() and s.isprintable() and '"' not in s and "\\" not in s:
        return '"' + s + '"'  # nothing to escape (the common case): no translate()
    return '"' + s.translate(_ESCAPES) + '"'


# Exact types only: a subclass (an IntEnum, a str subclass) takes the general encoder.
_PLAIN = {int: int.__repr__, str: _encode_str, bool: lambda v: "true" if v else "false",
          type(None): lambda v: "null"}
_KEYS: dict = {}  # detail key -> '"key":'


def _encode_key(k) -> str:
    text = encode_value(str(k)) + ":"
    if len(_KEYS) < 512:
        _KEYS[k] = text
    return text


def encode_detail(detail: dict) -> str:
    """``encode_value(detail)`` for a dict of detail, faster for the plain types."""
    get, keys = _PLAIN.get, _KEYS
    return "{" + ",".join([(keys.get(k) or _encode_key(k)) + get(type(v), encode_value)(v)
                           for k, v in detail.items()]) + "}"


class EventWriter:
    """Appends events to a cluster's log.  One per process (and per source)."""

    __slots__ = ("fd", "source", "enabled", "_own_fd", "_heads")

    def __init__(self, path: str | None = None, source: str = "backend", *, fd: int | None = None,
                 enabled: bool = True):
        self.source = source
        self.enabled = enabled
        self._own_fd = fd is None
        if fd is None:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.fd = fd
        self._heads = {}  # kind -> ',"kind":"...","source":"...","pid":'

    def _head(self, kind: str) -> str:
        head = f',"kind":{_encode_str(str(kind))},"source":{_encode_str(self.source)},"pid":'
        if len(self._heads) < 256:
            self._heads[kind] = head
        return head

    def prepare(self, *kinds: str) -> "EventWriter":
        """Build the line heads of `kinds` now: the postmaster does it before fork(), so that
        a worker's first event finds its head instead of building it (each object it
        creates after fork() is a page copied on write)."""
        for kind in kinds:
            self._head(kind)
        return self

    def line(self, kind: str, slot: int = -1, generation: int = 0, t_ns: int | None = None,
             **detail) -> bytes:
        """The JSON line (bytes) of one event, not written: pass it (or several joined) to
        ``write()``.  Empty if this writer is disabled."""
        if not self.enabled:
            return b""
        t = _monotonic_ns() if t_ns is None else t_ns
        return (f'{{"t_ns":{t}{self._heads.get(kind) or self._head(kind)}{_getpid()},'
                f'"slot":{slot},"generation":{generation},'
                f'"detail":{encode_detail(detail) if detail else "{}"}}}\n').encode()

    def write(self, lines: bytes) -> None:
        """Append whole lines from ``line()`` in one ``write()`` (atomic under O_APPEND)."""
        if lines:
            try:
                os.write(self.fd, lines)
            except OSError:
                pass  # a full disk must not take a process of the cluster down

    def emit(self, kind: str, slot: int = -1, generation: int = 0, t_ns: int | None = None,
             **detail) -> int:
        """Record `kind` now (or at `t_ns`); returns the timestamp used."""
        t = _monotonic_ns() if t_ns is None else t_ns
        if not self.enabled:
            return t
        line = (f'{{"t_ns":{t}{self._heads.get(kind) or self._head(kind)}{_getpid()},'
                f'"slot":{slot},"generation":{generation},'
                f'"detail":{encode_detail(detail) if detail else "{}"}}}\n')
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
