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
# # 03 · Early crash: started, and dead before the first line
#
# > **The question.** The fork succeeds, so the registrant hears `STARTED` — and then the
# > worker dies before it reaches your code. Who finds out, how fast, and what does the
# > rest of the cluster pay for it?
#
# Haas's second failure case: "*the process crashes before it reaches your code*". It
# happens for real when the worker cannot load its entry point (a typo, a missing
# module), runs out of memory while initialising, or hits a bug in start-up code.
#
# How the postmaster reads a worker's death (PostgreSQL's rules, reproduced by bgwlab):
#
# | the worker… | exit status | the postmaster… |
# |---|---|---|
# | returned from its entry point | 0 | unregisters it, notifies |
# | raised / could not load its entry point | 1 | notifies; restarts it after `restart` s unless `NEVER_RESTART` |
# | any other exit code, or died by a signal | crash | **crash-restart**: stops *every* worker, reinitialises, forgets the `NEVER_RESTART` ones, restarts the others at once |
#
# > **In PostgreSQL** — `CleanupBackgroundWorker` and `HandleChildCrash` in
# > [postmaster.c](https://github.com/postgres/postgres/blob/REL_17_STABLE/src/backend/postmaster/postmaster.c)
# > read the exit status this way; exit 0 unregisters, exit 1 reports the exit
# > (`ReportBackgroundWorkerExit`, [bgworker.c](https://github.com/postgres/postgres/blob/REL_17_STABLE/src/backend/postmaster/bgworker.c)).
#
# **Predict first.**
# 1. A worker exits with status 1 before main. What does `wait_for_startup()` return?
# 2. A worker dies of `SIGSEGV` before main, while an innocent bystander worker is
#    running. What happens to the bystander?

# %%
my_prediction = {
    "1. exit(1) before main: wait_for_startup() returns": ...,   # e.g. "STARTED"
    "2. the NEVER_RESTART bystander ends as": ...,
    "2. the restartable bystander (restart=5 s) runs again after (ms)": ...,
}

# %%
import signal
import time

import matplotlib.pyplot as plt
import pandas as pd

from bgwlab import Cluster, Fault, HandleStatus, WorkerSpec, NEVER_RESTART
from bgwlab.lab.plots import plot_timeline
from bgwlab.lab.strategies import PRELOAD, Notify
from bgwlab.lab.teaching import check_value, claim, event_table, predictions, quick_mode, wait_for_event

QUICK = quick_mode()
cluster = Cluster.start(max_workers=4, preload=PRELOAD)
backend = cluster.connect()
KINDS = ["registered", "forked", "woke", "early_crash", "exited", "crash_restart", "unregistered"]

# %% [markdown]
# ## 1. `exit(1)` before main: `STARTED`, then `STOPPED`

# %%
h = backend.register_dynamic_worker(
    WorkerSpec(name="fragile", entry="bgwlab.examples:sleep_ms", main_arg=100,
               fault=Fault.slow_start(0.2) | Fault.crash_before_main(exit_code=1)))
fragile_startup = h.wait_for_startup()
print("wait_for_startup  ->", fragile_startup)
print("wait_for_shutdown ->", h.wait_for_shutdown())
t = event_table(cluster.events(), slot=h.slot, generation=h.generation)
t[t.kind.isin(KINDS)]

# %% [markdown]
# The handle said `STARTED` with a pid — truthfully: the fork worked. The worker never
# reached main (`early_crash`, then `exited` with code 1). A registrant that stops at
# `wait_for_startup()` believes it has a worker. One that keeps listening hears the exit
# 0.2 s later, because notification covers *every* exit.
#
# (The worker lingers 0.2 s before it dies — `Fault.slow_start(0.2)` — so that this kernel,
# woken by the fork, reads the handle while the process still exists. It is a race all
# the same: a registrant that wakes only after the death — on a very busy machine — reads
# `STOPPED, None`, also truthfully, as in PostgreSQL, where the slot's pid is already 0.
# Either way the event log shows `forked`, then `exited`.)

# %% [markdown]
# ## 2. The same failure, genuinely: an entry point that does not exist

# %%
typo = backend.register_dynamic_worker(
    WorkerSpec(name="typo", entry="bgwlab.exampels:sleep_ms", main_arg=100))
print(typo.wait_for_startup(), typo.wait_for_shutdown())
e = [e for e in cluster.events() if e.kind == "early_crash" and e.generation == typo.generation][0]
print("injected:", e.detail["injected"], "|", e.detail["reason"], "|", e.detail["error"])

