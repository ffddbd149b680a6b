"""bgwlab: PostgreSQL's dynamic background workers, rebuilt for real, to study and to measure.

    from bgwlab import Cluster, WorkerSpec, HandleStatus, NEVER_RESTART, Fault

Attributes load lazily (PEP 562), so that ``python -m bgwlab.postmaster`` -- which must
stay small for fork() to stay cheap -- imports only what it uses.

The engine (Cluster, attach, Backend ...) needs Linux >= 5.3; ``import bgwlab`` and the
pure-Python parts (WorkerSpec, Fault, Event, read_events, the errors) work everywhere.
Elsewhere, the first use of the engine raises ``UnsupportedPlatform``, saying what to do
(``platform_check.py``).
"""

import os as _os
import sys as _sys

__version__ = "0.1.0"

_EXPORTS = {
    "Cluster": "cluster", "attach": "cluster",
    "Backend": "backend", "WorkerHandle": "backend", "HandleStatus": "backend",
    "WorkerSpec": "spec", "Fault": "spec", "NEVER_RESTART": "spec",
    "Event": "events", "read_events": "events",
    "BgwError": "errors", "InvalidWorkerSpec": "errors", "OutOfWorkerSlots": "errors",
    "PostmasterDied": "errors", "TooManyBackends": "errors", "NotACluster": "errors",
    "UnsupportedPlatform": "errors", "ForkPathUnavailable": "errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'bgwlab' has no attribute {name!r}")
    import importlib

    module = f"bgwlab.{mod}"
    if module not in _sys.modules:  # (loaded already: the engine runs here, no check needed)
        from .platform_check import ENGINE_MODULES, check

        if module in ENGINE_MODULES:
            check()  # not Linux >= 5.3: UnsupportedPlatform, before anything Linux-only is imported
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__


_MIN_KERNEL = (5, 3)  # pidfd_open(2)


def _kernel_version(release: str):
    """(major, minor) of a uname release such as '6.8.0-45-generic'; None if unreadable."""
    major, _, rest = release.partition(".")
    minor = rest.partition(".")[0].partition("-")[0].partition("+")[0]
    return (int(major), int(minor)) if major.isdigit() and minor.isdigit() else None


def _engine_may_run() -> bool:
    """The import-time gate: no module import, one uname() (the postmaster imports this
    package).  False sends every import of an engine module through platform_check."""
    if _sys.platform != "linux" or not (hasattr(_os, "pidfd_open") and hasattr(_os, "eventfd")):
        return False
    version = _kernel_version(_os.uname().release)
    return version is None or version >= _MIN_KERNEL


if not _engine_may_run():
    from .platform_check import install_guard as _install_guard

    _install_guard()
