"""bgwlab: PostgreSQL's dynamic background workers, rebuilt for real, to study and to measure.

    from bgwlab import Cluster, WorkerSpec, HandleStatus, NEVER_RESTART, Fault

Attributes load lazily (PEP 562), so that ``python -m bgwlab.postmaster`` -- which must
stay small for fork() to stay cheap -- imports only what it uses.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "Cluster": "cluster", "attach": "cluster",
    "Backend": "backend", "WorkerHandle": "backend", "HandleStatus": "backend",
    "WorkerSpec": "spec", "Fault": "spec", "NEVER_RESTART": "spec",
    "Event": "events", "read_events": "events",
    "BgwError": "errors", "InvalidWorkerSpec": "errors", "OutOfWorkerSlots": "errors",
    "PostmasterDied": "errors", "TooManyBackends": "errors", "NotACluster": "errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'bgwlab' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"bgwlab.{mod}"), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
