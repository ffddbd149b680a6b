"""A/B patch: the postmaster's image as it was before issue 12's image change.

Old: the postmaster loaded ``signal`` (and with it enum, functools, collections, operator,
reprlib, keyword, types) and, started as ``python -m``, kept what runpy had loaded
(importlib.util, importlib.machinery, contextlib, warnings).  The code that runs is the
same on both sides; only what is loaded before the first fork -- and so what every
``fork()`` copies -- differs.  Preloaded, so before ``gc.freeze()``, as the old imports were.
"""

import runpy  # noqa: F401  (importlib.util, importlib.machinery, contextlib, warnings, types)
import signal  # noqa: F401  (enum, functools, collections, operator, reprlib, keyword)
