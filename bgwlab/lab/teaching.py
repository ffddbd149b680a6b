"""Small helpers the teaching notebooks call, so that their cells stay short.

* ``quick_mode()`` -- ``BGWLAB_QUICK=1`` means small trial counts everywhere.
* ``event_table(events, ...)`` -- events as a DataFrame with times in ms from a reference.
* ``time_until_gone(pids, since_ns)`` / ``ExitWatch(pids)`` -- when each process exited
  (pidfds, no polling).
* ``wait_for_event(cluster, kind, handle)`` -- wait until the log has such an event.
* Exercises: ``check(ok, what, hint)`` / ``check_value(answer, expected, what, hint)``
  tell a student whether an exercise is right (✓ / ✗ and a hint; never raise), and
  ``predictions(yours, measured)`` sets the "predict first" guesses beside the run's
  numbers.  ``claim(ok, text)`` is the other kind of check: a notebook's key claim, asserted
  on the run's data in a cell tagged ``check`` (runs in CI; left out of the student copy).
* ``load_reference(name)`` -- the committed reference run in ``data/reference/`` (or None).
* Notebook 08, how a latch works:
  ``race_demo()`` shows the lost wakeup of a bare signal next to a latch, and
  ``measure_wakeups()`` / ``plot_wakeups()`` measure how fast (and how cheaply) a waiter
  learns that something happened: eventfd latch, self-pipe latch, pidfd, polling;
  ``torn_store_demo()`` shows why the word a waiter reads must be written with one store.

Nothing here forks the calling process: helper processes are started with
``subprocess`` (fork+exec in C), the only safe way from a multi-threaded Jupyter kernel.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

__all__ = ["quick_mode", "event_table", "time_until_gone", "wait_for_event", "race_demo",
           "measure_wakeups", "plot_wakeups", "SIGNAL_MECHANISMS", "EXIT_MECHANISMS",
           "check", "check_value", "predictions", "claim", "load_reference", "REFERENCE_DIR",
           "ExitWatch", "torn_store_demo"]


def quick_mode() -> bool:
    """True when ``BGWLAB_QUICK=1``: notebooks then use small trial counts."""
    return os.environ.get("BGWLAB_QUICK", "") not in ("", "0")


# -- exercises, predictions, key claims ---------------------------------------------------------
def _unanswered(x) -> bool:
    return x is None or x is Ellipsis


def check(ok, what: str, hint: str = "") -> bool:
    """Tell a student whether an exercise is done right: prints ``✓ what`` or ``✗ what`` and
    the hint.  Returns `ok` as a bool; never raises (a wrong answer is not an error)."""
    ok = bool(ok) if not _unanswered(ok) else False
    if ok:
        print(f"✓ {what}")
    else:
        print(f"✗ {what}" + (f" -- hint: {hint}" if hint else ""))
    return ok


def check_value(answer, expected, what: str, hint: str = "", *, rel: float = 0.05,
                abs_tol: float = 0.0) -> bool:
    """``check`` for a value: numbers must agree within `rel` (relative) or `abs_tol`;
    anything else must be equal.  ``...`` or None means "not answered yet"."""
    import math
    import numbers

    if _unanswered(answer):
        return check(False, f"{what}: not answered yet (replace the ... with your code)", hint)
    if isinstance(answer, numbers.Number) and isinstance(expected, numbers.Number) \
            and not isinstance(answer, bool):
        ok = math.isclose(float(answer), float(expected), rel_tol=rel, abs_tol=abs_tol)
        shown = f"{answer:.4g}" if isinstance(answer, float) else f"{answer}"
    else:
        ok = answer == expected
        shown = repr(answer)
    return check(ok, f"{what}: {shown}", hint if not ok else "")


def _fmt(v) -> str:
    if _unanswered(v):
        return "(no guess written)"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(getattr(v, "name", v))


def predictions(yours: dict, measured: dict):
    """Your "predict first" guesses beside what the run measured, one row per question.

    `yours` and `measured` share keys (the questions); a guess left as None or ``...``
    shows as such.  Returns a DataFrame (question, your prediction, measured).
    """
    import pandas as pd

    keys = list(dict.fromkeys([*yours, *measured]))
    return pd.DataFrame([dict(question=k, **{"your prediction": _fmt(yours.get(k)),
                                             "measured": _fmt(measured.get(k))}) for k in keys])


class ClaimFailed(AssertionError):
    """A notebook's key claim does not hold on this run's data."""


def claim(ok, text: str) -> None:
    """Assert a notebook's key claim on the run's data (cells tagged ``check``, run by CI).

    Raises ``ClaimFailed`` naming the claim; prints ``claim holds: text`` otherwise.
    """
    if not ok:
        raise ClaimFailed(f"the notebook's claim does not hold on this run: {text}")
    print(f"claim holds: {text}")


REFERENCE_DIR = Path(__file__).resolve().parents[2] / "data" / "reference"


def load_reference(name: str = "headline"):
    """The committed reference run ``data/reference/NAME.csv`` as a DataFrame (with its
    metadata in ``df.attrs["metadata"]``), or None if this checkout has none."""
    import json

    from .experiments.results import load_results

    path = REFERENCE_DIR / f"{name}.csv"
    if not path.exists():
        return None
    df = load_results(path)
    meta = REFERENCE_DIR / f"{name}.metadata.json"
    if meta.exists() and not df.attrs.get("metadata"):
        df.attrs["metadata"] = json.loads(meta.read_text())
    return df


def event_table(events, slot: int | None = None, generation: int | None = None,
                kinds=None, since_ns: int | None = None):
    """Events as a DataFrame: ``t_ms`` (from `since_ns`, default the first event shown),
    kind, source, pid, slot, generation, detail.  Filter by slot, generation and kinds."""
    import pandas as pd

    rows = [e for e in events
            if (slot is None or e.slot == slot)
            and (generation is None or e.generation == generation)
            and (kinds is None or e.kind in kinds)]
    t0 = since_ns if since_ns is not None else (rows[0].t_ns if rows else 0)
    return pd.DataFrame(
        [dict(t_ms=round((e.t_ns - t0) / 1e6, 3), kind=e.kind, source=e.source, pid=e.pid,
              slot=e.slot, generation=e.generation,
              detail=", ".join(f"{k}={v}" for k, v in e.detail.items() if k != "traceback"))
         for e in rows],
        columns=["t_ms", "kind", "source", "pid", "slot", "generation", "detail"])


def wait_for_event(cluster, kind: str, handle=None, timeout: float = 10.0, where=None):
    """The first event of `kind` in `cluster`'s log (of `handle`'s slot and generation, if
    given, and for which ``where(event)`` is true, if given), waiting up to `timeout`
    seconds for it to be written; TimeoutError after that.

    For what no handle call waits for, e.g. ``reached_main`` (the worker ran its first line).
    The log is a file: this looks every 10 ms.
    """
    deadline = time.monotonic() + timeout
    while True:
        for e in cluster.events():
            if e.kind == kind and (handle is None or (e.slot, e.generation) == (handle.slot, handle.generation)) \
                    and (where is None or where(e)):
                return e
        if time.monotonic() > deadline:
            whose = f" for slot {handle.slot} generation {handle.generation}" if handle is not None else ""
            raise TimeoutError(f"no {kind!r} event{whose} after {timeout:g} s")
        time.sleep(0.01)


class ExitWatch:
    """Pin processes now (pidfds), learn later when each exited: ``ExitWatch(pids).wait(since_ns)``.

    Opening the pidfds first matters when something else is about to end and reap the
    processes (e.g. ``Cluster.stop()``): a pid that is gone *and reaped* can no longer be
    opened, and its exit time would be lost.
    """

    def __init__(self, pids):
        self.fds, self.gone = {}, {}
        for pid in pids:
            try:
                self.fds[os.pidfd_open(pid)] = pid
            except OSError:
                self.gone[pid] = 0.0  # already gone (and reaped) before we looked

    def wait(self, since_ns: int, timeout: float = 10.0) -> dict:
        """pid -> ms after `since_ns` when it exited (None: still running at `timeout`)."""
        fds, out = self.fds, dict(self.gone)
        deadline = time.monotonic() + timeout
        try:
            while fds:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                p = select.poll()
                for fd in fds:
                    p.register(fd, select.POLLIN)
                ready = p.poll(int(remaining * 1000) + 1)
                now = time.monotonic_ns()
                for fd, _ in ready:
                    out[fds.pop(fd)] = (now - since_ns) / 1e6
                    os.close(fd)
        finally:
            for fd, pid in fds.items():
                out[pid] = None
                os.close(fd)
            fds.clear()
        return out


def time_until_gone(pids, since_ns: int, timeout: float = 10.0) -> dict:
    """Wait (on pidfds) until every process in `pids` has exited; return pid -> ms after `since_ns`.

    A pid that was already gone maps to 0.0 only if it cannot be opened at all; one still
    running at `timeout` maps to None.
    """
    return ExitWatch(pids).wait(since_ns, timeout)


# -- notebook 08: the lost wakeup ------------------------------------------------------------
def _dispatcher():
    from ..latch import dispatcher

    dispatcher.install()  # first call must be in the main thread (a notebook cell is)
    return dispatcher


def race_demo(timeout: float = 0.3, send_after: float = 0.05):
    """Wait for "the worker started" (a flag + SIGUSR1), four ways; return a DataFrame.

    Waiters: ``bare`` (check the flag, then sleep in ``select()`` hoping the signal wakes
    it) and ``latch`` (reset the latch, check, ``poll()`` on the latch's fd).  The signal
    lands either *in the window* (after the check, before the sleep -- we send it right
    there, deterministically) or *during the sleep* (a thread sends it `send_after` s
    later).  Columns: waiter, signal, signal_at_ms, woke_at_ms, lost (woke only at the
    timeout although the signal had arrived).
    """
    import pandas as pd

    from ..latch import EventfdLatch

    d = _dispatcher()
    rows = []
    for when in ("in the window", "during the sleep"):
        for waiter in ("bare", "latch"):
            flag = {"set": False, "t": None}
            latch = EventfdLatch()
            d.add(latch)

            def send():
                flag["set"] = True  # the condition becomes true...
                flag["t"] = time.monotonic_ns()
                os.kill(os.getpid(), signal.SIGUSR1)  # ...and the waiter is signalled

            timer = None
            try:
                t0 = time.monotonic_ns()
                if when == "during the sleep":
                    timer = threading.Timer(send_after, send)
                    timer.start()
                if waiter == "latch":
                    latch.reset()
                ready = flag["set"]  # (1) check
                if when == "in the window":
                    send()  # the signal lands here: after the check, before the sleep
                if not ready:  # (2) sleep
                    if waiter == "bare":
                        select.select([], [], [], timeout)  # only a signal "should" end this
                    else:
                        latch.wait(timeout)
                t1 = time.monotonic_ns()
            finally:
                if timer is not None:
                    timer.join()
                d.remove(latch)
                latch.close()
            woke = (t1 - t0) / 1e6
            rows.append(dict(waiter=waiter, signal=when, signal_at_ms=round((flag["t"] - t0) / 1e6, 3),
                             woke_at_ms=round(woke, 3), lost=woke >= timeout * 1000 * 0.9))
    return pd.DataFrame(rows)


# -- notebook 08: measured wakeups -------------------------------------------------------------
SIGNAL_MECHANISMS = ("eventfd latch", "self-pipe latch", "polling 1 ms", "polling 10 ms")
EXIT_MECHANISMS = ("pidfd", "polling 1 ms", "polling 10 ms")

_PINGER = r"""
import os, signal, sys, time
parent = int(sys.argv[1])
while True:
    cmd = os.read(0, 64)
    if not cmd:
        break
    time.sleep(float(cmd) / 1000)
    t = time.monotonic_ns()
    os.write(1, f"{t}\n".encode())   # the news, where the waiter will look for it...
    os.kill(parent, signal.SIGUSR1)  # ...and the signal that says "look"
"""

_EXITER = r"""
import os, sys, time
time.sleep(float(sys.argv[1]) / 1000)
sys.stdout.write(f"{time.monotonic_ns()}\n")
sys.stdout.flush()
os._exit(0)
"""


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def _poll_until(predicate, interval: float, limit: float = 5.0) -> None:
    end = time.monotonic() + limit
    while not predicate() and time.monotonic() < end:
        time.sleep(interval)


def _signal_trial(mechanism: str, pinger, delay_ms: float, d) -> tuple[float, float]:
    """One wait for the pinger's news, the way real code waits: look, sleep, look again.

    "Look" = is the pinger's reply readable (a stand-in for reading a slot in shared
    memory); the sleep is the mechanism under test.  Spurious wakeups just loop.
    """
    from ..latch import EventfdLatch, PipeLatch

    out = pinger.stdout.fileno()
    end = time.monotonic() + 5.0
    if mechanism.startswith("polling"):
        interval = float(mechanism.split()[1]) / 1000
        c0 = time.thread_time()
        os.write(pinger.stdin.fileno(), f"{delay_ms}".encode())
        _poll_until(lambda: _readable(out), interval)
    else:
        latch = EventfdLatch() if mechanism.startswith("eventfd") else PipeLatch()
        d.add(latch)
        try:
            c0 = time.thread_time()
            os.write(pinger.stdin.fileno(), f"{delay_ms}".encode())
            latch.reset()                        # reset, then look, then sleep
            while not _readable(out) and time.monotonic() < end:
                d.wait(latch, max(0.0, end - time.monotonic()))
                latch.reset()
        finally:
            d.remove(latch)
            latch.close()
    t1 = time.monotonic_ns()
    cpu = time.thread_time() - c0
    t_sent = int(os.read(out, 64))
    return (t1 - t_sent) / 1e3, cpu * 1e6


def _exit_trial(mechanism: str, delay_ms: float) -> tuple[float, float]:
    proc = subprocess.Popen([sys.executable, "-S", "-c", _EXITER, str(delay_ms)],
                            stdout=subprocess.PIPE, text=True)
    c0 = time.thread_time()  # after the spawn: only the waiting counts
    try:
        if mechanism == "pidfd":
            fd = os.pidfd_open(proc.pid)
            try:
                select.select([fd], [], [], 10)
            finally:
                os.close(fd)
        else:
            interval = float(mechanism.split()[1]) / 1000
            _poll_until(lambda: os.waitid(os.P_PID, proc.pid,
                                          os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None,
                        interval, limit=10)
        t1 = time.monotonic_ns()
        cpu = time.thread_time() - c0
        t_last = int(proc.stdout.readline())
    finally:
        proc.stdout.close()
        proc.wait()
    return (t1 - t_last) / 1e3, cpu * 1e6


def measure_wakeups(trials: int = 50, signal_mechanisms=SIGNAL_MECHANISMS,
                    exit_mechanisms=EXIT_MECHANISMS, progress: bool = True, seed: int = 0):
    """Measure how long a waiter takes to notice (a) a SIGUSR1 from another process and
    (b) another process's exit, for each mechanism; trials interleaved in random order.

    The other process records CLOCK_MONOTONIC just before it signals / exits, after a
    random delay of 2-20 ms so that the waiter really sleeps.  For signals it first writes
    that time to a pipe, which is what the waiter looks at after every wakeup (spurious
    wakeups, e.g. from an earlier signal, just make it look again).  Returns a DataFrame:
    event ("signal"/"exit"), mechanism, trial, latency_us, cpu_us (CPU time of the
    waiting thread over the whole wait, delay included).
    """
    import random

    import pandas as pd
    from tqdm.auto import tqdm

    d = _dispatcher()
    rng = random.Random(seed)
    plan = [("signal", m, i) for m in signal_mechanisms for i in range(trials)]
    plan += [("exit", m, i) for m in exit_mechanisms for i in range(trials)]
    rng.shuffle(plan)
    rows = []
    pinger = subprocess.Popen([sys.executable, "-S", "-c", _PINGER, str(os.getpid())],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    try:
        for event, mech, i in tqdm(plan, desc="wakeups", disable=not progress):
            delay = rng.uniform(2, 20)
            if event == "signal":
                lat, cpu = _signal_trial(mech, pinger, delay, d)
            else:
                lat, cpu = _exit_trial(mech, delay)
            rows.append(dict(event=event, mechanism=mech, trial=i, delay_ms=round(delay, 3),
                             latency_us=round(lat, 1), cpu_us=round(cpu, 1)))
    finally:
        pinger.stdin.close()
        pinger.stdout.close()
        pinger.wait(10)
    return pd.DataFrame(rows)


def plot_wakeups(df, ax=None):
    """Latency to notice each event, per mechanism (log scale; dots = trials, bar = median)."""
    import numpy as np

    if ax is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(8, 3.6))
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    order = {m: i for i, m in enumerate(SIGNAL_MECHANISMS + EXIT_MECHANISMS)}
    groups = [(ev, m) for ev in ("signal", "exit") for m in
              sorted(df.loc[df.event == ev, "mechanism"].unique(), key=lambda m: order.get(m, 99))]
    labels = []
    for y, (ev, m) in enumerate(groups):
        sub = df[(df.event == ev) & (df.mechanism == m)]
        lat = sub.latency_us.clip(lower=1).to_numpy()
        jitter = np.linspace(-0.25, 0.25, len(lat)) if len(lat) > 1 else np.zeros(len(lat))
        colour = "C0" if ev == "signal" else "C1"
        ax.scatter(lat, y + jitter, s=8, alpha=0.5, color=colour)
        med = float(np.median(lat))
        ax.plot([med, med], [y - 0.35, y + 0.35], color="black", lw=2)
        ax.annotate(f"median {med:,.0f} µs\nCPU {sub.cpu_us.median():,.0f} µs/wait",
                    (float(lat.max()) * 1.3, y), fontsize=7, ha="left", va="center")
        labels.append(f"{ev}: {m}")
    ax.set_yticks(range(len(groups)), labels)
    ax.set_xscale("log")
    ax.set_xlim(right=float(df.latency_us.max()) * 8)
    ax.set_xlabel("time from the event to the waiter running (µs, log scale)")
    ax.set_ylim(-0.7, len(groups) - 0.1)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("How fast does a waiter notice? (black bar: median; CPU: median per wait)")
    fig.tight_layout()
    return fig


# -- notebook 08, section 4: one store ----------------------------------------------------------
_STORE_WRITER = r"""
import mmap, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDWR)
mm = mmap.mmap(fd, 4096)
os.close(fd)
words = memoryview(mm).cast("i")
print("ready", flush=True)
if sys.argv[2] == "pack_into":
    while True:
        for _ in range(1000):
            struct.pack_into("<i", mm, 8, -1)   # what bgwlab's set_pid did before issue 16
