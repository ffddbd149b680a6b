"""Errors raised by bgwlab.  Every message says what to do next."""


class BgwError(Exception):
    """Base class of every error bgwlab raises on purpose."""


class InvalidWorkerSpec(BgwError, ValueError):
    """A WorkerSpec field is out of range.  Raised before any slot is used."""


class OutOfWorkerSlots(BgwError):
    """Every worker slot is in use (PostgreSQL's RegisterDynamicBackgroundWorker returns false)."""


class PostmasterDied(BgwError):
    """The cluster's postmaster is gone; nothing can be registered or started any more."""


class TooManyBackends(BgwError):
    """The backend table is full: too many processes are attached to one cluster."""


class NotACluster(BgwError):
    """A directory does not hold a running bgwlab cluster that this process may use."""


class UnsupportedPlatform(BgwError):
    """This system cannot run the engine: not Linux, or a Linux kernel older than 5.3.

    Raised at the first use of the engine (``bgwlab.Cluster``, ``bgwlab.attach``, an import
    of ``bgwlab.cluster`` ...), before anything Linux-only is imported.  The message says
    what to do (WSL 2, the devcontainer, a Linux VM, a newer kernel).
    """

    def _render_traceback_(self):
        # IPython/Jupyter: show the advice alone; the import machinery frames teach nothing.
        return [f"{type(self).__name__}: {self}"]


class ForkPathUnavailable(BgwError):
    """``Cluster.start(fork_path="c")``: the C fork path cannot be built here (the message
    says why: no compiler, no Python headers, not Linux); ``bgwlab/forkpath.py``."""
