"""Parallel query on bgwlab's engine: dynamic shared memory, message queues, a parallel context.

PostgreSQL's ``dsm.c`` (dsm.py), ``shm_toc.c`` (toc.py), ``shm_mq.c`` (mq.py) and
``access/transam/parallel.c`` (context.py for the leader, worker.py for the workers),
rebuilt on real processes, real POSIX shared memory and real signals.  DESIGN §7 is the
contract; the queue's protocol is written on its layout in mq.py.

The leader's side (``ParallelContext``, ``WorkerState``) is imported on first use: a
postmaster that preloads the worker's side (``bgwlab.parallel.worker``) then does not
carry context.py's imports (``bgwlab.spec`` -> dataclasses, inspect, re, ...), whose
pages every fork() would copy.
"""

from .errors import LeaderDetached, ParallelWorkerError, ParallelWorkerFailed
from .mq import DETACHED, SUCCESS, WOULD_BLOCK, MessageQueue, MqResult, mq_create
from .worker import ParallelWorker

__all__ = ["ParallelContext", "ParallelWorker", "ParallelWorkerError", "ParallelWorkerFailed",
           "LeaderDetached", "MessageQueue", "MqResult", "mq_create", "SUCCESS", "WOULD_BLOCK",
           "DETACHED", "WorkerState"]

_LEADER_SIDE = ("ParallelContext", "WorkerState")  # from .context, on first use


def __getattr__(name):
    if name in _LEADER_SIDE:
        from . import context

        for n in _LEADER_SIDE:
            globals()[n] = getattr(context, n)
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LEADER_SIDE))