# %% [markdown]
# ## 3. Death by signal before main: the crash-restart cycle
#
# A worker killed by a signal may have left shared memory in any state, so the postmaster
# assumes the worst: it sends **every** worker SIGQUIT (each exits at once with code 2),
# waits for all of them, reinitialises, forgets the `NEVER_RESTART` workers, and restarts
# every other worker **at once** — whatever its restart interval. Watch two bystanders;
# the restartable one has `restart=5` seconds:
#
# > **In PostgreSQL** — `HandleChildCrash` ([postmaster.c](https://github.com/postgres/postgres/blob/REL_17_STABLE/src/backend/postmaster/postmaster.c))
# > sends SIGQUIT to every child, backends included; a worker's SIGQUIT handler is
# > `SignalHandlerForCrashExit` ([interrupt.c](https://github.com/postgres/postgres/blob/REL_17_STABLE/src/backend/postmaster/interrupt.c)),
# > installed by `InitPostmasterChild`: `_exit(2)`, no cleanup. After the reset,
# > `ResetBackgroundWorkerCrashTimes` ([bgworker.c](https://github.com/postgres/postgres/blob/REL_17_STABLE/src/backend/postmaster/bgworker.c))
# > forgets the `BGW_NEVER_RESTART` workers and sets `rw_crashed_at = 0` for the others,
# > so they restart at once; it also clears their `bgw_notify_pid` ("they're history"):
# > every registrant died in the crash. bgwlab's registrants (this kernel) survive it, so
# > bgwlab wakes them instead — the one difference here.

# %%
calm = backend.register_dynamic_worker(
    WorkerSpec(name="bystander-never", entry="bgwlab.examples:sleep_forever", restart=NEVER_RESTART))
hardy = backend.register_dynamic_worker(
    WorkerSpec(name="bystander-restart", entry="bgwlab.examples:sleep_forever", restart=5))
print("before:", calm.wait_for_startup(), hardy.wait_for_startup())
pid_before = hardy.get_pid()[1]

segv = backend.register_dynamic_worker(
    WorkerSpec(name="segv", entry="bgwlab.examples:sleep_ms", main_arg=100,
               fault=Fault.crash_before_main(signal=signal.SIGSEGV)))
print("segv:", segv.wait_for_startup(), segv.wait_for_shutdown())
calm_end = calm.wait_for_shutdown()
print("bystander-never  :", calm_end)
print("bystander-restart, right after the crash:", hardy.get_pid())
# No handle call waits for a *re*start (STOPPED returns at once), so look every 10 ms:
deadline = time.monotonic() + 10
while hardy.get_pid()[1] in (None, pid_before) and time.monotonic() < deadline:
    time.sleep(0.01)
status, pid_after = hardy.get_pid()
print(f"bystander-restart, a moment later: {status.name}, pid {pid_before} -> {pid_after}, "
      f"same generation {hardy.generation}")
# The postmaster signals first and writes a start's events after: wait for the line.
crash_end_ns = wait_for_event(cluster, "crash_restart", where=lambda e: e.detail.get("phase") == "end"
                              and e.t_ns >= segv.registered_ns).t_ns
refork_ns = wait_for_event(cluster, "forked", handle=hardy, where=lambda e: e.t_ns >= crash_end_ns).t_ns
hardy_back_ms = (refork_ns - crash_end_ns) / 1e6
print(f"restarted {hardy_back_ms:.1f} ms after the crash-restart ended (its restart interval: 5 s)")

# %%
t = event_table(cluster.events(), since_ns=segv.registered_ns)
t[t.kind.isin(KINDS + ["notified"]) & (t.t_ms >= 0)]

# %% [markdown]
# The restartable bystander read `STOPPED` (or `NOT_YET_STARTED`) for a moment and then
# `STARTED` again with a new pid, in the same generation — at once after the reset, not
# after its 5 s interval: for a worker with a restart interval, `STOPPED` means "not
# running now", not "gone for good" (more in notebook 06). The `NEVER_RESTART` bystander
# was forgotten: its `STOPPED` is final. In the table, the bystanders' `exited` rows say
# `exit_code=2`: the SIGQUIT's immediate exit.

# %%
predictions(my_prediction, {
    "1. exit(1) before main: wait_for_startup() returns": fragile_startup[0],
    "2. the NEVER_RESTART bystander ends as": calm_end,
    "2. the restartable bystander (restart=5 s) runs again after (ms)": hardy_back_ms,
})

# %% [markdown]
# ## 4. What the strategies conclude
#
# `Notify` (see notebook 05) waits for the worker's *sign-in*, not just for the fork. On an
# early crash it reports `failed`, a few milliseconds after registration:

# %%
rows = []
for label, fault in [("no fault", None), ("exit(1) before main", Fault.crash_before_main(exit_code=1))]:
    h2, out = Notify().start(backend, cluster.directory, fault=fault)
    h2.wait_for_shutdown()
    rows.append((label, out.verdict, round(out.time_to_verdict_ms, 2), out.status))
pd.DataFrame(rows, columns=["case", "verdict", "time_to_verdict_ms", "why"])

# %% [markdown]
# ## The figure

# %%
fig, ax = plt.subplots(figsize=(9, 5.5))
plot_timeline(cluster.events(), ax=ax, slots=[(x.slot, x.generation) for x in (h, calm, hardy, segv)]);
ax.set_title("early crashes: exit(1) before main; SIGSEGV before main and its crash-restart cycle");

# %% tags=["check", "remove-cell"]
# Key claims, on this run: the crash took both bystanders down with SIGQUIT (exit code 2),
# forgot the NEVER_RESTART one and brought the restartable one back at once (well inside
# its 5 s interval), in the same generation.
_calm_exit = [e for e in cluster.events() if e.kind == "exited" and (e.slot, e.generation) == (calm.slot, calm.generation)]
claim(calm_end is HandleStatus.STOPPED and _calm_exit and _calm_exit[-1].detail.get("exit_code") == 2,
      "the NEVER_RESTART bystander exited with code 2 (SIGQUIT) and is STOPPED for good")
claim(status is HandleStatus.STARTED and pid_after != pid_before and hardy_back_ms < 2500,
      "the restartable bystander came back with a new pid at once, not after its 5 s interval")

# %% [markdown]
# ## Your turn
#
# From the event log, find the exit code of the restartable bystander (`hardy`) during
# the crash-restart — its `exited` event whose worker pid is `pid_before`
# (`e.detail["worker_pid"]`, `e.detail["exit_code"]`). Store it in `hardy_exit_code`.

# %%
hardy_exit_code = ...   # your code here

# %% tags=["solution"]
hardy_exit_code = next(e.detail["exit_code"] for e in cluster.events()
                       if e.kind == "exited" and e.detail.get("worker_pid") == pid_before)

# %%
check_value(hardy_exit_code, 2, "exit code of a worker stopped by the crash-restart",
            hint="look for kind == 'exited' with detail['worker_pid'] == pid_before; SIGQUIT "
                 "makes a worker _exit(2), as PostgreSQL's SignalHandlerForCrashExit")

# %%
hardy.terminate()
cluster.stop()

# %% [markdown]
# ## Exercises
#
# 1. In section 1, if you wrote a "wait 5 s for the sign-in" registrant, when would it
#    report the failure? And a registrant that only calls `wait_for_startup()`?
#
# <details><summary>Answer</summary>
#
# The timeout registrant: after 5 s (and it cannot say *why*). The `wait_for_startup()`-only
# registrant: never — it was told `STARTED` and believes the worker runs. Only the one that
# keeps waiting on the handle (or for a sign-in, woken by the exit notification) learns the
# truth as soon as the worker dies: milliseconds after it, here 0.2 s after the fork.
# </details>
#
# 2. Why does one crashing worker take the bystanders down, while an exit(1) does not?
#
# <details><summary>Answer</summary>
#
# Exit 1 is an orderly error: the worker cleaned up. A signal death (or an unexpected exit
# code) means it may have died halfway through changing shared memory, so nothing in shared
# memory can be trusted: PostgreSQL resets everything.
#
# What happens to generations then differs, for a reason. In bgwlab they keep growing
# across the reset, because the registrants — this kernel, with its old handles —
# survive it, and an old handle must never match a new worker.
#
# > **In PostgreSQL** — shared memory is recreated and `BackgroundWorkerShmemInit`
# > ([source](https://github.com/postgres/postgres/blob/REL_17_STABLE/src/backend/postmaster/bgworker.c))
# > sets every slot's generation back to 0. That is safe there: every backend died in the
# > crash too, so no old handle is left to be confused.
# </details>
#
# 3. Restart the cluster with `Cluster.start(restart_after_crash=False)` and repeat section 3.
#    What do you expect?
#
# <details><summary>Answer</summary>
#
# Like PostgreSQL's `restart_after_crash = off` (checked in `PostmasterStateMachine`,
# [postmaster.c](https://github.com/postgres/postgres/blob/REL_17_STABLE/src/backend/postmaster/postmaster.c)):
# after the crash the postmaster does not restart anything; it shuts down, and waiters
# learn `POSTMASTER_DIED` or `STOPPED`.
# </details>
