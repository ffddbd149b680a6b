"""Small entry points for workers, used by the tests and the notebooks.

Each takes the worker's ``main_arg`` (an int).  They import nothing heavy: the
postmaster preloads this module, so forked workers find it already imported.
"""

import _signal  # signal's C module: `signal` would load enum, functools, collections into
import os       # the postmaster, which preloads this module (a bigger image for every fork)
import time

from . import worker


def noop(arg: int = 0) -> None:
    """Return at once: exit 0, unregistered."""


def sleep_ms(ms: int) -> None:
    """Sleep `ms` milliseconds, or until the postmaster dies; then exit 0."""
    if not worker.sleep(ms / 1000):
        raise SystemExit(1)


def sleep_forever(arg: int = 0) -> None:
    """Run until terminated (SIGTERM -> exit 1) or the postmaster dies."""
    while worker.sleep(3600):
        pass
    raise SystemExit(1)


def fail(arg: int = 0) -> None:
    """Raise an exception: exit 1 (restarted unless NEVER_RESTART)."""
    raise RuntimeError(f"bgwlab.examples.fail({arg}) failed on purpose")


def exit_with(code: int) -> None:
    """Exit with status `code` (0 done, 1 error, anything else a crash)."""
    os._exit(code)


def crash(signum: int = _signal.SIGSEGV) -> None:
    """Die by signal `signum` after reaching user code (a crash: crash-restart)."""
    _signal.signal(signum, _signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    time.sleep(5)


def spin_ms(ms: int) -> None:
    """Burn CPU for `ms` milliseconds (a busy worker), then exit 0."""
    end = time.monotonic() + ms / 1000
    while time.monotonic() < end:
        pass


def _first_run() -> bool:
    """True on the first run of this worker (slot and generation); False on a restart.

    A marker file in the cluster's directory remembers the first run, so that it goes
    with the cluster (never a fixed path in /tmp).
    """
    info = worker.current()
    marker = os.path.join(info.directory, f"first-run-{info.slot}-{info.generation}")
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    return True


def fail_then_run(ms: int) -> None:
    """Fail (exit 1) on the first run of this slot's generation, then sleep `ms` and exit 0."""
    if _first_run():
        raise RuntimeError("first run fails on purpose")
    sleep_ms(ms)


def crash_once(ms: int) -> None:
    """Crash (SIGSEGV) on the first run of this slot's generation; on a restart, sleep `ms`
    (or until terminated) and exit 0."""
    if _first_run():
        crash(_signal.SIGSEGV)
    sleep_ms(ms)


def ignore_term_and_quit(ms: int) -> None:
    """Ignore SIGTERM and SIGQUIT (user code may), then sleep `ms`: a worker that holds up a
    shutdown or a crash-restart until the postmaster's grace period ends in SIGKILL."""
    _signal.signal(_signal.SIGTERM, _signal.SIG_IGN)
    _signal.signal(_signal.SIGQUIT, _signal.SIG_IGN)
    worker.sleep(ms / 1000)


def write_pid(arg: int = 0) -> None:
    """Print the worker's pid and name to the postmaster log, then exit 0."""
    info = worker.current()
    print(f"worker {info.name} pid {os.getpid()} extra={info.extra!r}", flush=True)
