"""A/B patch that changes nothing: the engine as it is.  For ``run.py --before same_engine``,
whose "before" clusters then differ from the others only by what run.py gives them besides
the code: the postmaster's default scheduler slice and a registrant that waits on its
default slice (``Backend(wait_slice_us=None)``)."""

# run.py reads these two lines (their text, not by importing this module): a before cluster
# whose postmaster asks for the short slice as the others do, and whose registrant waits on
# its default slice -- the registrant's slice alone, A/B'd inside the benchmark.
BEFORE_POSTMASTER_SLICE_US = 100
BEFORE_WAIT_SLICE_US = None
BEFORE_FORK_PATH = "auto"  # the fork path the others have (bgwlab/forkpath.py)
