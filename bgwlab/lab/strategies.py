"""Waiting strategies: how a registrant learns whether the worker it asked for started.

The question (the seed's argument): a registrant asked the postmaster for a worker.
When may it say "the worker is running my code", and when "it will never run"?

What "started" means here
-------------------------

In PostgreSQL, ``WaitForBackgroundWorkerStartup`` returning STARTED only means *forked*:
the worker may still die before it runs a line of user code (``early_crash``).  So every
strategy here answers the stronger question "did the worker reach user code?", and
every trial's worker runs :func:`sentinel_worker`, which **signs in** as the first thing
it does in user code: it creates the file ``DIR/sentinel-<slot>-<generation>`` (and, if
asked, sets the registrant's latch with SIGUSR1 -- the way a PostgreSQL parallel worker
sets its leader's latch when it attaches to its ``shm_mq``).  Specs for it are built by
:func:`sentinel_spec` (or a strategy's ``make_spec``), which put the sentinel directory
-- and the registrant to signal -- into ``WorkerSpec.extra``.

The three strategies (sibling classes, one method ``wait(backend, handle, spec)``)
---------------------------------------------------------------------------------

``Notify()`` -- handle + notification + latch, no timer.  Verdict rule:
    sleep on a latch (woken by the postmaster's SIGUSR1 on fork / exit / forget, by the
    worker's sign-in SIGUSR1, and by the postmaster's pidfd on postmaster death) until

    * the sentinel exists                       -> ``started``
    * the handle reads STOPPED without sentinel -> ``failed`` (fork failed and the worker
      was forgotten; or it died before user code and was unregistered)
    * the postmaster died without sentinel      -> ``failed``

    It first calls ``handle.wait_for_startup()`` (PostgreSQL's call: STARTED = forked),
    then keeps waiting on the same kind of latch for the sign-in or the exit.  The handle
    status is read *before* the sentinel on every wake, so a worker that signed in and
    exited at once is still reported ``started``.  Notify is never wrong; the price is that
    it has no upper bound: a worker that hangs before user code is waited for forever.

``Timeout(T, poll=P)`` -- the "wait 5 s and give up" design.  No handle, no notification:
    look for the sentinel every ``P`` seconds; ``started`` when it appears, ``timed_out``
    once ``T`` seconds have passed since registration.  A failed start is therefore
    reported only after ``T``; a start that is merely slower than ``T`` (a busy machine) is
    reported as a failure although the worker runs: a *spurious timeout*.

``PollPid(poll)`` -- a handle without notification, polled: every ``poll`` seconds read
    ``handle.get_pid()``, the sentinel and the postmaster's liveness; same verdict rule as
    Notify, with the poll period as its resolution and its CPU cost.

Every strategy measures time-to-verdict from the registration (``handle.registered_ns``)
and the CPU time this process spent while waiting (``time.process_time``, which includes
the signal dispatcher's fan-out thread, if a waiter outside the main thread started it).
Each verdict is also recorded in the cluster's event log as a ``verdict`` event.

This module is imported by the postmaster (``PRELOAD``) so that forked workers find
:func:`sentinel_worker` already loaded: it imports nothing heavy at module level.
"""

from __future__ import annotations

import os
import time

__all__ = ["Outcome", "Strategy", "Notify", "Timeout", "PollPid", "make_strategy",
           "sentinel_worker", "sentinel_spec", "sentinel_path", "exit_path", "parse_extra",
           "SENTINEL_ENTRY", "PRELOAD", "STRATEGY_NAMES", "VERDICTS"]

SENTINEL_ENTRY = "bgwlab.lab.strategies:sentinel_worker"
PRELOAD = ("bgwlab.examples", "bgwlab.lab.strategies")
"""What to pass as ``Cluster.start(preload=...)`` so workers need not import this module."""

