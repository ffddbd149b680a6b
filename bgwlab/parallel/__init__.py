"""Parallel query on bgwlab's engine: dynamic shared memory, message queues, a parallel context.

PostgreSQL's ``dsm.c`` (dsm.py), ``shm_toc.c`` (toc.py), ``shm_mq.c`` (mq.py) and
``access/transam/parallel.c`` (context.py for the leader, worker.py for the workers),
rebuilt on real processes, real POSIX shared memory and real signals.  DESIGN §7 is the
contract; the queue's protocol is written on its layout in mq.py.
"""

from .context import ParallelContext, WorkerState
from .errors import LeaderDetached, ParallelWorkerError, ParallelWorkerFailed
from .mq import DETACHED, SUCCESS, WOULD_BLOCK, MessageQueue, MqResult, mq_create
from .worker import ParallelWorker

__all__ = ["ParallelContext", "ParallelWorker", "ParallelWorkerError", "ParallelWorkerFailed",
           "LeaderDetached", "MessageQueue", "MqResult", "mq_create", "SUCCESS", "WOULD_BLOCK",
           "DETACHED", "WorkerState"]
