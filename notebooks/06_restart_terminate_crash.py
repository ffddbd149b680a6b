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
# * **anything else** (another exit code, a signal): a **crash** → every worker gets SIGQUIT
#   (and exits at once with code 2), shared memory is reinitialised, `NEVER_RESTART`
#   workers are forgotten, and every other worker — the one that crashed too — is started
#   again **at once**, whatever its restart interval.
# * **`terminate()`**: sets a flag in the slot and signals the postmaster. A running
#   worker gets SIGTERM (→ exit 1, not restarted); a worker not started yet is removed and
#   its waiter notified.
#
# > **In PostgreSQL** — the same rules: `ReportBackgroundWorkerExit` and
# > `ResetBackgroundWorkerCrashTimes` ([bgworker.c](https://github.com/postgres/postgres/blob/REL_17_STABLE/src/backend/postmaster/bgworker.c)),
# > `CleanupBackgroundWorker` and `maybe_start_bgworkers` ([postmaster.c](https://github.com/postgres/postgres/blob/REL_17_STABLE/src/backend/postmaster/postmaster.c)).
# > A terminate request is noticed by `BackgroundWorkerStateChange`, which sends the
# > running worker SIGTERM; the worker's handler `bgworker_die` raises FATAL, i.e. exit 1.
# > One difference: after a crash-restart PostgreSQL has nobody left to notify (every
# > backend died too), bgwlab wakes its surviving registrants.
#
# **Predict first.**
# 1. A worker raises an exception every time, with `restart=0.3`. How many times will it
#    have run after one second? Does its handle's generation change?
# 2. You `terminate()` a worker whose postmaster will only fork it in a second. How long
#    until `wait_for_startup()` returns, and with what?
# 3. A worker with `restart=5` is running when another worker crashes. How long until it
#    runs again?

# %%
my_prediction = {
    "1. runs of phoenix after 1 s": ...,
    "1. generation changed?": ...,                        # True / False
    "2. terminate before start: wait_for_startup() after (ms)": ...,
    "2. ... returns": ...,
    "3. restart=5 bystander runs again after the crash-restart (ms)": ...,
}

# %%
import time

import matplotlib.pyplot as plt

from bgwlab import Cluster, Fault, HandleStatus, WorkerSpec, NEVER_RESTART
from bgwlab.lab.plots import plot_timeline
from bgwlab.lab.teaching import check_value, claim, event_table, predictions, quick_mode, wait_for_event
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
phoenix_runs = int((t.kind == "forked").sum())
print("runs so far:", phoenix_runs, "| generation still", phoenix.generation,
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
late_result = late.wait_for_startup()
late_ms = 1000 * (time.monotonic() - t0)
print("wait_for_startup ->", late_result, f"after {late_ms:.1f} ms")
event_table(cluster.events(), slot=late.slot, generation=late.generation)

# %% [markdown]
# The handle reads `STOPPED` only once the slot is free again: the postmaster frees the
# slot, then signals.
#
# > **In PostgreSQL** — `BackgroundWorkerStateChange` reports a never-started worker that
# > was asked to terminate as dead at once (`ReportBackgroundWorkerPID`: `pid = 0`, then the
# > signal), and `maybe_start_bgworkers` frees its slot later (`ForgetBackgroundWorker`), so
# > for a moment its registrant reads `STOPPED` while the slot is still taken. **bgwlab
# > differs:** a registrant told `STOPPED` can register again into the same slot at once.

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
#
# > **In PostgreSQL** — `bgworker_die` ([bgworker.c](https://github.com/postgres/postgres/blob/REL_17_STABLE/src/backend/postmaster/bgworker.c)),
# > the SIGTERM handler `BackgroundWorkerMain` installs, ends the worker with FATAL
# > (exit 1); `ReportBackgroundWorkerExit` then forgets it because `rw_terminate` is set.
# > The other signals a worker may receive before its own code installs handlers —
# > SIGHUP, SIGINT, SIGUSR1 — are ignored there (`SIG_IGN`), and in bgwlab too: a stray
# > `kill -HUP` does not kill a worker, and so cannot cause a crash-restart.

# %% [markdown]
# ## 5. The crash-restart cycle, and generations that never go back
#
# `keep-me` may restart after 5 s, `forget-me` never; `bomb` crashes (SIGSEGV) in its
# first run only (`crash_once`) and may restart after 5 s too. Watch how soon the
# restartable ones — the culprit included — run again:

# %%
a = backend.register_dynamic_worker(WorkerSpec(name="keep-me", entry="bgwlab.examples:sleep_forever", restart=5))
b = backend.register_dynamic_worker(WorkerSpec(name="forget-me", entry="bgwlab.examples:sleep_forever"))
print(a.wait_for_startup(), b.wait_for_startup())
bomb = backend.register_dynamic_worker(
    WorkerSpec(name="bomb", entry="bgwlab.examples:crash_once", main_arg=600_000, restart=5))
crash_end = wait_for_event(cluster, "crash_restart", where=lambda e: e.detail.get("phase") == "end")
print("bomb crashed; forget-me:", b.wait_for_shutdown().name)
back_ms = {}
for name, h in (("keep-me", a), ("bomb", bomb)):
    refork = wait_for_event(cluster, "forked", h, where=lambda e: e.t_ns >= crash_end.t_ns)
    back_ms[name] = (refork.t_ns - crash_end.t_ns) / 1e6
    print(f"{name}: running again {back_ms[name]:.1f} ms after the crash-restart ended "
          f"(its restart interval: 5 s), same generation {h.generation}")
gen_before = max(h.generation for h in (a, b, bomb))
after = backend.register_dynamic_worker(WorkerSpec(name="after", entry="bgwlab.examples:noop"))
print(f"new registration: slot {after.slot}, generation {after.generation} (> {gen_before})")
after.wait_for_shutdown()
t = event_table(cluster.events(), since_ns=bomb.registered_ns)
t[t.kind.isin(["exited", "crash_restart", "unregistered", "forked"]) & (t.t_ms >= 0)]

# %% [markdown]
# `keep-me` and `bomb` — the culprit — ran again within milliseconds, not after 5 s;
# `forget-me` (`NEVER_RESTART`) was forgotten, and its `exited` row says `exit_code=2`:
# SIGQUIT's immediate exit. The new registration got a generation above every earlier one.
#
# > **In PostgreSQL** — `ResetBackgroundWorkerCrashTimes` ([bgworker.c](https://github.com/postgres/postgres/blob/REL_17_STABLE/src/backend/postmaster/bgworker.c))
# > sets `rw_crashed_at = 0` for every restartable worker (the culprit too) and forgets the
# > `BGW_NEVER_RESTART` ones; a worker's SIGQUIT handler is `SignalHandlerForCrashExit`
# > ([interrupt.c](https://github.com/postgres/postgres/blob/REL_17_STABLE/src/backend/postmaster/interrupt.c)),
# > `_exit(2)`. Generations differ: `BackgroundWorkerShmemInit` recreates the slots with
# > generation 0, safe because every backend holding a handle died in the crash. bgwlab's
# > registrants survive it, so its generations keep growing.
#
# Your predictions beside this run:

# %%
predictions(my_prediction, {
    "1. runs of phoenix after 1 s": phoenix_runs,
    "1. generation changed?": False,
    "2. terminate before start: wait_for_startup() after (ms)": late_ms,
    "2. ... returns": late_result[0],
    "3. restart=5 bystander runs again after the crash-restart (ms)": back_ms["keep-me"],
})

# %% [markdown]
# ## The figure

# %%
for h in (a, bomb):
    h.terminate()
    h.wait_for_shutdown()
live.stop()
events = cluster.events()
fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 9), gridspec_kw=dict(height_ratios=[2, 3]))
plot_timeline(events, ax=ax1, slots=[(x.slot, x.generation) for x in (phoenix, late)])
ax1.set_title("phoenix: exit 1, restarted every 0.3 s until terminated; late: terminated before its fork")
plot_timeline(events, ax=ax2, slots=[(x.slot, x.generation) for x in (a, b, bomb)])
ax2.set_title("the crash-restart cycle: bomb dies of SIGSEGV; bomb and keep-me come back at once, "
              "forget-me does not", fontsize=9)
