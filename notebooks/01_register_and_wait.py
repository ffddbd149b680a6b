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
# # 01 · Register and wait: handles, statuses, generations
#
# > **The question.** After `register_dynamic_worker()`, what exactly do you hold, what can
# > you ask it, and what does the answer `STARTED` promise — and what does it *not* promise?
#
# A **handle** is two numbers: the slot the worker was put in, and that slot's
# **generation** (bumped every time the slot is reused). You can ask it:
#
# | call | blocks? | returns |
# |---|---|---|
# | `h.get_pid()` | never | `(STARTED, pid)`, `(NOT_YET_STARTED, None)` or `(STOPPED, None)` — never `POSTMASTER_DIED` |
# | `h.wait_for_startup(timeout=None)` | until the postmaster has *tried* | `STARTED`+pid, `STOPPED` or `POSTMASTER_DIED` |
# | `h.wait_for_shutdown(timeout=None)` | until the worker is gone | `STOPPED` or `POSTMASTER_DIED` |
# | `h.terminate()` | never | asks the postmaster to stop (or never start) it |
#
# **Predict first.**
# 1. Right after registering, before waiting, what will `get_pid()` say?
# 2. A worker is slowed down for half a second *after* the fork but *before* your code runs.
#    How long will `wait_for_startup()` take: ~0 ms or ~500 ms?
# 3. A worker finished and its slot was reused by another worker. What does the *old*
#    handle say now?
#
# > **In PostgreSQL** — `GetBackgroundWorkerPid`, `WaitForBackgroundWorkerStartup` and
# > `WaitForBackgroundWorkerShutdown` ([source](https://github.com/postgres/postgres/blob/REL_17_STABLE/src/backend/postmaster/bgworker.c))
# > have no timeout: they wait on the latch until the postmaster has acted (or died).
# > bgwlab's `timeout=` is its own addition, for notebooks and experiments.

# %%
my_prediction = {
    "1. get_pid() right after registering": ...,       # e.g. "NOT_YET_STARTED"
    "2. wait_for_startup() of the slowed worker (ms)": ...,
    "3. the old handle after its slot was reused": ...,
}

# %%
import time

import matplotlib.pyplot as plt

from bgwlab import Cluster, Fault, HandleStatus, WorkerSpec
from bgwlab.lab.plots import plot_timeline
from bgwlab.lab.teaching import check_value, claim, event_table, predictions, quick_mode, wait_for_event

QUICK = quick_mode()
cluster = Cluster.start(max_workers=2)   # only two slots: reuse comes quickly
backend = cluster.connect()

# %% [markdown]
# ## 1. Statuses, from the first microsecond
#
# The postmaster is quick: it often forks before our next line runs. To catch the worker
# before its start, this one asks the postmaster to wait 0.1 s before forking. It runs
# until told to stop (`sleep_forever`), so that it is surely still running when we look.

# %%
h = backend.register_dynamic_worker(
    WorkerSpec(name="sleeper", entry="bgwlab.examples:sleep_forever",
               fault=Fault.slow_start(0.1, where="postmaster")))
first_look = h.get_pid()
print("right after register:", first_look)
print("wait_for_startup:    ", h.wait_for_startup())
print("get_pid while it runs:", h.get_pid())
h.terminate()
print("wait_for_shutdown:   ", h.wait_for_shutdown())
print("get_pid afterwards:  ", h.get_pid())

# %% [markdown]
# `NOT_YET_STARTED` means the slot's pid is still -1: the postmaster has not forked yet.
# It is the one status `wait_for_startup()` never returns (without a timeout): the wait
# exists precisely to sleep through it.
#
# `STARTED` is not guaranteed either. A worker that ends by itself quickly (returns at
# once, fails, crashes) may be over before the registrant wakes: `wait_for_startup()` then
# returns `(STOPPED, None)` — truthfully, as PostgreSQL's `WaitForBackgroundWorkerStartup`
# does when the pid is already 0. That is why this notebook's workers that must be seen
# running run until `terminate()`.

