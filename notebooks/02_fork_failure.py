# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Fork failure
#
# > **The question.** The postmaster calls `fork()` for your worker and the kernel says
# > no (`EAGAIN`: too many processes; `ENOMEM`). Does the registrant find out — and how
# > long does it take?
#
# This is the case Haas's mail was about: "*if the worker isn't launched successfully
# (fork fails, …) you have no way of knowing*". Until 2013 a registrant could only wait
# for a sign of life and give up after a while. And even after handles and notification
# existed (2013), PostgreSQL got this path wrong for four more years: a `BGW_NEVER_RESTART`
# worker whose fork failed was not reported, so a waiter in
# `WaitForBackgroundWorkerStartup` **was never woken and hung**. We reproduce the fixed
# behaviour: the worker is forgotten and the waiter notified.
#
# > **In PostgreSQL** — the fix came in **2017**: Tom Lane's April 2017 commit "Fix
# > postmaster's handling of fork failure for a bgworker process" (before it the postmaster
# > half-behaved as if the fork had worked), then Robert Haas's "Report failure to start a
# > background worker": since then `maybe_start_bgworkers` ([source](https://github.com/postgres/postgres/blob/REL_17_STABLE/src/backend/postmaster/postmaster.c))
# > forgets a `BGW_NEVER_RESTART` worker whose start failed (`ForgetBackgroundWorker`) and
# > signals its `bgw_notify_pid`, so the handle reads `BGWH_STOPPED`. In December 2017
# > `parallel.c` learned to turn that into the error "parallel worker failed to
# > initialize" (`WaitForParallelWorkersToAttach` / `WaitForParallelWorkersToFinish`,
# > [source](https://github.com/postgres/postgres/blob/REL_17_STABLE/src/backend/access/transam/parallel.c)).
# > (The 2015 commit sometimes quoted for this was a different fix: a worker terminated
# > *before it started* is reported and its waiter notified.)
#
# In bgwlab the failure is injected *at the real call site*: the postmaster's fork path
# raises a real `OSError(EAGAIN)` (labelled `injected` in the event log).
#
# **Predict first.**
# 1. A `NEVER_RESTART` worker's fork fails. What does `wait_for_startup()` return, and
#    after roughly how long?
# 2. The same, but the worker may restart after 0.2 s and the fork fails only twice.
#    What now?
# 3. A registrant that instead waits for a sign-in with a timeout of T seconds: when does
#    it report the failure?

# %%
my_prediction = {
    "1. NEVER_RESTART, fork fails: wait_for_startup() returns": ...,   # e.g. "STOPPED"
    "1. ... after (ms)": ...,
    "2. restart=0.2, two failed forks: wait_for_startup() returns": ...,
    "3. timeout(T) reports the failed fork after (ms)": ...,
}

# %%
import errno
import time

import matplotlib.pyplot as plt
import pandas as pd

from bgwlab import Cluster, Fault, HandleStatus, WorkerSpec, NEVER_RESTART
from bgwlab.lab.plots import plot_timeline
from bgwlab.lab.strategies import PRELOAD, Notify, Timeout
from bgwlab.lab.teaching import check_value, claim, event_table, predictions, quick_mode

QUICK = quick_mode()
T = 0.5 if QUICK else 5.0          # the "wait 5 s and give up" timeout
cluster = Cluster.start(max_workers=4, preload=PRELOAD)
backend = cluster.connect()

# %% [markdown]
# ## 1. A `NEVER_RESTART` worker whose fork fails

# %%
doomed = backend.register_dynamic_worker(
    WorkerSpec(name="doomed", entry="bgwlab.examples:sleep_ms", main_arg=100,
               restart=NEVER_RESTART, fault=Fault.fork_failure(errno=errno.EAGAIN)))
doomed_result = doomed.wait_for_startup()
doomed_ms = (time.monotonic_ns() - doomed.registered_ns) / 1e6
print("wait_for_startup ->", doomed_result, f"{doomed_ms:.2f} ms after registering")
event_table(cluster.events(), slot=doomed.slot, generation=doomed.generation)

