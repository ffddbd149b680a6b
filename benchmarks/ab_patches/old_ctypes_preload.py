"""A/B patch: the postmaster loads ctypes (and with it libffi, zlib) before its first fork,
as it did before it loaded it only for PR_SET_PDEATHSIG (opt-in)."""

from bgwlab.procinfo import preload_libc

preload_libc()
