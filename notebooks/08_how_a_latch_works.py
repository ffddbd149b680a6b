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
# # 08 · How a latch works
#
# > **The question.** The postmaster sends SIGUSR1 to say "look at your handle again". How
# > can a waiter sleep until that signal arrives *without ever missing it* — and what does
# > each way of waiting cost?
#
# The obvious loop is
#
# ```python
# while not worker_started():          # (1) check
#     select.select([], [], [])         # (2) sleep until a signal interrupts us
# ```
#
# If the signal lands **between (1) and (2)** — after we looked, before we slept — nothing
# interrupts a `select()` that has not started yet, and we sleep forever. In Python it is
# worse: since PEP 475 `select()` simply *resumes* after a signal handler returns, and in a
# multi-threaded process (this kernel has a dozen threads) the kernel may deliver the
# signal to any thread.
#
# The fix is a **latch**: turn the signal into *data in a file descriptor*, and make the
# loop **reset → check → wait**:
#
# ```python
# latch.reset()                         # from now on, any signal leaves a byte behind
# while not worker_started():           # check
#     latch.wait()                      # poll() on the fd: returns at once if a byte is there
#     latch.reset()
# ```
#
# Data in a pipe is a *level*, not an edge: it stays until read. CPython's C-level handler
# writes a byte to the fd given to `signal.set_wakeup_fd()`, from whichever thread got the
# signal; bgwlab's `SignalDispatcher` reads it and sets every waiter's latch (an eventfd, or
# a pipe).
#
# > **In PostgreSQL** — `latch.c` ([source](https://github.com/postgres/postgres/blob/REL_17_STABLE/src/backend/storage/ipc/latch.c)):
# > `ResetLatch` / `WaitLatch` with the same reset → check → wait loop. `SetLatch` on
# > another process sends it SIGURG; on Linux the waiter receives SIGURG through a
# > `signalfd` in its `epoll` set, elsewhere a handler (`latch_sigurg_handler`) writes to a
# > self-pipe. The postmaster's notification is a SIGUSR1, whose handler in a backend
# > (`procsignal_sigusr1_handler`, [procsignal.c](https://github.com/postgres/postgres/blob/REL_17_STABLE/src/backend/storage/ipc/procsignal.c))
# > sets the backend's own latch. In Haas's 2013 patch this was `set_latch_on_sigusr1`.
#
# **Predict first.** We send SIGUSR1 (a) right between the check and the sleep, and
# (b) 50 ms into the sleep. For the bare loop and for the latch loop, each with a 300 ms
# safety timeout: when does each waiter wake (ms after it started)?

# %%
my_prediction = {
    "bare, signal in the window: woke at (ms)": ...,
    "latch, signal in the window: woke at (ms)": ...,
    "bare, signal during the sleep: woke at (ms)": ...,
    "latch, signal during the sleep: woke at (ms)": ...,
}

# %%
import threading

import matplotlib.pyplot as plt

from bgwlab.latch import dispatcher
from bgwlab.lab.teaching import (check_value, claim, measure_wakeups, plot_wakeups, predictions,
                                 quick_mode, race_demo)

QUICK = quick_mode()
print(f"this kernel runs {threading.active_count()} threads:",
      sorted({t.name.split('-')[0] for t in threading.enumerate()}))

# %% [markdown]
# ## 1. The lost wakeup, made deterministic

# %%
race = race_demo(timeout=0.3, send_after=0.05)
race

# %%
fig, ax = plt.subplots(figsize=(8, 2.6))
labels = [f"{r.waiter}, signal {r.signal}" for r in race.itertuples()]
bars = ax.barh(labels, race.woke_at_ms, color=["C3" if lost else "C2" for lost in race.lost])
ax.bar_label(bars, labels=[f"woke at {ms:.1f} ms" for ms in race.woke_at_ms], padding=3, fontsize=8)
ax.scatter(race.signal_at_ms, labels, marker="v", color="black", zorder=3, label="signal sent")
ax.set_xlabel("ms after the waiter started (red: slept until its 300 ms timeout)")
ax.set_xlim(0, 380)
ax.legend(loc="lower right")
ax.invert_yaxis()
fig.tight_layout()

# %% [markdown]
# The bare waiter slept until its safety timeout both times — without the timeout, forever.
# The latch waiter woke within a fraction of a millisecond of the signal, wherever it landed.
# Notice that (b) fails too for the bare loop *in Python*: the handler runs, returns, and
# `select()` carries on sleeping. In C, (b) would be interrupted with `EINTR` — if the
# signal hit this thread — and only (a) would be lost. The race is narrow; that is exactly
# why it survives testing and bites in production.

