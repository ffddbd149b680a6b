"""The engine as it was before issue 12's changes, for ``run.py --before`` (clusters of their
own in the same interleaved run) and ``ab.py``: every ``old_*`` patch at once.  (Order
matters where two restore the same method: the older code is imported last.)"""

import old_event_encoder  # noqa: F401
from old_event_encoder import registrant_writer  # noqa: F401  (ab.py: A's registrant too)
import old_pm_logging  # noqa: F401
import old_wake_path  # noqa: F401  (its run: the old wake path, old_pm_logging's logging)
import old_crash_path  # noqa: F401
import old_ctypes_preload  # noqa: F401
import old_signal_wrappers  # noqa: F401
import old_notify_order  # noqa: F401  (start_worker before every change: after old_pm_logging)
import old_image  # noqa: F401
