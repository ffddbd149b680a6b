"""A worker's error and data queues share one Peer of the leader (MessageQueue(peer_from=)).

The Peer is shared only for the same process (pid and start time) with the same latch
record, and its fds are released by the last holder's close -- never twice, never early.
Real processes, real pidfds.
"""

from __future__ import annotations

import os

import pytest

from bgwlab.parallel import ParallelContext
from bgwlab.parallel.latch import Peer
from bgwlab.procinfo import start_ticks
from parallel_support import cluster_and_backend, no_segment_left  # noqa: F401


def report_sharing(worker) -> None:
    """Worker entry: does the data queue use the Peer that the error queue found?"""
    data_peer = worker._mq._peer
    worker.send(repr((data_peer is not None, data_peer.fd == worker._leader.fd,
                      data_peer._refs, data_peer.pid)).encode())


def test_share_only_the_same_process_and_latch_and_release_on_the_last_close():
    me, start = os.getpid(), start_ticks(os.getpid())
    p = Peer(me, start)
    assert p.fd >= 0 and not p.shared
    assert p.share(me, start + 1, 0) is None  # another process (a recycled pid)
    assert p.share(me + 1, start, 0) is None
    assert p.share(me, start, 64) is None  # another latch record
    assert p.share(me, start, 0) is p and p.shared
    fd = p.fd
    p.close()  # the first holder: still open for the other
    assert p.fd == fd and not p.shared
    os.fstat(fd)
    p.close()  # the last: released
    assert p.fd == -1
    with pytest.raises(OSError):
        os.fstat(fd)
    assert p.share(me, start, 0) is None  # closed: nothing to share


@pytest.fixture
def cluster():
    yield from cluster_and_backend(4)


def test_a_workers_two_queues_share_one_peer_of_the_leader(cluster):
    c, b = cluster
    with ParallelContext(b, f"{__name__}:report_sharing", nworkers=2) as pcxt:
        assert pcxt.launch() == 2
        got = dict(pcxt.messages())
        pcxt.wait_for_finish()
    # Both queues hold it (refs 2), its pidfd is the one the worker watches the leader by,
    # and it is the leader: this process.
    want = repr((True, True, 2, os.getpid())).encode()
    assert got == {0: want, 1: want}


def test_the_pidfd_is_opened_and_checked_at_first_use():
    """Peer opens nothing when made; its first fd/gone opens the pidfd and checks the start
    time -- a pid whose start time is not the one named (recycled) is gone."""
    me, start = os.getpid(), start_ticks(os.getpid())
    before = set(os.listdir("/proc/self/fd"))
    p = Peer(me, start)
    assert set(os.listdir("/proc/self/fd")) == before  # nothing opened yet
    assert not p.gone and p.fd >= 0  # opened, checked: it is us
    p.close()
    q = Peer(me, start + 1)  # "another process" with our pid
    assert q.gone and q.fd == -1
    q.close()
    assert set(os.listdir("/proc/self/fd")) == before