# %%
predictions(my_prediction, {f"{r.waiter}, signal {r.signal}: woke at (ms)": r.woke_at_ms
                            for r in race.itertuples()})

# %% [markdown]
# ## 2. The real thing: how many signals has this process seen?
#
# The dispatcher counts the SIGUSR1s it fanned out to latches (the notebook's own measurements
# below add to it):

# %%
dispatcher.install()
print("signals seen by this kernel's dispatcher:", dispatcher.signals_seen)

# %% [markdown]
# ## 3. Measured: how fast, and at what CPU cost, does a waiter notice?
#
# Two kinds of events, sent by *another process* that notes `CLOCK_MONOTONIC` just before:
#
# * **signal** — a SIGUSR1, caught by: an **eventfd latch** (one fd, an 8-byte counter), a
#   **self-pipe latch** (the classic two-fd pipe), or **polling** a flag every 1 / 10 ms;
# * **exit** — the other process exits, noticed by: a **pidfd** (readable once it exits), or
#   **polling** `waitid(WNOHANG)` every 1 / 10 ms.
#
# Each event comes 2–20 ms after the request, at random, so the waiter really sleeps; trials
# of all mechanisms are interleaved so that drift hits them alike. Every waiter runs the real
# loop: *look* (is the other process's news in its pipe? — a stand-in for reading a slot),
# *sleep* (the mechanism under test), look again. A spurious wakeup only costs one more look.

# %%
trials = 8 if QUICK else 200
wake = measure_wakeups(trials=trials)
wake.groupby(["event", "mechanism"]).agg(
    median_us=("latency_us", "median"), p90_us=("latency_us", lambda s: s.quantile(0.9)),
    cpu_us_per_wait=("cpu_us", "median"), trials=("trial", "size")).round(1)

# %% [markdown]
# ## The figure

# %%
fig, ax = plt.subplots(figsize=(9, 3.8))
plot_wakeups(wake, ax=ax);

# %% tags=["check", "remove-cell"]
# Key claims, on this run: the bare loop lost both wakeups (slept to its timeout), the latch
# lost neither; a latch notices a signal sooner than polling every 10 ms does.
_r = race.set_index(["waiter", "signal"])
claim(bool(_r.loc["bare"].lost.all()) and not bool(_r.loc["latch"].lost.any()),
      "bare loop: both wakeups lost; latch loop: none")
claim(float(_r.loc["latch"].woke_at_ms.max()) < 0.5 * 300, "the latch waiter woke long before its 300 ms timeout")
_med = wake[wake.event == "signal"].groupby("mechanism").latency_us.median()
claim(_med["eventfd latch"] < _med["polling 10 ms"], "the eventfd latch notices a signal sooner than 10 ms polling")

# %% [markdown]
# ## Your turn
#
# From `wake`, how many times longer (median `latency_us`) did a waiter polling every 10 ms
# take to notice a signal than one sleeping on the eventfd latch? Store it in `slower`.

# %%
slower = ...   # your code here

# %% tags=["solution"]
_s = wake[wake.event == "signal"].groupby("mechanism").latency_us.median()
slower = _s["polling 10 ms"] / _s["eventfd latch"]

# %%
_s = wake[wake.event == "signal"].groupby("mechanism").latency_us.median()
check_value(slower, _s["polling 10 ms"] / _s["eventfd latch"], "polling 10 ms / eventfd latch, median",
            hint="wake[wake.event == 'signal'].groupby('mechanism').latency_us.median()")

# %% [markdown]
# What to read in it (your numbers are in the table above; these are the shapes):
#
# * eventfd and self-pipe latches are equivalent: the cost is the signal, the dispatcher
#   hand-off and the wakeup — tens of microseconds — not the fd type. An eventfd saves one fd
#   and a `read()` loop.
# * polling is as late as half its period on average (up to a full period), and each
#   wait burns a wakeup every period. Shorten the period and you buy latency with CPU.
# * pidfd turns a process's death into a readable fd: the same `poll()` that waits on the
#   latch can wait on it — which is how a waiting registrant notices a dead postmaster
#   (notebook 07) without a timer.

