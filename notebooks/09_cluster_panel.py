# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: -all
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

# %%
from bgwlab.lab.teaching import quick_mode
from bgwlab.lab.widgets import ClusterPanel

QUICK = quick_mode()
panel = ClusterPanel(max_workers=4)
panel.start_cluster()
panel

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
# The crash-restart cycle stops them all (SIGQUIT; see their pids leave the process tree);
# `never restart` workers are forgotten (`STOPPED` for good), restartable ones come back at
# once with new pids, in the same slot and generation.
# </details>
#
# 4. Experiment 4: in the process tree, who disappears first, and what do the waiters say?
#
# <details><summary>Answer</summary>
#
# The postmaster, then — within milliseconds — its workers (they watch the postmaster-alive
# pipe). The waiters report `POSTMASTER_DIED`; the status column, which only reads shared
# memory, keeps showing the last state it knew.
# </details>
