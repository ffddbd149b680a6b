"""The worker side: what runs in a freshly forked child of the postmaster.

``child_main`` is entered right after ``fork()`` and never returns: it ends in
``os._exit`` with the exit code that the postmaster interprets (PostgreSQL's rules):
0 when the entry function returns, 1 when it raises (or on SIGTERM), anything else --
or death by a signal -- is a crash.

Code running in a worker may call ``current()``, ``postmaster_alive()`` and
``sleep()``.  Lean imports only: this module is loaded in the postmaster before fork.
"""

import os
import sys

import _signal  # signal's C module, not signal: see child_main, step 1

_current = None
_alive_fd = -1
_wake_fd = -1  # read end of this worker's signal self-pipe (see sleep())
_postmaster_pid = 0


class WorkerInfo:
    """What a running worker knows about itself (``bgwlab.worker.current()``)."""

    __slots__ = ("name", "entry", "main_arg", "extra", "slot", "generation", "postmaster_pid",
                 "directory")

    def __init__(self, name, entry, main_arg, extra, slot, generation, postmaster_pid,
                 directory=""):
        self.name, self.entry, self.main_arg, self.extra = name, entry, main_arg, extra
        self.slot, self.generation, self.postmaster_pid = slot, generation, postmaster_pid
        self.directory = directory  # the cluster's directory (private to its user)

    def __repr__(self):
        return (f"WorkerInfo(name={self.name!r}, entry={self.entry!r}, slot={self.slot}, "
                f"generation={self.generation})")


class Terminated(BaseException):
    """Raised in a worker by SIGTERM (``terminate()`` or shutdown): the worker exits 1."""


def current() -> WorkerInfo:
    """The spec of the worker this code runs in.  Worker only."""
    if _current is None:
        raise RuntimeError("bgwlab.worker.current() works only inside a background worker")
    return _current


def postmaster_alive() -> bool:
    """True while the postmaster lives (PostgreSQL's PostmasterIsAlive).  Worker only."""
    if _alive_fd < 0:
        return True
    import select

    return not select.select([_alive_fd], [], [], 0)[0]


def sleep(seconds: float) -> bool:
    """Sleep, but wake at once if the postmaster dies.  Returns False if it died.

    A SIGTERM (``terminate()``) interrupts it with ``Terminated``, even one that lands
    just before the ``select()`` starts: Python would run the handler only after the
    call returns -- an hour later -- so the signal's byte in our self-pipe (the
    wakeup fd) is in the select set too.  The same race, and fix, as in latch.py.
    """
    import time

    if _alive_fd < 0:
        time.sleep(seconds)
        return True
    import select

    fds = [_alive_fd] if _wake_fd < 0 else [_alive_fd, _wake_fd]
    deadline = time.monotonic() + max(0.0, seconds)
    while True:
        remaining = deadline - time.monotonic()  # a pending handler runs here (may raise)
        if remaining <= 0:
            return True
        ready = select.select(fds, [], [], remaining)[0]
        if _alive_fd in ready:
            return False
        if _wake_fd in ready:
            try:
                os.read(_wake_fd, 512)
            except BlockingIOError:
                pass


def _on_sigterm(signum, frame):
    raise Terminated()  # PostgreSQL's bgworker_die: the worker ends with exit 1


def _on_sigquit(signum, frame):
    os._exit(2)  # PostgreSQL's SignalHandlerForCrashExit: out at once, no cleanup


def _resolve(entry: str):
    # Not importlib.import_module: the lean postmaster never loaded the importlib package
    # (and warnings), so every worker paid ~0.4 ms to import it.  A preloaded module is
    # found in sys.modules; any other goes through __import__ (the same import system).
    mod_name, _, qual = entry.partition(":")
    obj = sys.modules.get(mod_name)
    if obj is None:
        __import__(mod_name)
        obj = sys.modules[mod_name]
    for part in qual.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{entry} is not callable")
    return obj


def _traceback() -> str:
    """The exception being handled, as ``traceback.format_exc()`` words it (its innermost
    20 entries, chained exceptions included).

    Without importing ``traceback``: the lean postmaster did not load it, and in a worker
    its imports (linecache, tokenize, re, ast...) cost ~13 ms -- an early crash (say, an
    entry point that does not exist) took far longer to report than a start.  CPython's
    own C-level display (``sys.__excepthook__``, PyErr_Display) writes the same text to
    ``sys.stderr``, which is a StringIO for the call.
    """
    import io

    exc = sys.exception()
    buf = io.StringIO()
    saved_stderr, saved_limit = sys.stderr, getattr(sys, "tracebacklimit", None)
    sys.stderr, sys.tracebacklimit = buf, 20
    try:
        sys.__excepthook__(type(exc), exc, exc.__traceback__)
    finally:
        sys.stderr = saved_stderr
        if saved_limit is None:
            del sys.tracebacklimit
        else:
            sys.tracebacklimit = saved_limit
    return buf.getvalue()[-4000:]


