"""The engine as of 8cb4ef5, before this session's changes, for ``run.py --before`` and
``ab.py``: ``old_image`` (signal, runpy's modules), ``old_crc`` (zlib), ``old_notify_no_yield``
and ``old_no_warm``.  The checksum's CPU time is today's on both sides (one registrant
serves both: the CRC was ~2.4 us cheaper per request on each side), and so is the sort key
of start_due_workers (a module-level function; a lambda per pass before)."""

import old_crc  # noqa: F401
import old_image  # noqa: F401
import old_no_warm  # noqa: F401
import old_notify_no_yield  # noqa: F401
