"""Side A of benchmarks/ab_queue.py: put the frozen queue and latch back.

Importing this module installs a finder that loads ``bgwlab.parallel.mq`` and
``bgwlab.parallel.latch`` from ``mq_s6.py`` / ``latch_s6.py`` (next to this file) instead
of the tree's -- or only those named in ``BGWLAB_AB_FROZEN`` (``mq``, ``latch``, comma
separated; default both), to A/B one module's change alone; ``mq=NAME`` loads
``NAME.py`` instead of ``mq_s6.py`` (an intermediate step frozen too).  It must run before anything imports them: A's leader imports it first,
and A's postmaster preloads it first (so every worker it forks has the old code).
"""

import importlib.abc
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_WHICH = dict((w.split("=", 1) + [w + "_s6"])[:2]
              for w in os.environ.get("BGWLAB_AB_FROZEN", "mq,latch").split(",") if w)
FROZEN = {f"bgwlab.parallel.{m}": os.path.join(_HERE, f"{stem}.py") for m, stem in _WHICH.items()}


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        f = FROZEN.get(fullname)
        return importlib.util.spec_from_file_location(fullname, f) if f else None


if any(m in sys.modules for m in FROZEN):
    raise RuntimeError("queue_s6 must be imported before bgwlab.parallel.mq / .latch")
sys.meta_path.insert(0, _Finder())