def child_main(pm, rw) -> None:
    """Run one worker.  Child of the postmaster, right after fork(); never returns."""
    global _current, _alive_fd, _wake_fd, _postmaster_pid
    code = 1
    events = None
    # 0. Give the CPU away once.  fork() placed us on the idlest CPU, which is usually the
    #    one the registrant sleeps on; the postmaster signals that registrant ~60 us later,
    #    and the kernel queues it there, behind us, while our startup (mostly copy-on-write
    #    faults) runs ~0.8 ms.  One yield here lets it read its pid first: on a 2-core
    #    machine it cut the start's p99 from 1.6 to 1.1 ms (A/B, 2,400 starts each).
    os.sched_yield()
    try:
        # 1. Signals, as PostgreSQL's BackgroundWorkerMain sets them: SIGHUP, SIGINT and
        #    SIGUSR1 are ignored until the worker's own code installs handlers (a stray one
        #    must not kill it: that would be a crash, and a crash-restart of every worker);
        #    SIGTERM ends it with exit 1; SIGQUIT is the crash-restart's immediate exit.
        #    The postmaster's handlers and wakeup fd are not ours: ours is a fresh
        #    self-pipe, so that sleep() cannot miss a SIGTERM (see sleep()).
        #    Through _signal, not signal: signal's wrappers turn every old handler and
        #    mask they return into enum members, and that enum machinery touched ~80
        #    pages the postmaster shares with us, each a copy-on-write fault (a third of
        #    a new worker's start-up CPU; A/B in benchmarks/README.md).  Same calls.  (The
        #    postmaster does not load signal at all: see "The image" in postmaster.py.)
        _wake_fd, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        _signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        for s in (_signal.SIGUSR1, _signal.SIGINT, _signal.SIGHUP):
            _signal.signal(s, _signal.SIG_IGN)
        _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
        _signal.signal(_signal.SIGTERM, _on_sigterm)
        _signal.signal(_signal.SIGQUIT, _on_sigquit)
        _signal.pthread_sigmask(_signal.SIG_SETMASK, ())  # the postmaster blocked them across fork()
        # 2. Postmaster death: as in PostgreSQL, a worker learns of it through the alive
        #    pipe at its next wait (sleep()), and one that never waits lives on.
        #    PR_SET_PDEATHSIG is bgwlab's opt-in safety net (Cluster.start(pdeathsig=True));
        #    armed after the fork, it must check that the postmaster did not die before.
        if pm.pdeathsig:
            from .procinfo import set_parent_death_signal

            set_parent_death_signal(_signal.SIGKILL)
            if os.getppid() != pm.pid:
                os._exit(1)
        # 3. Fds that only the postmaster may hold (above all: the alive pipe's write end).
        for fd in pm.private_fds():
            try:
                os.close(fd)
            except OSError:
                pass
        _alive_fd = pm.alive_r
        _postmaster_pid = pm.pid
        rec = rw.spec
        _current = WorkerInfo(rec.name, rec.entry, rec.main_arg, rec.extra, rw.slot,
                              rw.generation, pm.pid, pm.directory)
        events = pm.worker_events  # (made by the postmaster before fork: see setup)
        slot, gen = rw.slot, rw.generation
        # 4. Injected faults, in the order they would happen.
        if rec.slow_start_ns:
            if not sleep(rec.slow_start_ns / 1e9):
                os._exit(1)  # the postmaster died while we were slow
        if rec.crash_exit_code >= 0:
            events.emit("early_crash", slot, gen, injected=True, exit_code=rec.crash_exit_code)
            os._exit(rec.crash_exit_code)
        if rec.crash_signal:
            events.emit("early_crash", slot, gen, injected=True, signal=rec.crash_signal)
            _signal.signal(rec.crash_signal, _signal.SIG_DFL)
            os.kill(os.getpid(), rec.crash_signal)
            os._exit(1)  # only if the signal did not kill us
        # 5. Find the user's code.  Failing here is an early crash, never a postmaster failure.
        try:
            fn = _resolve(rec.entry)
        except Terminated:
            raise
        except BaseException as e:
            events.emit("early_crash", slot, gen, injected=False, reason="entry point not loadable",
                        error=f"{type(e).__name__}: {e}", traceback=_traceback())
            code = 1
            return
        # 6. User code.
        events.emit("reached_main", slot, gen)
        try:
            fn(rec.main_arg)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except Terminated:
            code = 1
        except BaseException as e:
            events.emit("worker_error", slot, gen, error=f"{type(e).__name__}: {e}",
                        traceback=_traceback())
            code = 1
    except Terminated:
        code = 1
    except BaseException:
        try:
            sys.stderr.write(_traceback())
        except Exception:
            pass
        code = 1
    finally:
        try:
            # On the way out: a late SIGTERM must not raise Terminated here, past every
            # handler above (it would unwind the child into the postmaster's own code).
            _signal.signal(_signal.SIGTERM, _signal.SIG_IGN)
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            pass
        os._exit(code & 0xFF)
