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
# # 11 · Why the seed was written: parallel query
#
# > **The question.** A query's leader asks for four workers. Some slots are taken, one
# > fork fails, one worker raises half-way. What does the leader learn, and *when* — and
# > what does it do with fewer workers than it planned, or none?
#
# Handles and notification (notebooks 01–05) were not built for their own sake. Robert
# Haas wanted them for **parallel query**: a leader that launches workers *for one query*
# cannot wait 5 seconds to find out whether they started, and must carry on with fewer
# workers — or none — when the slots run out. The next hurdle he named was getting data
# between the leader and its workers: **dynamic shared memory** and **message queues**.
# `bgwlab.parallel` rebuilds them on bgwlab's engine, for real: a POSIX shared-memory
# segment per query (`dsm.py`), a table of contents in it (`toc.py`), one `shm_mq` ring per
# worker (`mq.py`), and the leader's `ParallelContext` (`context.py`):
#
# ```python
# with ParallelContext(backend, "module:function", nworkers=4, payload=b"...") as pcxt:
#     pcxt.launch()                 # LaunchParallelWorkers: as many as there are slots
#     pcxt.wait_for_attach()        # WaitForParallelWorkersToAttach
#     for number, msg in pcxt.messages(): ...   # the workers' queues
#     pcxt.wait_for_finish()        # WaitForParallelWorkersToFinish: re-raises their errors
# ```
#
# > **In PostgreSQL** — `LaunchParallelWorkers` and `WaitForParallelWorkersToAttach` /
# > `WaitForParallelWorkersToFinish` are in
# > [`access/transam/parallel.c`](https://github.com/postgres/postgres/blob/REL_17_STABLE/src/backend/access/transam/parallel.c);
# > the queue (`shm_mq_send`, `shm_mq_receive`, `shm_mq_wait_for_attach`) in
# > [`storage/ipc/shm_mq.c`](https://github.com/postgres/postgres/blob/REL_17_STABLE/src/backend/storage/ipc/shm_mq.c);
# > the segment and its table of contents in
# > [`storage/ipc/dsm.c`](https://github.com/postgres/postgres/blob/REL_17_STABLE/src/backend/storage/ipc/dsm.c) and
# > [`storage/ipc/shm_toc.c`](https://github.com/postgres/postgres/blob/REL_17_STABLE/src/backend/storage/ipc/shm_toc.c);
# > the Gather node that reads the workers' tuple queues (`ExecGather`, `gather_readnext`) in
# > [`executor/nodeGather.c`](https://github.com/postgres/postgres/blob/REL_17_STABLE/src/backend/executor/nodeGather.c),
# > and `ExecParallelFinish`, which detaches the tuple queues and waits for the workers, in
# > [`executor/execParallel.c`](https://github.com/postgres/postgres/blob/REL_17_STABLE/src/backend/executor/execParallel.c).
#
# **The toy query.** `SELECT sum(v) FROM t WHERE v % 3 = 0` over generated rows
# (`v = i * 7919 % 1009`), split into one share per planned worker. Worker *k* scans share
# *k* and sends its qualifying values in batches (one message per 1,000 rows scanned); the
# leader sums what it gathers, and scans itself the shares of the workers it did not get
# (`bgwlab.parallel.gather.run_gather`).
#
# **Predict first.** The cluster has **4** worker slots.
# 1. The leader plans 6 workers. How many does `launch()` launch — and does it raise?
# 2. Worker 1's `fork()` fails. How long after the leader created its context does it hold
#    the error (ms)?
# 3. A leader that does not hear from the postmaster gives each worker T seconds to attach
#    (T = 1 s here, 0.3 s in quick mode). When does it report the same failure (ms)?
# 4. Worker 1 raises an exception after its first batch. What does the leader get?

# %%
my_prediction = {
    "1. planned 6, 4 slots: launched": ...,          # a number
    "1. ... and launch() raises?": ...,              # True / False
    "2. fork failure: the leader's error after (ms)": ...,
    "3. timeout leader: reports it after (ms)": ...,
    "4. worker raises: the leader gets": ...,        # an exception's name
}

# %%
import os
import time

import matplotlib.pyplot as plt
import pandas as pd

from bgwlab import NEVER_RESTART, Cluster, Fault, WorkerSpec
from bgwlab.lab.experiments.parallel import parallel_experiment, parallel_table
from bgwlab.lab.teaching import check_value, claim, predictions, quick_mode
from bgwlab.parallel import ParallelContext, ParallelWorkerError, ParallelWorkerFailed, dsm
from bgwlab.parallel.examples import expected_sum
from bgwlab.parallel.gather import attach_or_timeout, run_gather
from bgwlab.parallel.plots import (plot_failure_detection, plot_parallel_times,
                                   plot_planned_vs_launched, plot_ring_counters)