# %% [markdown]
# ## 2. What `STARTED` does not promise
#
# `STARTED` means *the postmaster forked a process for this slot and recorded its pid*.
# It does not mean your code is running yet — nor that it ever will. A worker slowed down
# for 0.5 s between the fork and its entry point:

# %%
slow = backend.register_dynamic_worker(
    WorkerSpec(name="slowpoke", entry="bgwlab.examples:sleep_forever",
               fault=Fault.slow_start(0.5, where="worker")))
t0 = time.monotonic()
status, pid = slow.wait_for_startup()
slow_wait_ms = 1000 * (time.monotonic() - t0)
print(status.name, pid, f"after {slow_wait_ms:.1f} ms")
wait_for_event(cluster, "reached_main", slow)   # no handle call waits for this: the log tells
slow.terminate()
slow.wait_for_shutdown()
t = event_table(cluster.events(), slot=slow.slot, generation=slow.generation)
t[t.kind.isin(["registered", "forked", "woke", "reached_main", "exited"])]

# %% [markdown]
# The kernel woke (`woke`, status `started`) about half a second *before* the worker
# reached its code (`reached_main`). Anything that needs "my worker is running my code"
# needs the worker to say so itself — in PostgreSQL, a parallel worker attaches to its
# leader's message queue and sets the leader's latch. Notebook 03 shows a worker that
# `STARTED` and died before its first line.

# %% [markdown]
# ## 3. Generations: a handle outlives its worker, safely

# %%
old = h                                          # the sleeper from section 1: gone
a = backend.register_dynamic_worker(WorkerSpec(name="next-1", entry="bgwlab.examples:sleep_forever"))
b = backend.register_dynamic_worker(WorkerSpec(name="next-2", entry="bgwlab.examples:sleep_forever"))
for name, x in [("old", old), ("a", a), ("b", b)]:
    print(f"{name:>3}: slot {x.slot}, generation {x.generation}")
print("old handle now reads:", old.get_pid(), "| a reads:", a.wait_for_startup(),
      "| b reads:", b.wait_for_startup())

# %%
old.terminate()   # a stale handle: a no-op, it cannot touch the new occupant of its slot
after_stale = (a.get_pid()[0], b.get_pid()[0])
print("after old.terminate(): a =", after_stale[0].name, "| b =", after_stale[1].name)
t_own_terminate = time.monotonic_ns()
a.terminate()                                    # their own handles do stop them
b.terminate()
print(a.wait_for_shutdown().name, b.wait_for_shutdown().name)

# %% [markdown]
# The old handle names `(slot, old generation)`. The slot now holds another generation,
# so the old handle reads `STOPPED` — it can never report another worker's pid, and
# `terminate()` on it does nothing. In bgwlab, generations never go backwards, not even
# across a crash-restart (notebook 06).
#
# > **In PostgreSQL** — after a crash-restart, `BackgroundWorkerShmemInit` ([source](https://github.com/postgres/postgres/blob/REL_17_STABLE/src/backend/postmaster/bgworker.c))
# > recreates the slot array and sets every slot's `generation` back to 0. That is safe
# > there because every backend — every holder of a handle — died in the crash too. bgwlab's
# > registrants (this kernel) live outside the crash domain and keep their handles, so
# > bgwlab keeps generations growing: an old handle must never match a new worker.

# %%
old_now = old.get_pid()
predictions(my_prediction, {
    "1. get_pid() right after registering": first_look[0],
    "2. wait_for_startup() of the slowed worker (ms)": slow_wait_ms,
    "3. the old handle after its slot was reused": old_now[0],
})

# %% [markdown]
# ## The figure: every slot's story

# %%
events = cluster.events()
fig, ax = plt.subplots(figsize=(9, 5.5))
plot_timeline(events, ax=ax);