VERDICTS = ("started", "failed", "timed_out")
STRATEGY_NAMES = ("notify", "timeout", "poll_pid")
DEFAULT_POLL_S = 0.01


# -- the worker side ------------------------------------------------------------------------
def parse_extra(extra: bytes) -> tuple[int, int, str]:
    """``WorkerSpec.extra`` of a sentinel worker -> (registrant pid, its start ticks, directory).

    The format is ``b"<pid> <start_ticks> <directory>"``; pid 0 means "do not signal".
    """
    try:
        pid, start, directory = bytes(extra).decode().split(" ", 2)
        return int(pid), int(start), directory
    except (ValueError, UnicodeDecodeError):
        raise ValueError(
            "this spec's extra does not name a sentinel directory; build the spec with "
            "bgwlab.lab.strategies.sentinel_spec(...) or strategy.make_spec(...)") from None


def sentinel_path(directory, slot: int, generation: int) -> str:
    """The file a sentinel worker creates when it reaches user code."""
    return os.path.join(directory, f"sentinel-{slot}-{generation}")


def exit_path(directory, slot: int, generation: int) -> str:
    """The file a sentinel worker writes (its CLOCK_MONOTONIC ns) just before it exits."""
    return os.path.join(directory, f"exit-{slot}-{generation}")


def _write_stamp(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, str(time.monotonic_ns()).encode())
    finally:
        os.close(fd)


def sentinel_worker(run_ms: int) -> None:
    """Worker entry point: sign in, run ``run_ms`` milliseconds, write an exit stamp, exit 0.

    Signing in = create ``sentinel-<slot>-<generation>`` in the directory named by
    ``extra`` (its content: the CLOCK_MONOTONIC ns of sign-in), then, if ``extra`` names a
    registrant, send it SIGUSR1 through a pidfd checked against its start time (so a
    recycled pid is never signalled).
    """
    from .. import worker

    info = worker.current()
    pid, start, directory = parse_extra(info.extra)
    _write_stamp(sentinel_path(directory, info.slot, info.generation))
    if pid > 0:
        import signal

        from ..procinfo import open_pidfd

        fd = open_pidfd(pid, start)
        if fd is not None:
            try:
                signal.pidfd_send_signal(fd, signal.SIGUSR1)
            except OSError:
                pass
            finally:
                os.close(fd)
    alive = worker.sleep(max(0, run_ms) / 1000)
    _write_stamp(exit_path(directory, info.slot, info.generation))
    if not alive:
        raise SystemExit(1)


def sentinel_spec(directory, *, name: str = "trial", run_ms: int = 10, fault=None,
                  notify: bool = True, sign_in_signal: bool = True):
    """A ``WorkerSpec`` running :func:`sentinel_worker` that signs in under `directory`.

    ``notify``: the postmaster signals this process on fork/exit (``bgw_notify_pid``).
    ``sign_in_signal``: the worker signals this process when it reaches user code.
    """
    from ..procinfo import start_ticks
    from ..spec import NEVER_RESTART, WorkerSpec

    if sign_in_signal:
        me = os.getpid()
        extra = f"{me} {start_ticks(me)} {os.fspath(directory)}"
    else:
        extra = f"0 0 {os.fspath(directory)}"
    extra_b = extra.encode()
    if len(extra_b) > 128:
        raise ValueError(f"sentinel directory path too long for WorkerSpec.extra: {directory}")
    return WorkerSpec(name=name, entry=SENTINEL_ENTRY, main_arg=int(run_ms), extra=extra_b,
                      restart=NEVER_RESTART, notify=notify, fault=fault)


