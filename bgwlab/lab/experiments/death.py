"""Death detection: how fast does a registrant learn that a running worker exited?

Three ways, each measured against the worker's own exit stamp: SIGUSR1 from the
postmaster (``handle.wait_for_shutdown()``), a pidfd of the worker, and polling
``handle.get_pid()``.
"""

from __future__ import annotations

import os
import random
import time

from ...backend import STARTED, STOPPED
from ..load import get_load
from ..strategies import Notify, PollPid, exit_path
from .grids import QUICK_TRIALS, quick_mode
from .results import run_metadata
from .trials import TrialRunner

__all__ = ["DEATH_METHODS", "death_experiment"]

DEATH_METHODS = ("sigusr1", "pidfd", "poll")


def _detect_death(method, handle, poll_s) -> None:
    if method == "sigusr1":
        handle.wait_for_shutdown()
    elif method == "pidfd":
        from ...latch import wait_fds

        status, pid = handle.get_pid()
        if status is not STARTED:
            return
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        try:
            # The pid is only ours while the postmaster has not reaped it: if the handle
            # still says STARTED with that pid *after* opening, the fd is the worker's.
            if handle.get_pid() != (STARTED, pid):
                return
            wait_fds([fd], None)
        finally:
            os.close(fd)
    elif method == "poll":
        while handle.get_pid()[0] is not STOPPED:
            time.sleep(poll_s)
    else:
        raise ValueError(f"unknown death-detection method {method!r}; choose from {DEATH_METHODS}")


def death_experiment(methods=DEATH_METHODS, trials: int | None = None, *, loads=("idle",),
                     poll_s: float = 0.01, run_ms: int = 30, quick: bool = False,
                     progress: bool = True, seed: int = 0, events: list | None = None):
    """How fast does a registrant learn that a running worker exited?

    ``sigusr1``: ``handle.wait_for_shutdown()`` woken by the postmaster's notification
    (which comes after the postmaster reaped the worker); ``pidfd``: ``poll()`` on a pidfd
    of the worker (readable the moment it exits; no postmaster involved); ``poll``:
    ``handle.get_pid()`` every ``poll_s``.  The worker runs ``run_ms`` plus a random 0 to
    2 x ``poll_s`` (so its exit is not phase-locked to the polling), writes its
    CLOCK_MONOTONIC time and exits; latency = detection - that stamp.  Columns: method, load, trial,
    poll_s, latency_ms, wait_cpu_ms, exit_code.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    q = quick_mode(quick)
    if trials is None:
        trials = 20
    if q:
        trials = min(trials, QUICK_TRIALS + 1)
    t_start = time.monotonic()
    meta = run_metadata()
    rng = random.Random(seed)
    rows = []
    bar = tqdm(total=trials * len(methods) * len(loads), desc="death", disable=not progress)
    try:
        for ln in loads:
            ld = get_load(ln)
            cells = [(m, k) for m in methods for k in range(trials)]
            rng.shuffle(cells)
            with TrialRunner(run_ms=run_ms) as runner:
                c = runner.cluster
                b, sentinels = runner._backend, runner._sentinels
                with ld.hogs_cm(), ld.stalls_cm(c):
                    for m, k in cells:
                        if ld.think_s:
                            time.sleep(rng.uniform(0, ld.think_s))
                        st = Notify() if m == "sigusr1" else PollPid(0.001)
                        # A random run time, so the exit falls at a random phase of the poll period.
                        ms = run_ms + rng.randrange(0, max(1, int(2 * poll_s * 1000)))
                        spec = st.make_spec(sentinels, name=f"death-{m}", run_ms=ms)
                        handle = b.register_dynamic_worker(spec)
                        out = st.wait(b, handle, spec)
                        if out.verdict != "started":
                            runner._settle(handle, c)
                            continue
                        cpu0 = time.process_time()
                        _detect_death(m, handle, poll_s)
                        t_seen = time.monotonic_ns()
                        cpu = (time.process_time() - cpu0) * 1000
                        runner._settle(handle, c)
                        try:
                            with open(exit_path(sentinels, handle.slot, handle.generation)) as f:
                                t_exit = int(f.read())
                        except (OSError, ValueError):
                            t_exit = None
                        runner._cleanup_files(sentinels, handle)
                        b.events.emit("verdict", handle.slot, handle.generation,
                                      strategy=f"death:{m}", verdict="stopped")
                        rows.append({"order": len(rows), "method": m, "load": ld.name, "trial": k,
                                     "poll_s": poll_s if m == "poll" else float("nan"),
                                     "latency_ms": (t_seen - t_exit) / 1e6 if t_exit else float("nan"),
                                     "wait_cpu_ms": cpu, "slot": handle.slot,
                                     "generation": handle.generation})
                        bar.update(1)
            if events is not None:
                events.extend(runner.events)
    finally:
        bar.close()
    df = pd.DataFrame(rows)
    meta.update({"experiment": {"name": "death", "methods": list(methods), "loads": list(loads),
                                "trials": trials, "poll_s": poll_s, "run_ms": run_ms, "seed": seed,
                                "quick": q},
                 "n_trials": len(df), "duration_s": round(time.monotonic() - t_start, 3),
                 "loadavg_end": list(os.getloadavg())})
    df.attrs["metadata"] = meta
    return df
