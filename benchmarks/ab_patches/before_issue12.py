"""The engine as it was before issue 12's changes, for ``run.py --before`` (clusters of their
own in the same interleaved run) and ``ab.py``: every ``old_*`` patch at once."""

import old_crash_path  # noqa: F401
import old_ctypes_preload  # noqa: F401
import old_signal_wrappers  # noqa: F401
import old_notify_order  # noqa: F401
