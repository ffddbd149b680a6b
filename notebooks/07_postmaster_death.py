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
# # 07 · Postmaster death
#
# > **The question.** The supervisor itself dies (`kill -9`, the OOM killer, a bug). Who
# > notices — the registrants waiting for it, and the workers it started — and how fast?
#
# Nobody can be *told*: the process that sends notifications is the one that died. Each
# side must be able to *see* it:
#
# * **waiting registrants** poll (in the `poll()` sense: one system call that sleeps)
#   their latch **and** a **pidfd** of the postmaster, which becomes readable the moment
#   it exits. No timer, no polling loop.
# * **workers** hold the read end of a pipe whose write end only the postmaster holds
#   (PostgreSQL's `postmaster_alive_fds`): when the postmaster dies, the kernel closes the
#   write end and the read end reports EOF. A worker notices **at its next wait**
#   (`bgwlab.worker.sleep()` watches the pipe) and exits by itself. Nothing kills it: a
#   worker that never waits — a long computation — lives on, orphaned.
#
# > **In PostgreSQL** — the same: `PostmasterIsAlive` and `WaitLatch(…, WL_EXIT_ON_PM_DEATH)`
# > read the pipe (`postmaster_alive_fds`, [pmsignal.c](https://github.com/postgres/postgres/blob/REL_17_STABLE/src/backend/storage/ipc/pmsignal.c)).
# > `PostmasterDeathSignalInit` does arm `PR_SET_PDEATHSIG`, but only with a handler that
# > sets the flag `postmaster_possibly_dead`, so that `PostmasterIsAlive` can skip the
# > `read()` while the flag is clear: no process is killed by it.
# >
# > **bgwlab only** — `Cluster.start(pdeathsig=True)` arms `PR_SET_PDEATHSIG(SIGKILL)` in
# > every worker: an opt-in safety net, off by default (and off in this notebook). Without
# > it, `Cluster.stop()` — also run by `with`, and at interpreter exit — ends the orphans
# > of a killed postmaster itself: they stayed in the session the postmaster led.
#
# **Predict first.**
# 1. A registrant is inside `wait_for_startup()` for a worker the postmaster has not forked
#    yet. We `kill -9` the postmaster. What does the wait return, and after how long?
# 2. Three workers are sleeping (waiting). How long do they outlive their postmaster?
#    And a fourth worker that computes without ever waiting?
# 3. After the death, what does `get_pid()` say about the worker that never started?

# %%
my_prediction = {
    "1. wait_for_startup_async() returns": ...,        # e.g. "POSTMASTER_DIED"
    "1. ... after (ms)": ...,
    "2. the sleeping workers are gone after (ms, slowest)": ...,
    "2. the computing worker is gone after (ms)": ...,
    "3. get_pid() of the worker never started": ...,
}

# %%
import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import matplotlib.pyplot as plt
import psutil

import bgwlab
from bgwlab import Cluster, Fault, HandleStatus, WorkerSpec
from bgwlab.lab.plots import plot_timeline
from bgwlab.lab.teaching import ExitWatch, check_value, claim, event_table, predictions, quick_mode, time_until_gone

QUICK = quick_mode()
cluster = Cluster.start(max_workers=6)
backend = cluster.connect()

# %% [markdown]
# ## Set the scene: three sleeping workers, one that never waits, and two waiters

# %%
sleepers = [backend.register_dynamic_worker(
    WorkerSpec(name=f"sleeper-{i}", entry="bgwlab.examples:sleep_forever")) for i in range(3)]
worker_pids = [h.wait_for_startup()[1] for h in sleepers]
print("waiting workers:", worker_pids)
spinner = backend.register_dynamic_worker(       # computes for 30 s, never waits
    WorkerSpec(name="spinner", entry="bgwlab.examples:spin_ms", main_arg=30_000))
spinner_pid = spinner.wait_for_startup()[1]
print("computing worker:", spinner_pid)

never = backend.register_dynamic_worker(         # the postmaster would fork it only in 60 s
    WorkerSpec(name="never", entry="bgwlab.examples:noop", fault=Fault.slow_start(60, where="postmaster")))
