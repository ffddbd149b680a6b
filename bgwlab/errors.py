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
