"""What a registrant asks for: WorkerSpec, its fault plan, and their validation.

Everything here is checked when the object is built, and again at registration, so
an invalid spec is refused before a slot is touched.
"""

from __future__ import annotations

import errno as _errno
import re
import signal as _signal
from dataclasses import dataclass, field, replace

from .errors import InvalidWorkerSpec
from .shmem import ENTRY_MAX, EXTRA_MAX, NAME_MAX

NEVER_RESTART = -1
"""restart=NEVER_RESTART: a worker that exits with an error is unregistered, not restarted."""

MAX_RESTART_S = 86_400
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_ENTRY_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


@dataclass(frozen=True)
class Fault:
    """A per-worker fault plan: what goes wrong, and where.

    Build one with the constructors and combine them with ``|``::

        Fault.fork_failure(errno=errno.EAGAIN)
        Fault.crash_before_main(signal=signal.SIGSEGV) | Fault.slow_start(0.2)
    """

    fork_errno: int = 0
    fork_failures: int = 0  # how many attempts fail; 0 = every attempt
    crash_exit_code: int | None = None
    crash_signal: int = 0
    slow_start_s: float = 0.0  # seconds between fork and user code (in the worker)
    postmaster_delay_s: float = 0.0  # seconds between request seen and fork (in the postmaster)

    @classmethod
    def fork_failure(cls, errno: int = _errno.EAGAIN, times: int | None = None) -> Fault:
        """The postmaster's fork raises a real OSError(errno); `times` attempts, or all."""
        return cls(fork_errno=errno, fork_failures=times or 0)

    @classmethod
    def crash_before_main(cls, exit_code: int | None = None, signal: int | None = None) -> Fault:
        """The worker dies after fork, before reaching user code: exit code or signal."""
        if (exit_code is None) == (signal is None):
            raise InvalidWorkerSpec(
                "Fault.crash_before_main needs exactly one of exit_code= or signal=, "
                "e.g. Fault.crash_before_main(exit_code=1) or (signal=signal.SIGSEGV)")
        return cls(crash_exit_code=exit_code, crash_signal=int(signal or 0))

    @classmethod
    def slow_start(cls, seconds: float, where: str = "worker") -> Fault:
        """Delay the start by `seconds`: in the worker before main, or in the postmaster before fork."""
        if where == "worker":
            return cls(slow_start_s=seconds)
        if where == "postmaster":
            return cls(postmaster_delay_s=seconds)
        raise InvalidWorkerSpec("Fault.slow_start(where=...) must be 'worker' or 'postmaster'")

    def __or__(self, other: Fault) -> Fault:
        if not isinstance(other, Fault):
            return NotImplemented
        base = Fault()
        merged = {}
        for f in self.__dataclass_fields__:
            a, b = getattr(self, f), getattr(other, f)
            merged[f] = b if a == getattr(base, f) else a
        return Fault(**merged)

    def __post_init__(self):
        _check_fault(self)

    def describe(self) -> str:
        parts = []
        if self.fork_errno:
            n = f" x{self.fork_failures}" if self.fork_failures else ""
            parts.append(f"fork fails with {_errno.errorcode.get(self.fork_errno, self.fork_errno)}{n}")
        if self.crash_exit_code is not None:
            parts.append(f"exit({self.crash_exit_code}) before main")
        if self.crash_signal:
            parts.append(f"{_signal.Signals(self.crash_signal).name} before main")
        if self.slow_start_s:
            parts.append(f"{self.slow_start_s:g}s slow start")
        if self.postmaster_delay_s:
            parts.append(f"postmaster delays fork {self.postmaster_delay_s:g}s")
        return ", ".join(parts) or "no fault"


# Signals that stop, continue or are ignored by default: no early crash.  getattr: Windows
# has none of them, and a Fault must still be buildable there (for reading event logs).
_HARMLESS_SIGNALS = {getattr(_signal, n) for n in ("SIGSTOP", "SIGCONT", "SIGCHLD", "SIGURG", "SIGWINCH")
                     if hasattr(_signal, n)}