pool = ThreadPoolExecutor(1)
shutdown_waiter = pool.submit(sleepers[0].wait_for_shutdown)   # a waiter in another thread
print("never:", never.get_pid())

# %% [markdown]
# ## `kill -9`
#
# The startup waiter is an `asyncio` task (`wait_for_startup_async`, usable with top-level
# `await` in a notebook); the shutdown waiter is a thread. Both sleep until something
# happens; then we kill the postmaster.

# %%
startup_waiter = asyncio.ensure_future(never.wait_for_startup_async())
await asyncio.sleep(0.2)                  # both waiters are now asleep
t_kill = time.monotonic_ns()
cluster.kill_postmaster()                 # SIGKILL
status_startup = await startup_waiter
t_startup = time.monotonic_ns()
status_shutdown = shutdown_waiter.result(timeout=10)
gone_ms = time_until_gone(worker_pids, since_ns=t_kill)
pool.shutdown()
spinner_alive = psutil.pid_exists(spinner_pid) and psutil.Process(spinner_pid).status() != psutil.STATUS_ZOMBIE
print(f"wait_for_startup_async -> {status_startup} after {(t_startup - t_kill) / 1e6:.2f} ms")
print(f"wait_for_shutdown (thread) -> {status_shutdown.name}")
print("waiting workers gone after (ms):", {pid: round(ms, 2) for pid, ms in gone_ms.items()})
print(f"computing worker {spinner_pid} still running once they are gone: {spinner_alive}")

# %% [markdown]
# ## After the death

# %%
never_after = never.get_pid()
print("get_pid() of 'never':", never_after, "  <- never POSTMASTER_DIED: it only reads the slot")
print("cluster.state():", cluster.state())
try:
    backend.register_dynamic_worker(WorkerSpec(name="too-late", entry="bgwlab.examples:noop"))
except bgwlab.PostmasterDied as e:
    print("register ->", type(e).__name__ + ":", e)

# %% [markdown]
# `get_pid()` only reads shared memory, which still says "not started yet" — it cannot know
# that nobody will ever fork. That is why PostgreSQL's `GetBackgroundWorkerPid` never
# returns `BGWH_POSTMASTER_DIED`, and why the *waits* check the postmaster themselves.

# %% [markdown]
# ## The figure: from `kill -9` to everyone knowing

# %%
labels = [f"worker {pid}" for pid in gone_ms] + ["startup waiter (backend)"]
values = [ms if ms is not None else float("nan") for ms in gone_ms.values()] + [(t_startup - t_kill) / 1e6]
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw=dict(width_ratios=[1, 2]))
ax1.barh(labels, values, color=["C1"] * len(gone_ms) + ["C0"])
ax1.set_xlabel("ms after kill -9")
ax1.set_title("who noticed, and when")
plot_timeline(cluster.events(), ax=ax2, slots=[(h.slot, h.generation) for h in sleepers + [never]]);
fig.tight_layout()

# %% [markdown]
# The computing worker is an orphan now: it will run to the end of its 30 s unless someone
# ends it. `Cluster.stop()` does — it finds the postmaster's session and kills what is
# left of it — then reaps the dead postmaster and removes the cluster's files:

# %%
watch = ExitWatch([spinner_pid])     # pin it now: stop() will end *and reap* it
t_stop = time.monotonic_ns()
cluster.stop()
spinner_gone_ms = watch.wait(since_ns=t_kill)[spinner_pid]
print(f"computing worker gone {spinner_gone_ms:.0f} ms after the kill "
      f"({(time.monotonic_ns() - t_stop) / 1e6:.0f} ms after cluster.stop() began)")

# %%
predictions(my_prediction, {
    "1. wait_for_startup_async() returns": status_startup[0],
    "1. ... after (ms)": (t_startup - t_kill) / 1e6,
    "2. the sleeping workers are gone after (ms, slowest)": max(v for v in gone_ms.values() if v is not None)
        if any(v is not None for v in gone_ms.values()) else None,
    "2. the computing worker is gone after (ms)": spinner_gone_ms,
    "3. get_pid() of the worker never started": never_after[0],
})

