"""A toy Gather on a ParallelContext: notebook 11 and ``bgwlab experiment parallel``.

PostgreSQL's Gather node (``executor/nodeGather.c``) launches workers, reads their tuples
from one queue each, and -- when it got fewer workers than it planned, or none -- runs
the plan itself (``parallel_leader_participation``).  ``run_gather`` does the same with
``examples.gather_worker`` over generated rows (``examples.scan``) and records what a
leader sees, when:

* ``planned`` / ``launched``: ``nworkers_planned`` / ``nworkers_launched``;
* ``leader_shares``: the shares the leader scanned itself (those of workers it did not get);
* ``first_message_ms``: from before ``ParallelContext(...)`` to the first batch received
  from a worker; ``result_ms``: to the answer, every worker finished;
* ``launch_ms``: to ``launch()`` returning (every worker registered);
* ``error`` / ``error_ms``: the exception the leader got (``ParallelWorkerFailed``,
  ``ParallelWorkerError``) and when it held it (before the block's cleanup);
* ``closed_ms``: to the end of the block (workers gone, segment freed);
* ``trace`` (``trace=True``): after every batch received, each worker's data-queue
  counters ``bytes_written`` / ``bytes_read`` with the time.

The leader scans its own shares after it has gathered the workers' (PostgreSQL's
interleaves them with reading the queues); the answer is the same.

``attach_or_timeout`` is the other design, for comparison: a leader that does not hear
from the postmaster and gives each worker ``timeout`` seconds to attach.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .context import ParallelContext
from .errors import ParallelWorkerError, ParallelWorkerFailed
from .examples import batch_sum, expected_sum, gather_plan, scan, share_range

ENTRY = "bgwlab.parallel.examples:gather_worker"
__all__ = ["GatherResult", "run_gather", "attach_or_timeout"]


@dataclass
class GatherResult:
    planned: int
    launched: int = 0
    leader_shares: list = field(default_factory=list)
    rows_gathered: int = 0
    total: int | None = None
    correct: bool | None = None
    first_message_ms: float = float("nan")
    result_ms: float = float("nan")
    error: Exception | None = None
    error_ms: float = float("nan")
    launch_ms: float = float("nan")
    closed_ms: float = float("nan")
    failed_worker: int | None = None
    trace: list = field(default_factory=list)

    @property
    def outcome(self) -> str:
        return "ok" if self.error is None else type(self.error).__name__


def _ms(t0: int) -> float:
    return (time.monotonic_ns() - t0) / 1e6


def run_gather(backend, rows: int, nworkers: int, *, batch: int = 1000, queue_size: int = 65536,
               faults: dict | None = None, fail_after: int | None = None,
               fail_worker: int | None = None, trace: bool = False,
               check: bool = True) -> GatherResult:
    """SELECT sum(v) FROM t WHERE v % 3 = 0 over `rows` generated rows with up to `nworkers`
    workers (shares = max(nworkers, 1)).  Leader only.  Never raises a worker's failure:
    it is recorded in the result (``error``, ``error_ms``, ``failed_worker``)."""
    shares = max(nworkers, 1)
    res = GatherResult(planned=nworkers)
    total = 0
    t0 = time.monotonic_ns()
    payload = gather_plan(rows, shares, batch, fail_after, fail_worker)
    with ParallelContext(backend, ENTRY, nworkers, payload=payload, queue_size=queue_size,
                         faults=faults) as pcxt:
        try:
            res.launched = pcxt.launch()
            res.launch_ms = _ms(t0)
            pcxt.wait_for_attach()
            for _number, msg in pcxt.messages():
                if res.rows_gathered == 0 and res.first_message_ms != res.first_message_ms:
                    res.first_message_ms = _ms(t0)
                n, s = batch_sum(msg)
                res.rows_gathered += n
                total += s
                if trace:
                    t = _ms(t0)
                    res.trace.extend(dict(t_ms=t, **q) for q in pcxt.queue_stats())
            for k in range(res.launched, shares):  # the shares of workers we did not get
                res.leader_shares.append(k)
                for msg in scan(share_range(rows, shares, k), batch):
                    n, s = batch_sum(msg)
                    res.rows_gathered += n
                    total += s
            pcxt.wait_for_finish()
            res.total = total
            res.result_ms = _ms(t0)
        except (ParallelWorkerFailed, ParallelWorkerError) as e:
            # The moment the leader holds the error -- before leaving the block, whose
            # cleanup (terminate the other workers, wait for them, free the segment) is
            # not part of learning about the failure.
            res.error_ms = _ms(t0)
            res.error = e
            res.failed_worker = e.number
    res.closed_ms = _ms(t0)
    if res.error is None and check:
        res.correct = res.total == expected_sum(rows)
    return res


def attach_or_timeout(pcxt: ParallelContext, timeout: float, interval: float = 0.001) -> None:
    """The leader *without* the postmaster's word: give every launched worker `timeout`
    seconds to attach (looking every `interval`), then give up with TimeoutError.

    A worker that failed to start is reported only at the deadline; a worker that is
    merely slow is reported although it would have run.  For comparison only."""
    deadline = time.monotonic() + timeout
    while True:
        if all(w.error_mq.sender_pid for w in pcxt.workers):
            return
        if time.monotonic() >= deadline:
            missing = [w.number for w in pcxt.workers if not w.error_mq.sender_pid]
            raise TimeoutError(f"workers {missing} did not attach within {timeout} s")
        time.sleep(interval)