# %% [markdown]
# `fork_attempted` → `fork_failed` (errno 11, `EAGAIN`, injected) → `unregistered` (the
# worker is forgotten) → `notified` (SIGUSR1 to us) → `woke` with `STOPPED`: the time is
# printed above, from registration to knowing.
#
# > **In PostgreSQL** — `do_start_bgworker` ([source](https://github.com/postgres/postgres/blob/REL_17_STABLE/src/backend/postmaster/postmaster.c))
# > logs "could not fork worker process" and marks the worker as crashed
# > (`rw_crashed_at`); the next pass of `maybe_start_bgworkers` forgets a NEVER_RESTART
# > one and signals its waiter. bgwlab forgets it in the same pass — sooner by one loop of
# > the postmaster, the same outcome.

# %% [markdown]
# ## 2. A restartable worker: the postmaster keeps trying
#
# For a worker with a restart interval, a fork failure is *not* the end: the postmaster
# retries after the interval, and — as in PostgreSQL — does **not** signal the registrant
# about the failed attempt (nothing final happened). The handle reads `NOT_YET_STARTED`
# meanwhile.

# %%
stubborn = backend.register_dynamic_worker(
    WorkerSpec(name="stubborn", entry="bgwlab.examples:sleep_ms", main_arg=100,
               restart=0.2, fault=Fault.fork_failure(errno=errno.EAGAIN, times=2)))
stubborn_early = stubborn.wait_for_startup(timeout=0.1)
stubborn_result = stubborn.wait_for_startup()
print("wait_for_startup(timeout=0.1) ->", stubborn_early)
print("wait_for_startup()            ->", stubborn_result)
stubborn.wait_for_shutdown()
t = event_table(cluster.events(), slot=stubborn.slot, generation=stubborn.generation)
t[t.kind.isin(["registered", "fork_attempted", "fork_failed", "restart_scheduled", "forked", "woke"])]

# %% [markdown]
# (`wait_for_startup()` may also return `STOPPED`: the worker runs only 100 ms, and on a
# busy machine it can be over before this kernel wakes.)
#
# > **In PostgreSQL** — the same: a restartable worker whose fork failed keeps its slot
# > with pid -1 (`BGWH_NOT_YET_STARTED`) and is retried once `bgw_restart_time` has passed
# > since `rw_crashed_at` (`maybe_start_bgworkers`, [source](https://github.com/postgres/postgres/blob/REL_17_STABLE/src/backend/postmaster/postmaster.c));
# > nobody is signalled for the failed attempt.

# %% [markdown]
# ## 3. Notification against "wait T seconds and give up"
#
# Now the two designs side by side, on the same failure. Both use the *sign-in*
# convention of `bgwlab.lab.strategies`: the worker's first act in user code is to create a
# sentinel file. `Notify` additionally holds a handle and is woken by the postmaster;
# `Timeout(T)` only looks for the sentinel until `T` has passed.

# %%
rows = []
for strategy in (Notify(), Timeout(T)):
    for fault in (None, Fault.fork_failure()):
        h, out = strategy.start(backend, cluster.directory, fault=fault)
        rows.append((strategy.label, "fork fails" if fault else "no fault", out.verdict,
                     round(out.time_to_verdict_ms, 2)))
cmp = pd.DataFrame(rows, columns=["strategy", "case", "verdict", "time_to_verdict_ms"])
cmp

# %% [markdown]
# (The workers run 10 ms and exit by themselves. `Timeout` registers without `notify`, so it
# could not even `wait_for_shutdown()`: nobody would wake it, as in PostgreSQL, where the
# waits need `bgw_notify_pid`.)
#
# Both strategies are right when the worker starts (the timeout looks for the sign-in every
# 10 ms, so it may be a few ms later). When the fork fails, `Notify` says `failed` at
# once, while `Timeout` can only say `timed_out` — after exactly `T`. It cannot even tell a
# failure from a slow start. Your predictions beside this run:

# %%
_ff = cmp[cmp.case == "fork fails"].set_index("strategy").time_to_verdict_ms
notify_ff_ms, timeout_ff_ms = _ff["notify"], _ff[Timeout(T).label]
print(f"fork failure reported by notify after {notify_ff_ms:.2f} ms, by timeout({T:g}) after "
      f"{timeout_ff_ms:.1f} ms: {timeout_ff_ms / notify_ff_ms:,.0f} times later")
predictions(my_prediction, {
    "1. NEVER_RESTART, fork fails: wait_for_startup() returns": doomed_result[0],
    "1. ... after (ms)": doomed_ms,
    "2. restart=0.2, two failed forks: wait_for_startup() returns": stubborn_result[0],
    "3. timeout(T) reports the failed fork after (ms)": timeout_ff_ms,
})

