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
# # 06 · Restart policies, terminate, and the crash-restart cycle
#
# > **The question.** A worker ends. Will it come back — when, in which slot, under which
# > generation? And what exactly does `terminate()` do to a worker that runs, or that has
# > not even started yet?
#
# The rules (PostgreSQL's, reproduced by bgwlab):
#
# * **return → exit 0**: done. Unregistered, never restarted, whatever its `restart`.
# * **exception → exit 1**: an error. Restarted after `restart` seconds — in the *same*
#   slot and generation, so your handle follows it — unless `NEVER_RESTART` or terminated.
# * **anything else** (another exit code, a signal): a **crash** → every worker is stopped,
#   shared memory reinitialised, `NEVER_RESTART` workers forgotten, the others restarted.
# * **`terminate()`**: sets a flag in the slot and signals the postmaster. A running
#   worker gets SIGTERM (→ exit 1, not restarted); a worker not started yet is removed and
#   its waiter notified.
#
# **Predict first.**
# 1. A worker raises an exception every time, with `restart=0.3`. How many times will it
#    have run after one second? Does its handle's generation change?
# 2. You `terminate()` a worker whose postmaster will only fork it in a second. How long
#    until `wait_for_startup()` returns, and with what?

# %%
import time

import matplotlib.pyplot as plt

from bgwlab import Cluster, Fault, WorkerSpec, NEVER_RESTART
from bgwlab.lab.plots import plot_timeline
from bgwlab.lab.teaching import event_table, quick_mode
from bgwlab.lab.widgets import LiveTimeline

QUICK = quick_mode()
cluster = Cluster.start(max_workers=6)
backend = cluster.connect()

# %% [markdown]
# A live timeline of this cluster: it redraws itself as events arrive, while the cells
# below run. (Scroll back up to it after each cell.)

# %%
live = LiveTimeline(cluster)
live

# %% [markdown]
# ## 1. Exit 1 with a restart interval: a worker that keeps failing

# %%
phoenix = backend.register_dynamic_worker(
    WorkerSpec(name="phoenix", entry="bgwlab.examples:fail", restart=0.3))
time.sleep(1.0)                        # let it fail and come back a few times
t = event_table(cluster.events(), slot=phoenix.slot, generation=phoenix.generation)
print("runs so far:", (t.kind == "forked").sum(), "| generation still", phoenix.generation,
      "| status now:", phoenix.get_pid()[0].name)
t[t.kind.isin(["forked", "worker_error", "exited", "restart_scheduled"])].head(8)

# %% [markdown]
# Between runs the handle reads `STOPPED` (pid 0, "not running") and then `STARTED` again:
# for a restartable worker, `STOPPED` is not final. The restart interval bounds the storm:
# at most one start per 0.3 s, however fast it fails. `terminate()` ends the cycle:

# %%
phoenix.terminate()
print("wait_for_shutdown ->", phoenix.wait_for_shutdown().name)
n_forks = len(event_table(cluster.events(), slot=phoenix.slot, generation=phoenix.generation, kinds=["forked"]))
time.sleep(0.5)                        # would it come back?
n_later = len(event_table(cluster.events(), slot=phoenix.slot, generation=phoenix.generation, kinds=["forked"]))
print(f"runs in total: {n_forks}; runs in the 0.5 s after terminate: {n_later - n_forks}")

# %% [markdown]
# ## 2. Exit 0 is final, even with a restart interval

# %%
done = backend.register_dynamic_worker(WorkerSpec(name="done", entry="bgwlab.examples:noop", restart=0.1))
print(done.wait_for_startup()[0].name, "->", done.wait_for_shutdown().name)
t = event_table(cluster.events(), slot=done.slot, generation=done.generation)
t[t.kind.isin(["exited", "unregistered", "restart_scheduled"])]

# %% [markdown]
# ## 3. Terminate before start

# %%
late = backend.register_dynamic_worker(
    WorkerSpec(name="late", entry="bgwlab.examples:sleep_ms", main_arg=100,
               fault=Fault.slow_start(1.0, where="postmaster")))   # fork only in 1 s
late.terminate()
t0 = time.monotonic()
print("wait_for_startup ->", late.wait_for_startup(), f"after {1000 * (time.monotonic() - t0):.1f} ms")
event_table(cluster.events(), slot=late.slot, generation=late.generation)

