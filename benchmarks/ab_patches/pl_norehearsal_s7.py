"""For benchmarks/ab_launch.py --prepatch-a (or -b): that side's postmaster does not rehearse
the parallel worker's path in its image (bgwlab.parallel.worker._rehearse, session 8).
Preloaded first, before bgwlab.parallel.worker reads BGWLAB_PARALLEL_REHEARSALS; its
workers inherit the variable, which nothing else in them reads."""

import os

os.environ["BGWLAB_PARALLEL_REHEARSALS"] = "0"
