"""A/B patch that changes no code: the engine as it is, its before clusters forking through
the Python path.  For ``run.py --before python_fork_path``: the "before" clusters then differ
from the others by the fork path alone (``bgwlab/forkpath.py``) -- the postmaster's short
slice and the registrant's short wait slice as the others have them."""

# run.py reads these lines (their text, not by importing this module)
BEFORE_POSTMASTER_SLICE_US = 100
BEFORE_WAIT_SLICE_US = 100
BEFORE_FORK_PATH = "python"
