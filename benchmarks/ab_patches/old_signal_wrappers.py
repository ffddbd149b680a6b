"""A/B patch: the postmaster's fork path and the worker's signal set-up through the
``signal`` module's wrappers (enum conversions of what they return), as before."""

import signal

from bgwlab import worker

import sys

from bgwlab import postmaster as _imported

# The postmaster runs as ``python -m bgwlab.postmaster``: its code is the module __main__,
# not the (separately imported) bgwlab.postmaster -- patch the one that runs.
pm = sys.modules["__main__"] if hasattr(sys.modules["__main__"], "Postmaster") else _imported

pm._signal = signal
worker._signal = signal