# -- the registrant side ---------------------------------------------------------------------
class Outcome:
    """What a strategy concluded: ``verdict`` ("started" | "failed" | "timed_out"),
    ``time_to_verdict_ms`` (since registration), ``wait_cpu_ms`` (CPU this process spent
    waiting), ``t_verdict_ns`` (CLOCK_MONOTONIC) and ``status`` (the last handle status seen,
    or a short reason)."""

    __slots__ = ("verdict", "time_to_verdict_ms", "wait_cpu_ms", "t_verdict_ns", "status")

    def __init__(self, verdict: str, time_to_verdict_ms: float, wait_cpu_ms: float,
                 t_verdict_ns: int = 0, status: str = ""):
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
        self.verdict = verdict
        self.time_to_verdict_ms = time_to_verdict_ms
        self.wait_cpu_ms = wait_cpu_ms
        self.t_verdict_ns = t_verdict_ns
        self.status = status

    def _key(self):
        return (self.verdict, self.time_to_verdict_ms, self.wait_cpu_ms, self.t_verdict_ns, self.status)

    def __eq__(self, other):
        return isinstance(other, Outcome) and self._key() == other._key()

    def __repr__(self):
        return (f"Outcome(verdict={self.verdict!r}, time_to_verdict_ms={self.time_to_verdict_ms:.3f}, "
                f"wait_cpu_ms={self.wait_cpu_ms:.3f}, status={self.status!r})")

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__slots__}


class Strategy:
    """Base of the sibling strategies.  Subclasses implement ``_decide``."""

    name = "strategy"
    uses_notify = False  # the spec asks the postmaster to signal us
    uses_sign_in_signal = False  # the spec asks the worker to signal us
    timeout_s: float | None = None
    poll_s: float | None = None

    def make_spec(self, directory, *, name: str = "trial", run_ms: int = 10, fault=None):
        """The spec this strategy needs: a sentinel worker signing in under `directory`."""
        return sentinel_spec(directory, name=name, run_ms=run_ms, fault=fault,
                             notify=self.uses_notify, sign_in_signal=self.uses_sign_in_signal)

    def wait(self, backend, handle, spec) -> Outcome:
        """Wait for the verdict on `handle` (registered by `backend` with `spec`)."""
        _pid, _start, directory = parse_extra(spec.extra)
        sentinel = sentinel_path(directory, handle.slot, handle.generation)
        t0 = handle.registered_ns or time.monotonic_ns()
        cpu0 = time.process_time()
        verdict, status = self._decide(backend, handle, sentinel, t0)
        t1 = time.monotonic_ns()
        cpu = (time.process_time() - cpu0) * 1000
        out = Outcome(verdict, (t1 - t0) / 1e6, cpu, t1, status)
        events = getattr(backend, "events", None)
        if events is not None and events.fd >= 0:
            events.emit("verdict", handle.slot, handle.generation, strategy=self.label,
                        verdict=verdict, time_to_verdict_ms=round(out.time_to_verdict_ms, 4),
                        status=status)
        return out

    def start(self, backend, directory, *, name: str = "trial", run_ms: int = 10, fault=None):
        """Register a sentinel worker and wait: returns ``(handle, Outcome)``."""
        spec = self.make_spec(directory, name=name, run_ms=run_ms, fault=fault)
        handle = backend.register_dynamic_worker(spec)
        return handle, self.wait(backend, handle, spec)

    def _decide(self, backend, handle, sentinel: str, t0_ns: int) -> tuple[str, str]:
        raise NotImplementedError

    @property
    def label(self) -> str:
        return self.name

    def __repr__(self):
        return f"{type(self).__name__}()"

    def __eq__(self, other):
        return type(self) is type(other) and repr(self) == repr(other)

    def __hash__(self):
        return hash(repr(self))


def _postmaster_gone(backend) -> bool:
    return not backend.postmaster_alive()