def _check_fault(f: Fault) -> None:
    def bad(msg):
        raise InvalidWorkerSpec(f"invalid fault plan: {msg}")

    for name in ("fork_errno", "fork_failures", "crash_signal"):
        v = getattr(f, name)
        if not isinstance(v, int) or isinstance(v, bool):
            bad(f"{name} must be an int, got {v!r}")
    if not 0 <= f.fork_errno < 4096:
        bad(f"fork errno {f.fork_errno} is not an errno value (use errno.EAGAIN, errno.ENOMEM, ...)")
    if f.fork_failures < 0:
        bad("times= must be a positive count, or None for every attempt")
    if f.crash_exit_code is not None and not (
            isinstance(f.crash_exit_code, int) and 0 <= f.crash_exit_code <= 255):
        bad(f"exit_code must be 0..255, got {f.crash_exit_code!r}")
    if f.crash_signal and f.crash_signal not in {int(s) for s in _signal.valid_signals()}:
        bad(f"signal {f.crash_signal} is not a valid signal number (use signal.SIGSEGV, ...)")
    if f.crash_signal in _HARMLESS_SIGNALS:
        bad(f"signal {f.crash_signal} does not kill a process; use SIGSEGV, SIGKILL, SIGABRT ...")
    for name in ("slow_start_s", "postmaster_delay_s"):
        v = getattr(f, name)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v < MAX_RESTART_S:
            bad(f"{name} must be seconds in [0, {MAX_RESTART_S}), got {v!r}")


@dataclass(frozen=True)
class WorkerSpec:
    """What to run in a dynamic background worker (PostgreSQL's ``BackgroundWorker``).

    name      at most 95 bytes of UTF-8, shown in events and process listings
    entry     ``"module:function"``; the worker calls ``function(main_arg)``
    main_arg  one int64, passed by value
    extra     at most 128 bytes, read in the worker with ``bgwlab.worker.current().extra``
    restart   ``NEVER_RESTART`` or seconds (0-86400) to wait before restarting after exit 1
    notify    signal this registrant on every start attempt and exit (``bgw_notify_pid``)
    fault     a ``Fault`` plan, or None
    """

    name: str
    entry: str
    main_arg: int = 0
    extra: bytes = b""
    restart: float = NEVER_RESTART
    notify: bool = True
    fault: Fault | None = field(default=None)

    def __post_init__(self):
        validate(self)

    def replace(self, **changes) -> WorkerSpec:
        return replace(self, **changes)


def validate(spec: WorkerSpec) -> None:
    """Raise InvalidWorkerSpec naming the first bad field of `spec`."""

    def bad(msg):
        raise InvalidWorkerSpec(msg)

    if not isinstance(spec.name, str) or not spec.name:
        bad(f"name must be a non-empty str, got {spec.name!r}")
    if "\x00" in spec.name:
        bad("name must not contain NUL characters")
    if len(spec.name.encode()) > NAME_MAX:
        bad(f"name is {len(spec.name.encode())} bytes; at most {NAME_MAX} are allowed: shorten it")
    if not isinstance(spec.entry, str) or not _ENTRY_RE.match(spec.entry):
        bad(f"entry must look like 'package.module:function', got {spec.entry!r}")
    if len(spec.entry.encode()) > ENTRY_MAX:
        bad(f"entry is longer than {ENTRY_MAX} bytes")
    if not isinstance(spec.main_arg, int) or isinstance(spec.main_arg, bool):
        bad(f"main_arg must be an int (it is passed by value, like a Datum), got {spec.main_arg!r}; "
            "put other data in extra= or in a file")
    if not INT64_MIN <= spec.main_arg <= INT64_MAX:
        bad("main_arg does not fit in 64 bits")
    if not isinstance(spec.extra, (bytes, bytearray, memoryview)):
        bad(f"extra must be bytes, got {type(spec.extra).__name__}; encode it first (e.g. s.encode())")
    if len(bytes(spec.extra)) > EXTRA_MAX:
        bad(f"extra is {len(bytes(spec.extra))} bytes; at most {EXTRA_MAX} are allowed")
    r = spec.restart
    if isinstance(r, bool) or not isinstance(r, (int, float)):
        bad(f"restart must be NEVER_RESTART or seconds, got {r!r}")
    if r != NEVER_RESTART and not 0 <= r <= MAX_RESTART_S:
        bad(f"restart must be NEVER_RESTART (-1) or 0..{MAX_RESTART_S} seconds, got {r!r}")
    if not isinstance(spec.notify, bool):
        bad(f"notify must be True or False, got {spec.notify!r}")
    if spec.fault is not None:
        if not isinstance(spec.fault, Fault):
            bad(f"fault must be a bgwlab.Fault or None, got {spec.fault!r}")
        _check_fault(spec.fault)