QUICK = quick_mode()
ROWS = 40_000 if QUICK else 400_000
T = 0.3 if QUICK else 1.0            # the timeout leader's patience
SLOTS = 4
PRELOAD = ("bgwlab.examples", "bgwlab.parallel.examples", "bgwlab.parallel.worker")
cluster = Cluster.start(max_workers=SLOTS, preload=PRELOAD)
backend = cluster.connect()

# %% [markdown]
# ## 1. A Gather that works
#
# Two workers, 400,000 rows (40,000 in quick mode). The answer must equal the serial one.

# %%
r = run_gather(backend, ROWS, nworkers=2)
serial = expected_sum(ROWS)
print(f"planned {r.planned}, launched {r.launched}; sum {r.total} (serial: {serial}); "
      f"first batch after {r.first_message_ms:.1f} ms, answer after {r.result_ms:.1f} ms")

# %% [markdown]
# ## 2. Planned vs launched: the slots run out, nobody errors
#
# `launch()` registers one worker after another and **stops at the first registration
# that fails** — a full slot array is not an error. Launched workers are numbered
# 0 … launched − 1, so the leader knows exactly which shares are left for it. (Now and
# then a sixth worker gets a slot after all: one that finished its share while `launch()`
# was still registering has freed its slot — in PostgreSQL too.)
#
# > **In PostgreSQL** — `LaunchParallelWorkers` sets `any_registrations_failed` at the
# > first `RegisterDynamicBackgroundWorker` that returns false and registers no more;
# > `EXPLAIN ANALYZE` shows it as `Workers Planned: 6` / `Workers Launched: 4`.

# %%
rows = []
for n in (0, 1, 2, 4, 6):
    g = run_gather(backend, ROWS, nworkers=n)
    rows.append(dict(planned=n, launched=g.launched, leader_shares=g.leader_shares,
                     correct=g.correct, result_ms=round(g.result_ms, 1)))
scaling = pd.DataFrame(rows)
scaling

# %% [markdown]
# Now take every slot away (four workers that sleep until told to stop) and plan four
# workers: none starts, and the leader runs the whole query itself — slower, but right.

# %%
sleepers = [backend.register_dynamic_worker(
    WorkerSpec(name=f"sleeper {i}", entry="bgwlab.examples:sleep_forever", restart=NEVER_RESTART))
    for i in range(SLOTS)]
alone = run_gather(backend, ROWS, nworkers=4)
for h in sleepers:
    h.terminate()
for h in sleepers:
    h.wait_for_shutdown()
print(f"planned {alone.planned}, launched {alone.launched}, the leader scanned shares "
      f"{alone.leader_shares}; correct: {alone.correct}; {alone.result_ms:.1f} ms")

# %% [markdown]
# ## 3. A worker that fails before attaching
#
# Worker 1's `fork()` fails (the postmaster's fork raises a real `EAGAIN`), or it crashes
# before its code runs. The leader registered it with `notify`, so the postmaster tells the
# leader's latch; `wait_for_attach()` sees the handle `STOPPED` while the worker's queue
# still has no sender, and raises **"parallel worker failed to initialize"**, naming it.

# %%
failures = {}
for name, fault in (("fork_failure", Fault.fork_failure()),
                    ("early_crash", Fault.crash_before_main(exit_code=1))):
    f = run_gather(backend, ROWS, nworkers=2, faults={1: fault})
    failures[name] = f
    print(f"{name:>12}: {f.outcome} after {f.error_ms:.1f} ms (launch() returned at "
          f"{f.launch_ms:.1f} ms)\n              {str(f.error).splitlines()[0][:110]}")

# %% [markdown]
# **Compare: a leader that waits with a timeout.** Same failure, but the leader does not
# listen to the postmaster: it looks every millisecond whether each worker has attached, and
# gives up after T (`attach_or_timeout`).

# %%
t0 = time.monotonic_ns()
with ParallelContext(backend, "bgwlab.parallel.examples:gather_worker", 2,
                     payload=b"\0" * 40, faults={1: Fault.fork_failure()}) as pcxt:
    pcxt.launch()
    try:
        attach_or_timeout(pcxt, T)
    except TimeoutError as e:
        timeout_ms = (time.monotonic_ns() - t0) / 1e6
        print(f"timeout leader: {e} -- after {timeout_ms:.0f} ms")
print(f"notification: {failures['fork_failure'].error_ms:.1f} ms; timeout: {timeout_ms:.0f} ms "
      f"({timeout_ms / failures['fork_failure'].error_ms:.0f}x later)")

