"""A/B patch: zlib loaded in the postmaster, as it was while the slot's checksum was zlib's
CRC-32.  Both sides compute the new checksum (one registrant serves both clusters): this
isolates what the two shared objects (zlib's module and libz, ten mappings) cost every
``fork()``; the CRC's own CPU time was ~2.4 us less per request on each side."""

import zlib  # noqa: F401
