"""What the parallel-query tests share: the modules their postmasters preload, a cluster
fixture, and the check that no /dev/shm segment of this run is left behind."""

from __future__ import annotations

import pytest

from bgwlab import Cluster
from bgwlab.parallel import dsm

from conftest import our_segments, wait_until

PRELOAD = ("bgwlab.examples", "bgwlab.parallel.examples", "bgwlab.parallel.worker")
E = "bgwlab.parallel.examples:"


@pytest.fixture(autouse=True)
def no_segment_left():
    before = set(dsm.list_segments())
    yield
    wait_until(lambda: not our_segments(set(dsm.list_segments()) - before), 10, "no segment left in /dev/shm")


def cluster_and_backend(max_workers: int):
    """A fixture body: a cluster with the parallel entries preloaded and a backend on it."""
    c = Cluster.start(max_workers=max_workers, preload=PRELOAD)
    b = c.connect()
    try:
        yield c, b
    finally:
        b.detach()
        c.stop()