# %% [markdown]
# ## 4. What the waiter reads: one store, or a lie
#
# A latch makes sure the waiter *looks again*. What it then reads must be true. PostgreSQL's
# `GetBackgroundWorkerPid` (bgworker.c) holds `BackgroundWorkerLock` (shared) so that the
# generation cannot change under it — but the postmaster never takes that lock, and the
# comment says why reading `slot->pid` is still safe: *"The pid, which is updated by the
# postmaster, can change at any time, but we assume such changes are atomic. So the value we
# read won't be garbage."* In C, `slot->pid = pid` is one store. (bgwlab's reader takes no
# lock at all: it reads the generation before and after the pid and trusts the answer only if
# both match — `shmem.py`. The pid must be one store all the same.)
#
# In Python it need not be. bgwlab's postmaster once wrote the pid with
# `struct.pack_into("<i", mm, offset, pid)` — and CPython's packer first **zeroes** the field,
# then stores the value. For a few nanoseconds the slot said `pid = 0`: "stopped". A registrant
# that looked at that instant was told STOPPED about a worker that then started — once in
# 16,320 starts of a benchmark, and 91 times in 2,000 when the registrant polls (issue 16). The
# fix writes every live word through a typed `memoryview` (`words[i] = pid`): one aligned store.
#
# **Predict first.** Another process rewrites `-1` over `-1` as fast as it can, while this
# one reads the word. How many reads in a million see 0 — with `pack_into`, with one store?

# %%
my_store_prediction = {"struct.pack_into: zeros per million reads": ...,
                       "one store (memoryview): zeros per million reads": ...}

# %%
from bgwlab.lab.teaching import torn_store_demo

stores = torn_store_demo(seconds=0.2 if QUICK else 1.0)
stores

# %%
predictions(my_store_prediction, {f"{r.method}: zeros per million reads": r.zeros_per_million
                                  for r in stores.itertuples()})

# %% tags=["check", "remove-cell"]
claim(int(stores.set_index("method").zeros["one store (memoryview)"]) == 0,
      "a word written with one store is never seen as 0 by the reader")

# %% [markdown]
# With two CPUs free, `pack_into` shows the reader a 0 often — between about once in 20
# and once in 700 reads in our runs, depending on load (your table); one store, never. The same rule holds in C: a field that
# another process reads without a lock must be written whole, in one aligned store, or
# behind a lock — never built up in place.

# %% [markdown]
# ## Exercises
#
# 1. In the latch loop, why must `reset()` come *before* the check and not after?
#
# <details><summary>Answer</summary>
#
# Reset-then-check: a signal after the reset leaves a byte, so the following wait returns at
# once — at worst we look once more for nothing. Check-then-reset: a signal between the check
# and the reset is erased by the reset, and we sleep although the condition became true —
# the very race the latch was meant to close.
# </details>
#
# 2. Why does bgwlab give each waiter its own latch, fed by one dispatcher, instead of letting
#    every waiter read the process's single wakeup fd?
#
# <details><summary>Answer</summary>
#
# One waiter's reset would swallow the byte meant for another: with two waiting threads
# (or asyncio tasks), one of them could miss its wakeup. The dispatcher owns the single
# wakeup fd and sets *every* registered latch per signal; spurious wakeups are harmless
# because every waiter re-checks its own condition.
# </details>
#
# 3. The signal handler could set the latch itself instead of relying on `set_wakeup_fd`.
#    Why is that not enough in Python?
#
# <details><summary>Answer</summary>
#
# Not because of a sleeping main thread: a main thread asleep in `poll()` does run the
# handler promptly — the signal interrupts the system call (`EINTR`), CPython runs the
# Python handlers, and (PEP 475) retries the call; a handler that sets the latch has set
# it before the retried `poll()` looks. The gaps are elsewhere:
#
# * **The signal is delivered to another thread.** The kernel may pick any thread that does
#   not block the signal (this kernel has a dozen). That thread's C handler only records
#   it; the *main* thread, still asleep in `poll()`, is not interrupted, and Python handlers
#   run only in the main thread — so the handler waits until the main thread wakes for some
#   other reason (its timeout).
# * **The waiter is not the main thread** (a worker thread, the panel's waiter threads).
#   Python handlers never run there; whatever it sleeps on, only a write into an fd it
#   polls can wake it.
# * (And a main thread busy in a long C call runs no handler until the call returns.)
#
# The C-level wakeup-fd write happens at once, in async-signal-safe code, in whichever
# thread received the signal — which is why bgwlab's dispatcher is built on it.
# </details>
#
# 4. Estimate from your table: a registrant polls every 1 ms while it waits for a worker
#    that takes 2 ms to start. What fraction of a CPU does it use, and what does the latch
#    version use?
#
# <details><summary>Answer</summary>
#
# Read `cpu_us_per_wait` for the polling rows: a few hundred microseconds per ~10 ms wait
# is a few percent of a core per waiter — for 100 waiting registrants, several cores spinning.
# The latch versions spend close to nothing while asleep: one wakeup per signal.
# </details>