# %% [markdown]
# The timeout leader is wrong in both directions, as in notebook 05: it reports the failure
# only after T, and on a busy machine it gives up on a worker that is merely slow.
#
# > **In PostgreSQL** — `WaitForParallelWorkersToAttach` checks each worker's error queue
# > with `shm_mq_get_sender` and, while there is none, its handle with
# > `GetBackgroundWorkerPid`: `BGWH_STOPPED` without a sender is "parallel worker failed to
# > initialize". `shm_mq_wait_for_attach` / `shm_mq_set_handle` do the same for one queue.
# > Before December 2017 a parallel worker that failed to start could leave its leader
# > waiting forever.

# %% [markdown]
# ## 4. A worker's error surfaces in the leader
#
# Worker 1 raises after its first batch. Its traceback goes to the leader on its **error
# queue** (PostgreSQL sends an `ErrorResponse` there), and the leader re-raises it as
# `ParallelWorkerError` — after the batches the worker sent before it.

# %%
err = run_gather(backend, ROWS, nworkers=2, fail_after=1, fail_worker=1)
print(f"{err.outcome} from worker {err.failed_worker} after {err.error_ms:.1f} ms; its traceback:\n")
print(err.error.traceback)

# %% [markdown]
# > **In PostgreSQL** — the worker's `ereport(ERROR)` goes through `pq_redirect_to_shm_mq`
# > into its error queue; the leader's `HandleParallelMessages` reads it (after the
# > `PROCSIG_PARALLEL_MESSAGE` interrupt) and re-throws it with the context line
# > "parallel worker". `ExecParallelFinish` stops reading the tuple queues first, as
# > `wait_for_finish()` does here.
#
# Your predictions beside this run:

# %%
predictions(my_prediction, {
    "1. planned 6, 4 slots: launched": int(scaling.set_index("planned").launched[6]),
    "1. ... and launch() raises?": False,
    "2. fork failure: the leader's error after (ms)": failures["fork_failure"].error_ms,
    "3. timeout leader: reports it after (ms)": timeout_ms,
    "4. worker raises: the leader gets": err.outcome,
})

# %% [markdown]
# ## 5. Inside the ring: bytes_written and bytes_read over time
#
# Each queue has two counters that only grow: `bytes_written` (only the worker raises it)
# and `bytes_read` (only the leader does). Their difference is what sits in the ring, never
# more than its size. Here the rings are small (8 KiB), so the workers fill them and wait
# for the leader: the queue is also the query's back-pressure.

# %%
traced = run_gather(backend, ROWS, nworkers=2, queue_size=8192, trace=True)
trace = pd.DataFrame(traced.trace)
fig, ax = plt.subplots(figsize=(9, 4.2))
plot_ring_counters(trace, ax=ax);

# %% [markdown]
# `bytes_read` moves in steps: the receiver gives space back a quarter of the ring at a
# time (and before it waits), and the sender is woken only if its latch says it may be
# asleep (`maybe_sleeping` in its latch record; a set while it is awake only stores
# `is_set`) — PostgreSQL's `SetLatch` skips the wakeup the same way.
#
# > **In PostgreSQL** — `shm_mq_receive` publishes consumed bytes once more than a
# > quarter of the ring is pending, and `shm_mq_inc_bytes_read` sets the sender's latch at
# > every publish. **bgwlab differs in two places:** a sender that may be asleep is woken
# > only once three quarters of the ring are free (fewer wake-ups, each of which costs
# > ~50 µs across CPUs on this kind of VM), and a latch wait spins for up to
# > `BGWLAB_LATCH_SPIN_US` (100 µs, adaptive; 0 turns it off) while the other side may be
# > running -- waiting out, up to 500 µs, the wake-up of a side it has just woken, and not
# > at all while that side waits for the spinner's own CPU -- where `WaitLatch` goes to
# > sleep at once. README, *Differences from PostgreSQL*.

# %% [markdown]
# ## 6. Measured: time to the first tuple, to the answer, to the error
#
# `bgwlab experiment parallel` (same code as below): every `nworkers` from the leader alone
# to more than there are slots, idle and busy (two CPU hogs per core), and the three
# failures injected into worker 1 of 2. About a minute (seconds in quick mode).

# %%
cluster.stop()
df = parallel_experiment(quick=QUICK)
parallel_table(df).round(1)

# %%
fig, axes = plt.subplots(1, 2, figsize=(13, 4.4))
plot_parallel_times(df, ax=axes[0])
plot_planned_vs_launched(df, ax=axes[1]);

# %%
fig, ax = plt.subplots(figsize=(9, 4))
plot_failure_detection(df, ax=ax, timeouts=(T,));