# %% tags=["check", "remove-cell"]
# Key claims, on this run: both waiters learned POSTMASTER_DIED; get_pid() never says so;
# every waiting worker exited by itself; the worker that never waits outlived them, and
# Cluster.stop() ended it.
claim(status_startup[0] is HandleStatus.POSTMASTER_DIED and status_shutdown is HandleStatus.POSTMASTER_DIED,
      "both waiters (asyncio task and thread) returned POSTMASTER_DIED")
claim(never_after[0] is HandleStatus.NOT_YET_STARTED, "get_pid() of the unstarted worker still reads NOT_YET_STARTED")
claim(all(v is not None for v in gone_ms.values()), "every waiting worker exited by itself after the kill")
claim(spinner_alive and spinner_gone_ms is not None and spinner_gone_ms * 1e6 >= t_stop - t_kill,
      "the worker that never waits outlived the postmaster until Cluster.stop() ended it")

# %% [markdown]
# ## Your turn
#
# Which of the cluster's workers would `PR_SET_PDEATHSIG(SIGKILL)` have ended at once that
# the pipe did not? Put their pids in a list `only_pdeathsig` (hint: which worker was
# still running when the waiting ones were gone?).

# %%
only_pdeathsig = ...   # your code here

# %% tags=["solution"]
only_pdeathsig = [spinner_pid]

# %%
check_value(sorted(only_pdeathsig) if isinstance(only_pdeathsig, list) else only_pdeathsig,
            [spinner_pid] if spinner_alive else [],
            "workers that only PR_SET_PDEATHSIG would have ended",
            hint="a worker notices the pipe only when it waits; one worker never waits")

# %% [markdown]
# ## Exercises
#
# 1. Why a pidfd for the registrant, and a pipe for the workers? Could the workers use a
#    pidfd of the postmaster too?
#
# <details><summary>Answer</summary>
#
# They could on Linux ≥ 5.3 — a pidfd is readable once the process exits. The pipe is the
# portable, older trick PostgreSQL uses: it works on every Unix and is inherited across
# fork for free (every child shares the same read end). bgwlab's registrants (a notebook
# kernel) are not children of the postmaster, so they cannot inherit the pipe and need a
# pidfd (or polling).
#
# > **In PostgreSQL** — the registrants *are* postmaster children: a backend is forked by
# > the postmaster exactly like a worker, inherits `postmaster_alive_fds` and watches the
# > same pipe (`WL_POSTMASTER_DEATH` / `WL_EXIT_ON_PM_DEATH` in `WaitLatch`; the
# > `WaitForBackgroundWorker*` loops use them, [bgworker.c](https://github.com/postgres/postgres/blob/REL_17_STABLE/src/backend/postmaster/bgworker.c)).
# > The pidfd is bgwlab's answer to registrants that live outside the postmaster's family.
# </details>
#
# 2. What is wrong with "the workers check `os.getppid() == 1` every second"?
#
# <details><summary>Answer</summary>
#
# It is polling: up to a second late, and it burns a wakeup per second per worker forever.
# It is also wrong when the worker is re-parented to a *subreaper* (not pid 1), as inside
# many containers and test runners (this kit's tests make pytest a subreaper).
# </details>
#
# 3. `PR_SET_PDEATHSIG` fires when the *parent thread* exits. Why does that matter for a
#    supervisor, and why is it harmless for bgwlab's postmaster (with `pdeathsig=True`)?
#
# <details><summary>Answer</summary>
#
# If a multi-threaded parent forked from a thread that later exits, the child gets the
# signal although the parent process lives on. bgwlab's postmaster is single-threaded and
# forks from its main thread, so the thread's death is the process's death. PostgreSQL's
# postmaster is single-threaded too, and uses the signal only as a hint
# (`postmaster_possibly_dead`) that the pipe is worth reading.
# </details>
#
# 4. In the figure, the backend learned of the death faster than (some of) the workers. Why
#    might a worker be slower?
#
# <details><summary>Answer</summary>
#
# A worker must be scheduled, wake from its `select()` on the alive pipe, and exit (tear
# down its interpreter); with three workers on two cores (and a fourth spinning) they
# queue. The registrant only has to wake up. Both are far below any sensible timeout —
# for workers that wait. The computing worker did not notice at all.
# </details>