fig.tight_layout()

# %% tags=["check", "remove-cell"]
# Key claims, on this run.
_ev = cluster.events()
_ph = [e for e in _ev if e.kind == "forked" and (e.slot, e.generation) == (phoenix.slot, phoenix.generation)]
claim(phoenix_runs >= 2 and n_later == n_forks, "phoenix was restarted, and never again after terminate()")
_lt = event_table(_ev, slot=late.slot, generation=late.generation)
claim(late_result == (HandleStatus.STOPPED, None) and late_ms < 900 and not (_lt.kind == "forked").any(),
      "a worker terminated before its fork is never forked, and its waiter wakes with STOPPED at once")
_fx = [e for e in _ev if e.kind == "exited" and (e.slot, e.generation) == (forever.slot, forever.generation)]
_fu = [e for e in _ev if e.kind == "unregistered" and (e.slot, e.generation) == (forever.slot, forever.generation)]
claim(_fx and _fx[0].detail.get("exit_code") == 1 and _fu, "SIGTERM: exit 1, then unregistered (not restarted)")
_bx = [e for e in _ev if e.kind == "exited" and (e.slot, e.generation) == (b.slot, b.generation)]
claim(_bx and _bx[0].detail.get("exit_code") == 2, "the crash-restart's SIGQUIT made forget-me exit with code 2")
claim(max(back_ms.values()) < 2500, "keep-me and the culprit ran again at once, not after their 5 s interval")
claim(after.generation > gen_before, "a registration after the crash-restart got a larger generation")

# %% [markdown]
# ## Your turn
#
# Register a worker that raises every time (`"bgwlab.examples:fail"`) with
# `restart=NEVER_RESTART`, wait until it is gone, and count from the event log how many
# times it was forked. Store the count in `runs`.

# %%
runs = ...   # your code here

# %% tags=["solution"]
_h = backend.register_dynamic_worker(WorkerSpec(name="once", entry="bgwlab.examples:fail", restart=NEVER_RESTART))
_h.wait_for_shutdown()
runs = len(event_table(cluster.events(), slot=_h.slot, generation=_h.generation, kinds=["forked"]))

# %%
check_value(runs, 1, "forks of a NEVER_RESTART worker that fails",
            hint="event_table(cluster.events(), slot=h.slot, generation=h.generation, kinds=['forked'])")

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
# stopped, every waiter woken, and later registrations fail with `PostmasterDied` (as
# PostgreSQL's `PostmasterStateMachine` exits with "shutting down because
# restart_after_crash is off").
# </details>
