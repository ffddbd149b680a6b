"""Errors of bgwlab.parallel.  Every message says what happened and what to do."""

from ..errors import BgwError


class ParallelWorkerFailed(BgwError):
    """A launched worker stopped before attaching to its queues (fork failure, early crash):
    PostgreSQL's "parallel worker failed to initialize".  ``number`` names the worker."""

    def __init__(self, number: int, reason: str = ""):
        self.number = number
        self.reason = reason
        super().__init__(
            f"parallel worker failed to initialize: worker {number} stopped before attaching "
            f"to its queues{': ' + reason if reason else ''}. Its handle's explain() and the "
            "cluster's event log have the details")


class ParallelWorkerError(BgwError):
    """A worker raised, or died after attaching: its error re-raised in the leader
    (PostgreSQL's error queue).  ``number`` and ``traceback`` (the worker's text)."""

    def __init__(self, number: int, traceback: str, lost: bool = False):
        self.number = number
        self.traceback = traceback
        self.lost = lost
        head = (f"lost connection to parallel worker {number}" if lost
                else f"parallel worker {number} raised an exception")
        super().__init__(f"{head}:\n{traceback}")


class LeaderDetached(BgwError):
    """Raised in a worker by ``send()`` once the leader has stopped listening (it left its
    ``with`` block, called ``wait_for_finish()``, or died).  Return from the worker function:
    a worker that stops here ends cleanly, as PostgreSQL's executor stops when its tuple
    queue's receiver detaches."""