# %% [markdown]
# ## 4. Terminate a running worker

# %%
forever = backend.register_dynamic_worker(
    WorkerSpec(name="forever", entry="bgwlab.examples:sleep_forever", restart=0.2))
print("started:", forever.wait_for_startup())
forever.terminate()
print("wait_for_shutdown ->", forever.wait_for_shutdown().name)
t = event_table(cluster.events(), slot=forever.slot, generation=forever.generation)
t[t.kind.isin(["terminate_requested", "terminate_seen", "exited", "unregistered", "notified", "woke"])]

# %% [markdown]
# SIGTERM makes a bgwlab worker exit 1 — an "error" exit that would normally be restarted
# after 0.2 s — but the postmaster remembers the terminate request and unregisters it.

# %% [markdown]
# ## 5. The crash-restart cycle, and generations that never go back

# %%
a = backend.register_dynamic_worker(WorkerSpec(name="keep-me", entry="bgwlab.examples:sleep_forever", restart=0.5))
b = backend.register_dynamic_worker(WorkerSpec(name="forget-me", entry="bgwlab.examples:sleep_forever"))
print(a.wait_for_startup(), b.wait_for_startup())
bomb = backend.register_dynamic_worker(
    WorkerSpec(name="bomb", entry="bgwlab.examples:crash", main_arg=11))   # SIGSEGV in main
print("bomb:", bomb.wait_for_startup()[0].name, "->", bomb.wait_for_shutdown().name)
print("forget-me:", b.wait_for_shutdown().name)
gen_before = max(h.generation for h in (a, b, bomb))
after = backend.register_dynamic_worker(WorkerSpec(name="after", entry="bgwlab.examples:noop"))
print(f"new registration: slot {after.slot}, generation {after.generation} (> {gen_before})")
after.wait_for_shutdown()
t = event_table(cluster.events(), since_ns=bomb.registered_ns)
t[t.kind.isin(["exited", "crash_restart", "unregistered", "forked"]) & (t.t_ms >= 0)]

# %% [markdown]
# ## The figure

# %%
a.terminate()
a.wait_for_shutdown()
live.stop()
events = cluster.events()
fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 9), gridspec_kw=dict(height_ratios=[2, 3]))
plot_timeline(events, ax=ax1, slots=[(x.slot, x.generation) for x in (phoenix, late)])
ax1.set_title("phoenix: exit 1, restarted every 0.3 s until terminated; late: terminated before its fork")
plot_timeline(events, ax=ax2, slots=[(x.slot, x.generation) for x in (a, b, bomb)])
ax2.set_title("the crash-restart cycle: bomb dies of SIGSEGV; keep-me comes back, forget-me does not")
fig.tight_layout()

# %%
cluster.stop()

# %% [markdown]
# ## Exercises
#
# 1. Section 1 with `restart=NEVER_RESTART` instead: what happens after the first failure?
#
# <details><summary>Answer</summary>
#
# Exit 1 of a `NEVER_RESTART` worker: unregistered, the registrant notified, the handle reads
# `STOPPED` for good. One run, one `worker_error`, one `exited`, one `unregistered`.
# </details>
#
# 2. Why does a restarted worker keep its generation, while a new registration in the same
#    slot gets a new one?
#
# <details><summary>Answer</summary>
#
# The generation names a *registration*, not a process. A restart is the same
# registration (same spec, same handle holders, who want to keep following it); a new
# registration is someone else's worker that old handles must never see.
# </details>
#
# 3. In section 3 the worker was terminated before its fork. Which event is missing
#    compared with a normal start, and why does the waiter still wake promptly?
#
# <details><summary>Answer</summary>
#
# There is no `fork_attempted`/`forked`: the postmaster saw the terminate flag before
# the fork was due and removed the worker. Removing a never-started worker is one of the
# paths on which the postmaster notifies, so the waiter wakes with `STOPPED`.
# </details>
#
# 4. `restart_after_crash=False` at `Cluster.start`: what would section 5 do?
#
# <details><summary>Answer</summary>
#
# The postmaster shuts down after the crash instead of reinitialising: every worker is
# stopped, every waiter woken, and later registrations fail with `PostmasterDied`.
# </details>
