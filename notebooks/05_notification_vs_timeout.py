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
# # 05 · Notification vs timeout: the headline experiment
#
# > **The question.** Put the two designs side by side, measured: *how long does each take
# > to report a failed start, and how often does each report a failure that did not
# > happen?* — as a function of the timeout `T`.
#
# The strategies (`bgwlab.lab.strategies`; every trial's worker *signs in* when it reaches user
# code, by creating a sentinel file and setting the registrant's latch):
#
# | strategy | how it waits | verdict "failed" when… |
# |---|---|---|
# | `notify` | handle + postmaster's SIGUSR1 + latch; no timer | the handle reads `STOPPED` without a sign-in, or the postmaster died |
# | `poll_pid` | the same handle, *no* notification, read every 10 ms | the same, up to 10 ms late |
# | `timeout(T)` | looks for the sign-in every 10 ms until `T` | `T` has passed (`timed_out`) |
#
# Ground truth never comes from the strategy under test: the runner reads the event log
# (did the worker record `reached_main`?) and keeps watching after a `timed_out`, so a
# worker that started *after* the strategy gave up counts as a **spurious timeout**.
#
# **Predict first.** Sketch two curves against `T` (log scale, 5 ms … 500 ms):
# (a) the time for `timeout(T)` to report a fork failure, (b) the fraction of healthy starts
# on a busy machine that `timeout(T)` reports as failures. Where do `notify`'s two numbers sit?

# %%
import matplotlib.pyplot as plt

from bgwlab.lab.experiments import headline_experiment
from bgwlab.lab.plots import plot_headline
from bgwlab.lab.teaching import quick_mode
from bgwlab.lab.widgets import ExperimentPanel

QUICK = quick_mode()

# %% [markdown]
# ## 1. The grid
#
# Failed starts (fork failure, early crash) on an idle machine; healthy starts idle and
# busy (CPU hogs + postmaster stalls). About half a minute (a few seconds in quick mode).

# %%
df = headline_experiment(quick=QUICK)
meta = df.attrs["metadata"]
print(f"{len(df)} trials in {meta['duration_s']} s on {meta.get('cpu_count', '?')} CPUs, "
      f"Python {meta.get('python', '?')}")

# %%
summary = df.groupby(["strategy", "timeout_s", "scenario"], dropna=False).agg(
    trials=("trial", "size"),
    median_ms=("time_to_verdict_ms", "median"),
    wrong=("correct", lambda c: int((~c.astype(bool)).sum())),
    spurious=("spurious_timeout", "sum"))
summary.round(1)

# %% [markdown]
# ## The figure: the headline

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
plot_headline(df, ax=axes);

# %% [markdown]
# Left: to report a failed start, `timeout(T)` needs `T` — exactly, every time — while
# `notify` needs about a millisecond whatever `T` you would have chosen. Right: make `T`
# short to report failures quickly, and on a busy machine healthy starts are reported as
# failures; `notify` has no `T` and no spurious timeouts. No value of `T` wins both panels;
# notification wins both.

# %% [markdown]
# ## 2. Your turn: move T, the load, the number of trials
#
# The panel runs *fork failure* and *ok* trials with `notify` and `timeout(T)` in a
# background thread (the kernel stays usable), with a progress bar, and redraws the table
# and the headline for what it ran. Try: `T = 0.01 s` under `busy`; then `T = 0.5 s`.

# %%
panel = ExperimentPanel(T=0.05, load="busy", trials=2 if QUICK else 10)
panel

# %%
if QUICK:                     # under `make test`: press "run" once from code, and wait for it
    panel.run()
    panel.wait(120)
    print(panel.controller.summary())

# %% [markdown]
# ## Exercises
#
# 1. Read off the left panel: with `T = 200 ms`, how many times longer than `notify` does the
#    timeout strategy take to report a fork failure?
#
# <details><summary>Answer</summary>
#
# `notify` reports in about a millisecond (the postmaster's failed fork → SIGUSR1 → latch);
# `timeout(0.2)` in 200 ms: two orders of magnitude. The ratio is simply `T / notify latency`.
# </details>
#
# 2. `poll_pid` is never wrong either. Why is it still worse than `notify`?
#
# <details><summary>Answer</summary>
#
# It learns everything up to one poll period late (10 ms here), and it burns a wakeup every
# period while waiting. Shorten the period and the CPU cost grows (notebook 08). The handle
# gives correctness; the notification gives speed for free.
# </details>
#
# 3. Could a smarter timeout strategy — say, "T = 3 × the median start latency measured
#    over the last minute" — escape the trade-off?
#
# <details><summary>Answer</summary>
#
# It moves along the same curves but cannot leave them: a failure is still reported only
# after `T`, and a start slower than `T` (the stall that arrives after your measurement) is
# still a spurious failure. Only information from the supervisor — which knows the fork
# failed or the worker died — lets a registrant report a failure *before* any deadline.
# </details>
#
# 4. When is a timeout still needed *on top of* notification?
#
# <details><summary>Answer</summary>
#
# When the worker can hang before signing in (an infinite loop in start-up code): then
# nobody ever learns anything, and only a deadline — chosen for the application, not for
# the start latency — ends the wait. Notification answers "did it start or fail?", not
# "is it making progress?".
# </details>