# %% [markdown]
# ## The figure

# %%
fig, ax = plt.subplots(figsize=(9, 3.4))
plot_timeline(cluster.events(), ax=ax,
              slots=[(doomed.slot, doomed.generation), (stubborn.slot, stubborn.generation)]);
ax.set_title("fork failures: forgotten at once (NEVER_RESTART) or retried (restart=0.2 s)");

# %% tags=["check", "remove-cell"]
# Key claims, on this run: the waiter of a NEVER_RESTART worker whose fork failed is woken
# with STOPPED; a restartable one stays NOT_YET_STARTED through its failed forks; and
# notification reports a failed fork long before a timeout of T can.
claim(doomed_result == (HandleStatus.STOPPED, None), "the doomed worker's waiter woke with STOPPED")
_st = event_table(cluster.events(), slot=stubborn.slot, generation=stubborn.generation)
claim(stubborn_early[0] is HandleStatus.NOT_YET_STARTED and (_st.kind == "fork_failed").sum() == 2
      and (_st.kind == "forked").sum() == 1, "stubborn: NOT_YET_STARTED through two failed forks, then forked")
claim(timeout_ff_ms >= 0.95 * T * 1000 and notify_ff_ms < 0.5 * T * 1000,
      f"notify reported the failed fork well before T = {T:g} s; timeout only at T")

# %% [markdown]
# ## Your turn
#
# Register a worker (`"bgwlab.examples:sleep_ms"`, `main_arg=50`) whose fork fails three
# times (`Fault.fork_failure(errno=errno.EAGAIN, times=3)`) with `restart=0.1`, wait for
# its start, and count from the event log how many times the postmaster's fork failed for
# it. Store the count in `n_failed`.

# %%
n_failed = ...   # your code here

# %% tags=["solution"]
_h = backend.register_dynamic_worker(
    WorkerSpec(name="three-times", entry="bgwlab.examples:sleep_ms", main_arg=50, restart=0.1,
               fault=Fault.fork_failure(errno=errno.EAGAIN, times=3)))
_h.wait_for_startup()
_h.wait_for_shutdown()
n_failed = len(event_table(cluster.events(), slot=_h.slot, generation=_h.generation, kinds=["fork_failed"]))

# %%
check_value(n_failed, 3, "failed forks before the worker started",
            hint="event_table(cluster.events(), slot=h.slot, generation=h.generation, kinds=['fork_failed'])")

# %%
cluster.stop()

# %% [markdown]
# ## Exercises
#
# 1. In section 2, why does `wait_for_startup(timeout=0.1)` return `NOT_YET_STARTED`
#    rather than `STOPPED`?
#
# <details><summary>Answer</summary>
#
# The worker is restartable: after a failed fork the slot's pid stays -1 ("not started
# yet") and a retry is scheduled. Nothing is final, so the postmaster does not notify and
# the handle truthfully says "not yet".
# </details>
#
# 2. What would happen to a waiter of a `NEVER_RESTART` worker if the postmaster, after a
#    failed fork, forgot the worker but **did not** send the signal?
#
# <details><summary>Answer</summary>
#
# The waiter would sleep on its latch forever (or until some unrelated signal made it look
# again): the PostgreSQL bug fixed in 2017 (Robert Haas, "Report failure to start a
# background worker"). The slot would read `STOPPED` — but nobody tells the waiter to look.
# A notification protocol must cover every path to a final state, failure paths included.
# </details>
#
# 3. As a non-root user you can make `fork()` fail for real: `RLIMIT_NPROC`. Which
#    process's limit matters, and why would you label those failures differently?
#
# <details><summary>Answer</summary>
#
# The postmaster's (it is the process that forks; the limit counts processes of its user).
# A genuine failure is not under the experimenter's control: it shows the mechanism works
# outside the injection point, while injected failures make an experiment reproducible. The
# event log says which is which (`injected: true/false`).
# </details>
#
# 4. Pick `T` for the `Timeout` strategy so that a failed start is reported within 50 ms.
#    What risk did you just take? (Notebooks 04 and 05 measure it.)
#
# <details><summary>Answer</summary>
#
# Any start slower than 50 ms — a busy machine, a stalled postmaster, a worker with heavy
# initialisation — is reported as a failure although the worker runs: a *spurious
# timeout*. Worse, the worker now runs with nobody waiting for it.
# </details>
