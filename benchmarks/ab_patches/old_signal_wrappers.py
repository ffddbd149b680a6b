"""A/B patch: the postmaster's fork path and the worker's signal set-up through the
``signal`` module's wrappers (enum conversions of what they return), as before."""

import signal

from bgwlab import postmaster, worker

postmaster._signal = signal
worker._signal = signal