# %% tags=["check", "remove-cell"]
# Key claims, on this run's data.
claim((scaling.launched >= scaling.planned.clip(upper=SLOTS)).all()
      and (scaling.launched <= scaling.planned).all() and scaling.correct.all(),
      "launch() launches what the slots allow, never more than planned, and the answer is right")
claim(alone.launched == 0 and alone.leader_shares == [0, 1, 2, 3] and alone.correct,
      "with no slot free, the leader runs every share itself and gets the right answer")
claim(all(isinstance(f.error, ParallelWorkerFailed) and f.failed_worker == 1 for f in failures.values()),
      "a worker that fails before attaching is reported as ParallelWorkerFailed, naming it")
claim(failures["fork_failure"].error_ms < 0.5 * T * 1000 <= 0.5 * timeout_ms,
      f"notification reports a failed fork well before a timeout of T = {T:g} s can")
claim(isinstance(err.error, ParallelWorkerError) and "fails on purpose" in err.error.traceback,
      "a worker's exception reaches the leader with the worker's traceback")
_w = trace.groupby("number")
claim(((trace.bytes_written - trace.bytes_read) <= trace.ring_size).all()
      and all(g.bytes_written.is_monotonic_increasing and g.bytes_read.is_monotonic_increasing for _, g in _w),
      "counters only grow and never hold more than the ring between them")
claim(df[df.fault != "none"].error_detected.all(), "the experiment detected every injected failure")
claim(not [s for s in dsm.list_segments() if dsm.parse_name(s)[0] == os.getpid()],
      "no shared-memory segment of this kernel is left in /dev/shm")

# %% [markdown]
# ## Your turn
#
# Start a cluster with 4 slots, occupy **3** of them with sleepers, run `run_gather` with
# `nworkers=4`, and store in `leader_did` the list of shares the leader had to scan
# itself (`GatherResult.leader_shares`). Stop the sleepers and the cluster afterwards.

# %%
leader_did = ...   # your code here

# %% tags=["solution"]
_c = Cluster.start(max_workers=4, preload=PRELOAD)
_b = _c.connect()
_sl = [_b.register_dynamic_worker(WorkerSpec(name=f"s{i}", entry="bgwlab.examples:sleep_forever",
                                             restart=NEVER_RESTART)) for i in range(3)]
leader_did = run_gather(_b, 4 * ROWS, nworkers=4).leader_shares
for _h in _sl:
    _h.terminate()
    _h.wait_for_shutdown()
_c.stop()

# %%
check_value(leader_did, [1, 2, 3], "shares the leader scanned itself",
            hint="one slot is free, so worker 0 is launched; launched workers are numbered from 0")

# %% [markdown]
# ## Exercises
#
# 1. Why does `launch()` stop registering at the first failure instead of trying the
#    remaining workers?
#
# <details><summary>Answer</summary>
#
# Workers must be numbered 0 … launched − 1 without gaps, so that the leader knows which
# shares are left for it; and a registration fails because the slot array is full — the
# next attempt would fail too (PostgreSQL's `any_registrations_failed`).
# </details>
#
# 2. In section 3, `launch()` returned 2 although worker 1's fork was going to fail. Why
#    is that not a lie?
#
# <details><summary>Answer</summary>
#
# Launching is *registering*: the postmaster forks later. `nworkers_launched` counts
# registrations, exactly as in PostgreSQL; whether a worker really started is what
# `wait_for_attach()` (or the first read of its queue) finds out, through the handle.
# </details>
#
# 3. A setter stores its progress, fences, and reads the owner's `is_set`; the owner
#    resets `is_set`, fences, and looks at the counters. What could go wrong without the
#    fences?
#
# <details><summary>Answer</summary>
#
# Store → load reordering (x86's store buffer): the worker could raise `bytes_written` and
# still read a stale `is_set = 1`, while the leader resets it to 0 and still reads the old
# `bytes_written`. The worker skips the wakeup; the leader sleeps with data in its ring, and
# no one wakes it. With a full fence on both sides at least one sees the other (Dekker). The
# same pair guards `maybe_sleeping` against `is_set`; PostgreSQL's `SetLatch` / `WaitLatch`
# use `pg_memory_barrier()` in the same two places.
# </details>
#
# 4. What did we leave out of PostgreSQL's design?
#
# <details><summary>Answer</summary>
#
# Reference-counted segments (`dsm_attach` / `dsm_detach` with a control segment): here a
# segment lives as long as its leader. Crash-restart on an unclean worker exit: bgwlab's
# leaders live outside the crash domain. Transaction and snapshot state shipped to the
# workers, the leader reading tuple queues *while* it scans its own share, and
# `shm_mq`'s in-place receive (`shm_mq_receive` can return a pointer into the ring).
# </details>
