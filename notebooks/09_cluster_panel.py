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
# # 09 · The cluster panel: break it yourself
#
# > **The question.** Now that you know the rules, can you predict — before you click —
# > what every combination of worker, fault and restart policy will do?
#
# The panel below drives a real cluster from this kernel: **start/stop** it, **register** a
# worker (what it runs, which fault, which restart policy, from the menus), **terminate**
# the selected worker, or **kill -9 the postmaster**. It shows each worker's live status
# (`handle.get_pid()`) and what its waiter thread's `wait_for_startup()` /
# `wait_for_shutdown()` returned, the postmaster's process tree (psutil), the event log, and
# a timeline that redraws as events arrive. Waits run in threads: the kernel never freezes.
#
# **Predict first**, for each experiment below: write down the statuses the workers table
# will show, then click.
#
# 1. `sleep 2 s`, no fault — then the same with `slow start: worker 1 s`.
# 2. `fork fails (EAGAIN)` with *never restart*, then with *restart after 1 s*.
# 3. Two `sleep forever` workers, then one with `crash before main: SIGSEGV`.
# 4. A `sleep forever` worker, then **kill -9 postmaster**.
#
# Write the statuses you expect for experiment 2 here; the cell after the panel runs it
# from code and puts your guess beside what the panel saw.

# %%
my_prediction = {
    "2. fork fails, never restart: wait_for_startup() returned": ...,   # e.g. "STOPPED"
    "2. fork fails, restart after 1 s: status after 0.5 s": ...,
}

# %%
import time

from bgwlab.lab.teaching import check, check_value, claim, predictions, quick_mode
from bgwlab.lab.widgets import ClusterPanel
from bgwlab.lab.widgets.cluster_panel import ClusterController

QUICK = quick_mode()
panel = ClusterPanel(max_workers=4)
panel.start_cluster()
panel

# %% [markdown]
# Experiment 2, scripted — the same calls the buttons make, on the panel's model (a
# `ClusterController`) with a cluster of its own, so that the panel above stays yours:

# %%
ctl = ClusterController(max_workers=4)
ctl.start()


def startup_of(row, timeout=10.0):
    """What the row's waiter thread saw from wait_for_startup() (waits until it has returned)."""
    deadline = time.monotonic() + timeout
    while not ctl.find(row).startup and time.monotonic() < deadline:
        time.sleep(0.01)
    return ctl.find(row).startup


never_row = ctl.register("sleep forever", "fork fails (EAGAIN)", "never restart")
retry_row = ctl.register("sleep forever", "fork fails (EAGAIN)", "restart after 1 s")
print("never restart      :", startup_of(never_row))
time.sleep(0.5)
ctl.refresh()
retry_status = ctl.find(retry_row).status
print("restart after 1 s  : status", retry_status, "| its waiter:", ctl.find(retry_row).startup or "still waiting")
ctl.terminate(retry_row)
print("after terminate    :", startup_of(retry_row))
predictions(my_prediction, {
    "2. fork fails, never restart: wait_for_startup() returned": startup_of(never_row).split()[0],
    "2. fork fails, restart after 1 s: status after 0.5 s": retry_status,
})

# %% tags=["check", "remove-cell"]
# Key claims, on this run: the panel's waiter learned STOPPED for the NEVER_RESTART fork
# failure; the restartable one stayed NOT_YET_STARTED (nobody is told about a failed
# attempt) until terminate() woke its waiter with STOPPED.
claim(startup_of(never_row).startswith("STOPPED"), "fork failure, never restart: the waiter saw STOPPED")
claim(retry_status == "NOT_YET_STARTED", "fork failure, restart after 1 s: NOT_YET_STARTED meanwhile")
claim(startup_of(retry_row).startswith("STOPPED"), "terminate() woke the restartable one's waiter with STOPPED")

