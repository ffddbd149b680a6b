"""Parallel query on bgwlab's engine: dynamic shared memory, message queues (and, next, a
parallel context).

PostgreSQL's ``dsm.c`` (dsm.py), ``shm_toc.c`` (toc.py) and ``shm_mq.c`` (mq.py), rebuilt
on real processes, real POSIX shared memory and real signals.  DESIGN §7 is the contract;
the queue's protocol is written on its layout in mq.py.
"""

from .errors import LeaderDetached, ParallelWorkerError, ParallelWorkerFailed
from .mq import DETACHED, SUCCESS, WOULD_BLOCK, MessageQueue, MqResult, mq_create

__all__ = ["ParallelWorkerError", "ParallelWorkerFailed", "LeaderDetached", "MessageQueue",
           "MqResult", "mq_create", "SUCCESS", "WOULD_BLOCK", "DETACHED"]
