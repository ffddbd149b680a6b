"""The engine's image as of 8cb4ef5, before this session's image changes, for
``run.py --before`` and ``ab.py``: ``old_image`` (signal, runpy's modules) and ``old_crc``
(zlib).  The code that runs is today's on both sides; the checksum's CPU time is today's
too (one registrant serves both: the CRC was ~2.4 us cheaper per request on each side)."""

import old_crc  # noqa: F401
import old_image  # noqa: F401