# %% [markdown]
# ## Your turn
#
# Script experiment 3's crash: register one `sleep forever` worker with *restart after
# 1 s*, then one `sleep forever` with the fault `crash before main: SIGSEGV`. Wait until
# the restartable worker runs again with a new pid (poll `panel.controller.find(row).pid`
# after `ctl.refresh()`), with `ctl.register(...)` as above, and store the new pid in
# `new_pid` (and the first pid in `old_pid`).

# %%
old_pid, new_pid = ..., ...   # your code here

# %% tags=["solution"]
_row = ctl.register("sleep forever", "no fault", "restart after 1 s")
startup_of(_row)
ctl.refresh()
old_pid = ctl.find(_row).pid
ctl.register("sleep forever", "crash before main: SIGSEGV", "never restart")
_deadline = time.monotonic() + 10
new_pid = old_pid
while new_pid in (None, old_pid) and time.monotonic() < _deadline:
    time.sleep(0.02)
    ctl.refresh()
    new_pid = ctl.find(_row).pid

# %%
check(not isinstance(new_pid, type(...)) and new_pid not in (None, old_pid),
      f"the restartable worker runs again with a new pid ({old_pid} -> {new_pid})",
      hint="register the restartable worker first and note its pid; after the SIGSEGV worker "
           "crashes, refresh until its pid changes")

# %%
ctl.stop()     # the scripted cluster; the panel's own stays up until panel.close()

# %% [markdown]
# The same panel is scriptable — every button is a method — which is how its tests drive it
# without a browser:
#
# ```python
# panel.register("sleep forever", "no fault", "restart after 1 s")
# panel.terminate()            # the worker selected in the menu
# panel.kill_postmaster()
# panel.controller.snapshot()  # everything the panel shows, as plain data
# ```
#
# When you are done: `panel.close()` stops the refresh thread and the cluster (restarting
# the kernel does too).

# %% [markdown]
# ## Exercises
#
# 1. Experiment 1: in the workers table, why does `wait_for_startup()` report a time of
#    about a millisecond for the slow-start worker, although it reached its code a second
#    later? Which event in the log shows the second moment?
#
# <details><summary>Answer</summary>
#
# `STARTED` means forked (notebook 01). The `reached_main` event from the worker marks the
# moment its code ran, about 1 s after `forked`.
# </details>
#
# 2. Experiment 2 with *restart after 1 s*: the fork fails every time. What do you see, and
#    why is the waiter never woken?
#
# <details><summary>Answer</summary>
#
# The log shows `fork_failed` and `restart_scheduled` every second, and the status stays
# `NOT_YET_STARTED`. A failed fork of a restartable worker is not final, so the postmaster
# does not notify (as in PostgreSQL). Terminate it: the waiter wakes with `STOPPED`.
# </details>
#
# 3. Experiment 3: what happens to the two `sleep forever` workers when the third crashes,
#    and how does it depend on their restart policy?
#
# <details><summary>Answer</summary>
#
# The crash-restart cycle stops them all (SIGQUIT, and each exits with code 2; see their
# pids leave the process tree); `never restart` workers are forgotten (`STOPPED` for good),
# restartable ones come back **at once** with new pids, in the same slot and generation —
# not after their restart interval. A restartable culprit would come back at once too.
#
# > **In PostgreSQL** — `ResetBackgroundWorkerCrashTimes` ([bgworker.c](https://github.com/postgres/postgres/blob/REL_17_STABLE/src/backend/postmaster/bgworker.c))
# > does exactly this; the registrants, though, die in the crash too, so nobody there
# > watches the statuses change — the panel can only exist because bgwlab's registrant
# > (this kernel) survives.
# </details>
#
# 4. Experiment 4: in the process tree, who disappears first, and what do the waiters say?
#
# <details><summary>Answer</summary>
#
# The postmaster, then — within milliseconds — its workers: each `sleep` worker is waiting,
# and a waiting worker notices the postmaster-alive pipe at once. (A worker busy computing
# without waiting would live on until `panel.close()` / `Cluster.stop()` ends it: notebook
# 07.) The waiters report `POSTMASTER_DIED`; the status column, which only reads shared
# memory, keeps showing the last state it knew.
# </details>
