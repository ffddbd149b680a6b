"""The worker's attach path: the table of contents read in one pass (Toc.entries), a
segment mapped only under the token it was handed, and the data queue attached after
the attach is announced (as PostgreSQL's ParallelQueryMain attaches its tuple queue
after ParallelWorkerMain attached the error queue)."""

from __future__ import annotations

import pytest

from bgwlab.parallel import ParallelContext, dsm
from bgwlab.parallel.layout import KEY_DATA_QUEUE, KEY_FIXED, PARALLEL_MAGIC, read_fixed
from bgwlab.parallel.toc import Toc, TocEstimator, estimate
from parallel_support import cluster_and_backend, no_segment_left  # noqa: F401


@pytest.fixture
def cb():
    yield from cluster_and_backend(4)


def test_entries_agree_with_lookup_and_keep_the_first_of_a_key():
    seg = dsm.Segment.create(4096)
    try:
        toc = Toc.create(seg.buf, 0xABC, 4)
        a, b = toc.allocate(100), toc.allocate(10)
        toc.insert(1, a)
        toc.insert(2, b)
        other = Toc.attach(seg.buf, 0xABC)
        assert other.entries() == {1: a, 2: b} == {k: other.lookup(k) for k in (1, 2)}
        assert Toc.create(seg.buf, 0xABC, 4).entries() == {}  # an empty table
    finally:
        seg.destroy()


def test_entries_refuse_an_offset_outside_the_segment():
    seg = dsm.Segment.create(4096)
    try:
        toc = Toc.create(seg.buf, 0xABC, 4)
        toc.insert(1, toc.allocate(64))
        import struct

        struct.pack_into("<QQ", seg.buf, 40, 1, 1 << 40)  # scribble the entry's offset
        with pytest.raises(ValueError, match="points outside"):
            toc.entries()
    finally:
        seg.destroy()


def test_estimate_is_what_the_estimator_adds_up():
    est = TocEstimator()
    est.key(7)
    for size in (1, 64, 65, 16384):
        est.chunk(size)
    assert est.estimate() == estimate(7, (1, 64, 65, 16384))


def test_attach_checks_the_token_before_mapping(cb):
    _c, b = cb
    with ParallelContext(b, "bgwlab.parallel.examples:do_nothing", nworkers=1) as pcxt:
        name, token = pcxt.segment.name, pcxt.segment.token
        with pytest.raises(ValueError, match="does not carry the token"):
            dsm.Segment.attach(name, token=token ^ 1)
        seg = dsm.Segment.attach(name, token=token)
        try:
            fixed = read_fixed(Toc.attach(seg.buf, PARALLEL_MAGIC), seg.buf)
            toc = Toc.attach(seg.buf, PARALLEL_MAGIC)
            assert fixed["data_base"] == toc.lookup(KEY_DATA_QUEUE)
            assert toc.lookup(KEY_FIXED) > 0 and fixed["nworkers"] == 1
        finally:
            seg.close()


def test_a_worker_sends_after_an_attach_that_came_before_its_data_queue(cb):
    """The leader may return from wait_for_attach before a worker's data queue has its
    sender: every message still arrives, and the finish is clean."""
    _c, b = cb
    for _ in range(3):
        with ParallelContext(b, "bgwlab.parallel.examples:first_message", nworkers=4) as pcxt:
            assert pcxt.launch() == 4
            pcxt.wait_for_attach()
            assert sorted(n for n, _m in pcxt.messages()) == [0, 1, 2, 3]
            pcxt.wait_for_finish()