else:
    while True:
        for _ in range(1000):
            words[2] = -1                       # one aligned 4-byte store
"""

STORE_METHODS = ("struct.pack_into", "one store (memoryview)")


def torn_store_demo(seconds: float = 0.5):
    """Another process rewrites ``pid = -1`` (the value already there) as fast as it can,
    first with ``struct.pack_into``, then with one typed store, while this process reads
    the word; each read of 0 is a moment when a registrant would have been told STOPPED.

    Returns a DataFrame: method, reads, zeros (reads that saw 0), zeros_per_million.
    The writer is started with ``subprocess`` and killed and reaped before returning.
    """
    import mmap
    import tempfile

    import pandas as pd

    rows = []
    with tempfile.TemporaryDirectory(prefix="bgwlab-store-") as d:
        path = os.path.join(d, "word")
        with open(path, "wb") as f:
            f.write(b"\0" * 4096)
        fd = os.open(path, os.O_RDWR)
        mm = mmap.mmap(fd, 4096)
        os.close(fd)
        words = memoryview(mm).cast("i")
        try:
            for method, arg in zip(STORE_METHODS, ("pack_into", "one_store")):
                words[2] = -1
                p = subprocess.Popen([sys.executable, "-c", _STORE_WRITER, path, arg],
                                     stdout=subprocess.PIPE, text=True)
                try:
                    if p.stdout.readline().strip() != "ready":
                        raise RuntimeError("the writer process did not start")
                    reads = zeros = 0
                    end = time.monotonic() + seconds
                    while time.monotonic() < end:
                        for _ in range(1000):
                            if words[2] == 0:
                                zeros += 1
                        reads += 1000
                finally:
                    p.kill()
                    p.wait()
                    p.stdout.close()
                rows.append({"method": method, "reads": reads, "zeros": zeros,
                             "zeros_per_million": round(zeros / reads * 1e6, 1)})
        finally:
            words.release()
            mm.close()
    return pd.DataFrame(rows)
