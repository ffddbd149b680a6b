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
#   write end and the read end reports EOF. `bgwlab.worker.sleep()` watches it;
#   `PR_SET_PDEATHSIG` (SIGKILL when the parent dies) is the backstop.
#
# **Predict first.**
# 1. A registrant is inside `wait_for_startup()` for a worker the postmaster has not forked
#    yet. We `kill -9` the postmaster. What does the wait return, and after how long?
# 2. Three workers are sleeping. How long do they outlive their postmaster?
# 3. After the death, what does `get_pid()` say about the worker that never started?

# %%
import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import matplotlib.pyplot as plt

import bgwlab
from bgwlab import Cluster, Fault, WorkerSpec
from bgwlab.lab.plots import plot_timeline
from bgwlab.lab.teaching import event_table, quick_mode, time_until_gone

QUICK = quick_mode()
cluster = Cluster.start(max_workers=6)
backend = cluster.connect()

# %% [markdown]
# ## Set the scene: three sleeping workers, and two waiters

# %%
sleepers = [backend.register_dynamic_worker(
    WorkerSpec(name=f"sleeper-{i}", entry="bgwlab.examples:sleep_forever")) for i in range(3)]
worker_pids = [h.wait_for_startup()[1] for h in sleepers]
print("workers:", worker_pids)

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
print(f"wait_for_startup_async -> {status_startup} after {(t_startup - t_kill) / 1e6:.2f} ms")
print(f"wait_for_shutdown (thread) -> {status_shutdown.name}")
print("workers gone after (ms):", {pid: round(ms, 2) for pid, ms in gone_ms.items()})

# %% [markdown]
# ## After the death

# %%
print("get_pid() of 'never':", never.get_pid(), "  <- never POSTMASTER_DIED: it only reads the slot")
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

# %%
cluster.stop()       # reaps the dead postmaster and removes the cluster's files

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
# fork for free (every worker shares the same read end). Registrants are not children of
# the postmaster, so they cannot inherit the pipe and need a pidfd (or polling).
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
#    supervisor, and why is it harmless for bgwlab's postmaster?
#
# <details><summary>Answer</summary>
#
# If a multi-threaded parent forked from a thread that later exits, the child gets the
# signal although the parent process lives on. bgwlab's postmaster is single-threaded and
# forks from its main thread, so the thread's death is the process's death.
# </details>
#
# 4. In the figure, the backend learned of the death faster than (some of) the workers. Why
#    might a worker be slower?
#
# <details><summary>Answer</summary>
#
# A worker must be scheduled, wake from its `select()` on the alive pipe, and exit (tear
# down its interpreter); with three workers on two cores they queue. The registrant only
# has to wake up. Both are far below any sensible timeout.
# </details>
