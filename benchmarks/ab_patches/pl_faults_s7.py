"""For benchmarks/ab_launch.py --a s7 --faults: pl_faults.py's record of one worker's minor
faults and CPU, for the frozen worker side ``pl_worker_s7`` too (pl_faults wraps only the
tree's ``main`` and ``pl_worker_s6c``'s).  Preloaded after pl_faults."""

import sys

import pl_faults

if "pl_worker_s7" in sys.modules:
    pl_faults._wrap(sys.modules["pl_worker_s7"])