class Notify(Strategy):
    """Handle + notification + latch: no timer, never wrong (see the module docstring)."""

    name = "notify"
    uses_notify = True
    uses_sign_in_signal = True

    def _decide(self, backend, handle, sentinel, t0_ns):
        from ..backend import POSTMASTER_DIED, STOPPED
        from ..latch import Latch, dispatcher

        status, _pid = handle.wait_for_startup()  # STARTED (forked) | STOPPED | POSTMASTER_DIED
        if status is STOPPED:
            return ("started", "stopped after sign-in") if os.path.exists(sentinel) else ("failed", "stopped")
        if status is POSTMASTER_DIED:
            return ("started", "postmaster died after sign-in") if os.path.exists(sentinel) \
                else ("failed", "postmaster died")
        # Forked: now wait for the sign-in (the worker sets our latch) or the exit (the postmaster does).
        pm_fd = backend._pm_fd
        latch = Latch()
        dispatcher.add(latch)
        try:
            while True:
                latch.reset()  # reset, then look: a signal after this point leaves the latch set
                status, _pid = handle.get_pid()  # status first, sentinel second (see docstring)
                if os.path.exists(sentinel):
                    return "started", "signed in"
                if status is STOPPED:
                    return "failed", "stopped before sign-in"
                if pm_fd < 0 or _postmaster_gone(backend):
                    return "failed", "postmaster died"
                dispatcher.wait(latch, None, also=(pm_fd,))
        finally:
            dispatcher.remove(latch)
            latch.close()


class PollPid(Strategy):
    """A handle without notification, polled every ``poll`` seconds (same verdict rule as Notify)."""

    name = "poll_pid"

    def __init__(self, poll: float = DEFAULT_POLL_S):
        if not poll > 0:
            raise ValueError("poll must be > 0 seconds")
        self.poll_s = float(poll)

    def __repr__(self):
        return f"PollPid(poll={self.poll_s:g})"

    @property
    def label(self) -> str:
        return "poll_pid" if self.poll_s == DEFAULT_POLL_S else f"poll_pid({self.poll_s:g})"

    def _decide(self, backend, handle, sentinel, t0_ns):
        from ..backend import STOPPED

        while True:
            status, _pid = handle.get_pid()
            if os.path.exists(sentinel):
                return "started", "signed in"
            if status is STOPPED:
                return "failed", "stopped before sign-in"
            if _postmaster_gone(backend):
                return "failed", "postmaster died"
            time.sleep(self.poll_s)


class Timeout(Strategy):
    """Poll the sentinel every ``poll`` seconds; give up ``T`` seconds after registering."""

    name = "timeout"

    def __init__(self, T: float, poll: float = DEFAULT_POLL_S):
        if not T > 0:
            raise ValueError("T must be > 0 seconds")
        if not poll > 0:
            raise ValueError("poll must be > 0 seconds")
        self.timeout_s = float(T)
        self.poll_s = float(poll)

    def __repr__(self):
        return f"Timeout({self.timeout_s:g}, poll={self.poll_s:g})"

    @property
    def label(self) -> str:
        return f"timeout({self.timeout_s:g})"

    def _decide(self, backend, handle, sentinel, t0_ns):
        deadline = t0_ns + int(self.timeout_s * 1e9)
        while True:
            if os.path.exists(sentinel):
                return "started", "signed in"
            remaining = (deadline - time.monotonic_ns()) / 1e9
            if remaining <= 0:
                return "timed_out", f"no sign-in after {self.timeout_s:g}s"
            time.sleep(min(self.poll_s, remaining))


def make_strategy(name: str, timeout_s: float | None = None, poll_s: float = DEFAULT_POLL_S) -> Strategy:
    """``"notify"`` -> Notify(); ``"timeout"`` -> Timeout(timeout_s, poll_s); ``"poll_pid"`` -> PollPid(poll_s)."""
    key = name.strip().lower().replace("-", "_")
    if key == "notify":
        return Notify()
    if key in ("poll_pid", "pollpid", "poll"):
        return PollPid(poll_s)
    if key == "timeout":
        if timeout_s is None:
            raise ValueError("the timeout strategy needs timeout_s=T (seconds)")
        return Timeout(timeout_s, poll_s)
    raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGY_NAMES)}")