# %% tags=["check", "remove-cell"]
# Key claims, on this run: STARTED came before the worker's code ran, and a stale handle
# reads STOPPED and cannot touch the slot's new occupant.
_s = event_table(cluster.events(), slot=slow.slot, generation=slow.generation).groupby("kind").t_ms.first()
claim(_s["woke"] < _s["reached_main"], "the registrant woke (STARTED) before the worker reached its code")
claim(old_now == (HandleStatus.STOPPED, None), "the old handle reads (STOPPED, None) after its slot was reused")
_seen = [e for e in cluster.events() if e.kind == "terminate_seen"
         and (e.slot, e.generation) in {(a.slot, a.generation), (b.slot, b.generation)}]
claim(after_stale == (HandleStatus.STARTED, HandleStatus.STARTED)
      and len(_seen) == 2 and all(e.t_ns >= t_own_terminate for e in _seen),
      "old.terminate() reached neither worker now in a slot; only their own handles stopped them")

# %% [markdown]
# ## Your turn
#
# Register a worker that the postmaster will fork only after 0.3 s
# (`Fault.slow_start(0.3, where="postmaster")`, entry `"bgwlab.examples:sleep_forever"`),
# and call `wait_for_startup(timeout=0)` on it at once. Store what that returns in
# `early`. Then terminate the worker.

# %%
early = ...   # your code here

# %% tags=["solution"]
_h = backend.register_dynamic_worker(
    WorkerSpec(name="not-yet", entry="bgwlab.examples:sleep_forever",
               fault=Fault.slow_start(0.3, where="postmaster")))
early = _h.wait_for_startup(timeout=0)
_h.terminate()
_h.wait_for_shutdown()

# %%
check_value(early, (HandleStatus.NOT_YET_STARTED, None), "wait_for_startup(timeout=0) before the fork",
            hint="with a timeout that expires, the wait returns the current status -- "
                 "before the fork that is the status get_pid() showed in section 1")

# %%
cluster.stop()

# %% [markdown]
# ## Exercises
#
# 1. Call `h.wait_for_startup(timeout=0)` right after registering. What can it return that
#    the call without a timeout never returns?
#
# <details><summary>Answer</summary>
#
# `NOT_YET_STARTED`: with a timeout that expires, the wait returns the current status.
# Without a timeout it sleeps until the postmaster has tried, so it returns only
# `STARTED`, `STOPPED` or `POSTMASTER_DIED`.
# </details>
#
# 2. `get_pid()` returned `(STARTED, 4242)`. Is process 4242 running your entry point at
#    this moment?
#
# <details><summary>Answer</summary>
#
# Not necessarily: it may still be between fork and your code (section 2), it may have
# died before reaching it (notebook 03), or it may have exited a moment ago and the
# postmaster has not reaped it yet. `STARTED` is a fact about the postmaster's last fork,
# read from shared memory.
# </details>
#
# 3. Why does the handle carry a generation at all — wouldn't the slot number do?
#
# <details><summary>Answer</summary>
#
# Slots are reused. Without the generation, a handle to a finished worker would read the
# *next* worker's pid, and `terminate()` would kill a stranger. The generation makes each
# (slot, generation) pair name exactly one registration, forever.
# </details>
#
# 4. With `max_workers=2`, register three `sleep_forever` workers. What happens on the
#    third, and what does the error message tell you to do?
#
# <details><summary>Answer</summary>
#
# `bgwlab.OutOfWorkerSlots`, before anything is written: all slots are in use. The message
# suggests waiting for a worker to stop, terminating one, or a larger `max_workers`.
#
# > **In PostgreSQL** — `RegisterDynamicBackgroundWorker` ([source](https://github.com/postgres/postgres/blob/REL_17_STABLE/src/backend/postmaster/bgworker.c))
# > returns `false` when no slot is free (an exception in bgwlab), and parallel query
# > (`LaunchParallelWorkers` in [parallel.c](https://github.com/postgres/postgres/blob/REL_17_STABLE/src/backend/access/transam/parallel.c))
# > then quietly runs with fewer workers ("Workers Planned" vs "Workers Launched").
# </details>
