"""The message queue (bgwlab.parallel.mq), its table of contents and its segment.

Single-process tests drive both ends by hand (non-blocking only) through every
interleaving hypothesis finds; real-process tests put the other end in a bgwlab worker
(bgwlab.parallel.examples:mq_peer) and check the same invariants across processes.
"""

from __future__ import annotations

import json
import os
import signal
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bgwlab import NEVER_RESTART, Fault, WorkerSpec
from bgwlab.parallel import dsm, mq as mqmod
from bgwlab.parallel import examples as ex
from bgwlab.parallel.latch import LATCH_SIZE, LeaderLatch, create_latches, drain_fifo, latch_space
from bgwlab.parallel.mq import DETACHED, SUCCESS, WOULD_BLOCK, MessageQueue, mq_create, queue_size_for
from bgwlab.parallel.toc import Toc
from conftest import wait_until
from parallel_support import PRELOAD, E, cluster_and_backend, no_segment_left  # noqa: F401



@pytest.fixture
def peer_cluster():
    yield from cluster_and_backend(4)


class Pair:
    """Both ends of one queue in this process (non-blocking use only)."""

    def __init__(self, ring: int):
        qsize = (queue_size_for(ring) + 63) // 64 * 64
        self.seg = dsm.Segment.create(qsize + latch_space(1))
        self.ring = mq_create(self.seg.buf, 0, queue_size_for(ring))
        create_latches(self.seg, qsize, 1)
        self.latch = LeaderLatch(None, self.seg.buf, qsize)
        self.tx = MessageQueue(self.seg.buf, 0, self.latch)
        self.rx = MessageQueue(self.seg.buf, 0, self.latch)
        self.tx.set_sender()
        self.rx.set_receiver()

    def close(self):
        self.tx.close()
        self.rx.close()
        self.latch.close()
        self.seg.destroy()


# -- one process, every interleaving ----------------------------------------------------------
ops = st.lists(st.one_of(st.tuples(st.just("send"), st.integers(0, 300)),
                         st.tuples(st.just("recv"), st.just(0)),
                         st.tuples(st.just("detach_tx"), st.just(0)),
                         st.tuples(st.just("detach_rx"), st.just(0))), max_size=60)


@settings(max_examples=300, deadline=None)
@given(ring=st.sampled_from([8, 16, 24, 64, 120, 256]), steps=ops)
def test_interleavings_keep_the_invariants(ring, steps):
    p = Pair(ring)
    try:
        sent, got, inflight = [], [], None
        last_w = last_r = 0
        was_detached = False
        for i, (op, size) in enumerate(steps):
            if op == "send":
                if inflight is None:
                    inflight = os.urandom(size)
                res = p.tx.send(inflight, nowait=True)
                if res is SUCCESS:
                    sent.append(inflight)
                    inflight = None
                elif res is DETACHED:
                    assert p.tx.detached
                    inflight = None
                else:
                    assert res is WOULD_BLOCK and not p.tx.detached
                    assert p.tx.bytes_written - p.tx.bytes_read == p.ring  # only when full
            elif op == "recv":
                res, msg = p.rx.receive(nowait=True)
                if res is SUCCESS:
                    got.append(msg)
                    assert got == sent[:len(got)]  # in order, never a partial message
                elif res is DETACHED:
                    assert p.rx.detached and got == sent  # drained past the detach
                else:
                    assert not p.rx.detached
            elif op == "detach_tx":
                p.tx.detach()
            else:
                p.rx.detach()
            w, r = p.rx.bytes_written, p.rx.bytes_read
            assert w >= last_w and r >= last_r, "counters only grow"
            assert 0 <= w - r <= p.ring, "unread bytes fit the ring"
            assert w % 8 == 0 and r % 8 == 0, "every position is MAXALIGNed"
            assert p.rx.detached or not was_detached, "detach never goes back"
            last_w, last_r, was_detached = w, r, p.rx.detached
        # Whatever happened, a receiver that keeps reading gets every complete message.
        p.tx.detach()
        while (res := p.rx.receive(nowait=True))[0] is SUCCESS:
            got.append(res[1])
        assert res[0] is DETACHED and got == sent
    finally:
        p.close()


def test_a_message_larger_than_the_ring_goes_through_in_pieces():
    p = Pair(64)
    try:
        msg = os.urandom(1000)
        got = None
        for _ in range(100):
            res = p.tx.send(msg, nowait=True)
            r, m = p.rx.receive(nowait=True)
            if r is SUCCESS:
                got = m
                break
            assert res is WOULD_BLOCK and r is WOULD_BLOCK
        assert got == msg and p.ring == 64
        # Consumption is published lazily (a quarter ring at a time), and always before
        # the receiver would wait: then bytes_read covers the length word and the padding.
        assert p.rx.receive(nowait=True)[0] is WOULD_BLOCK
        assert p.rx.bytes_read == p.rx.bytes_written == 8 + 1000
    finally:
        p.close()


def test_a_sleeping_sender_is_woken_once_three_quarters_are_free_and_before_the_receiver_waits():
    """Between messages the receiver publishes bytes_read every quarter ring, but wakes a
    sender that may be asleep only once three quarters are free (a wakeup is a system call
    and a context switch); an awake sender's latch is set at the first quarter, as in
    PostgreSQL; and whatever is owed is paid before the receiver could wait."""
    from bgwlab.parallel.latch import W_IS_SET, W_MAYBE_SLEEPING, SharedLatch

    ring = 1024
    qsize = (queue_size_for(ring) + 63) // 64 * 64
    seg = dsm.Segment.create(qsize + latch_space(2))
    mq_create(seg.buf, 0, queue_size_for(ring))
    create_latches(seg, qsize, 2)
    tl, rl = SharedLatch(seg.buf, qsize), SharedLatch(seg.buf, qsize + LATCH_SIZE)
    tx, rx = MessageQueue(seg.buf, 0, tl), MessageQueue(seg.buf, 0, rl)
    rec = memoryview(seg.buf)[qsize:qsize + 16].cast("Q")  # the sender's is_set, maybe_sleeping
    try:
        tx.set_sender()
        rx.set_receiver()
        for sleeping in (1, 0):
            while tx.send(bytes(56), nowait=True) is SUCCESS:  # 64 bytes a message: fill it
                pass
            rec[W_IS_SET], rec[W_MAYBE_SLEEPING] = 0, sleeping
            woken_at = None
            while woken_at is None:
                assert rx.receive(nowait=True)[0] is SUCCESS
                if rec[W_IS_SET]:
                    woken_at = rx.bytes_read
            start = tx.bytes_written - ring  # where this round's reading began
            if sleeping:
                assert woken_at - start >= 3 * ring // 4  # room was published before, silently
            else:
                assert woken_at - start <= ring // 4 + 64
            while rx.receive(nowait=True)[0] is SUCCESS:
                pass
            rl.reset()
            drain_fifo(tl.fd)
        # Owed when the receiver runs dry: paid before it returns WOULD_BLOCK (or waits).
        assert tx.send(bytes(56), nowait=True) is SUCCESS
        for _ in range(6):
            assert tx.send(bytes(56), nowait=True) is SUCCESS
        rec[W_IS_SET], rec[W_MAYBE_SLEEPING] = 0, 1
        while (res := rx.receive(nowait=True))[0] is SUCCESS:
            pass
        assert res[0] is WOULD_BLOCK and rec[W_IS_SET] == 1 and rx.bytes_read == tx.bytes_written
        rec[W_MAYBE_SLEEPING] = 0
    finally:
        rec.release()
        tx.close()
        rx.close()
        tl.close()
        rl.close()
        seg.destroy()


def test_protocol_misuse_is_refused():
    p = Pair(64)
    try:
        with pytest.raises(RuntimeError, match="already has a sender"):
            MessageQueue(p.seg.buf, 0, p.latch).set_sender()
        with pytest.raises(RuntimeError, match="only the queue's sender"):
            p.rx.send(b"x")
        with pytest.raises(RuntimeError, match="only the queue's receiver"):
            p.tx.receive()
        assert p.tx.send(os.urandom(200), nowait=True) is WOULD_BLOCK
        with pytest.raises(ValueError, match="same message"):
            p.tx.send(b"another", nowait=True)
    finally:
        p.close()


def test_bad_sizes_are_refused_before_use(monkeypatch):
    seg = dsm.Segment.create(4096)
    create_latches(seg, 2048, 1)
    latch = LeaderLatch(None, seg.buf, 2048)
    try:
        with pytest.raises(ValueError, match="at least"):
            mq_create(seg.buf, 0, 64)
        with pytest.raises(ValueError, match="aligned"):
            mq_create(seg.buf, 8, 256)
        with pytest.raises(ValueError, match="does not fit"):
            mq_create(seg.buf, 0, 8192)
        mq_create(seg.buf, 0, 256)
        stranger = dsm.Segment.create(4096)  # a latch whose record is in another segment
        try:
            create_latches(stranger, 64, 1)
            other = LeaderLatch(None, stranger.buf, 64)
            wrong = MessageQueue(seg.buf, 0, other)
            with pytest.raises(ValueError, match="same mapping"):
                wrong.set_sender()
            wrong.close()
            other.close()
        finally:
            stranger.destroy()
        q = MessageQueue(seg.buf, 0, latch)
        q.set_sender()
        monkeypatch.setattr(mqmod, "MAX_MESSAGE", 100)
        with pytest.raises(ValueError, match="cannot send a message of size 101"):
            q.send(bytes(101))
        assert q.bytes_written == 0
        struct.pack_into("=Q", seg.buf, 7 * 8, 1 << 40)  # a scribbled ring size
        with pytest.raises(ValueError, match="corrupt queue header"):
            MessageQueue(seg.buf, 0, latch)
        q.close()
    finally:
        latch.close()
        seg.destroy()


def test_toc_places_and_finds_chunks():
    seg = dsm.Segment.create(4096)
    try:
        toc = Toc.create(seg.buf, 0xABC, 3)
        a, b = toc.allocate(100), toc.allocate(10)
        toc.insert(1, a)
        toc.insert(2, b)
        assert a % 64 == 0 and b % 64 == 0 and b + 64 <= a
        other = Toc.attach(seg.buf, 0xABC)
        assert other.lookup(1) == a and other.lookup(2) == b
        assert other.lookup(3, missing_ok=True) is None
        with pytest.raises(ValueError, match="already"):
            toc.insert(1, a)
        with pytest.raises(ValueError, match="out of space"):
            toc.allocate(8192)
        with pytest.raises(ValueError, match="magic"):
            Toc.attach(seg.buf, 0xABD)
    finally:
        seg.destroy()


def test_segment_is_private_and_freed_exactly_once():
    seg = dsm.Segment.create(10_000)
    path = os.path.join(dsm.SHM_DIR, seg.name)
    st_ = os.stat(path)
    assert st_.st_mode & 0o777 == 0o600 and st_.st_size == 10_000
    other = dsm.Segment.attach(seg.name)
    other.buf[5] = 7
    assert seg.buf[5] == 7
    other.close()
    seg.destroy()
    assert not os.path.exists(path)
    seg.destroy()  # a second call frees nothing more and does not fail
    with pytest.raises(FileNotFoundError):
        dsm.Segment.attach(seg.name)
    with pytest.raises(ValueError):
        dsm.Segment.attach("../etc/passwd")


def test_remove_orphans_frees_only_segments_of_dead_leaders():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    dead = dsm.segment_name(pid, 12345, 1)
    fd = os.open(os.path.join(dsm.SHM_DIR, dead), os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    live = dsm.Segment.create(4096)
    try:
        removed = dsm.remove_orphans()
        assert dead in removed and live.name not in removed
        assert live.exists() and not os.path.exists(os.path.join(dsm.SHM_DIR, dead))
    finally:
        live.destroy()


# -- real processes ------------------------------------------------------------------------------
def start_peer(backend, ring, plan, fault=None):
    """A segment with a plan, one queue and a result area, and a worker on the other end."""
    raw = json.dumps(plan).encode()
    size = 4096 + len(raw) + queue_size_for(ring) + ex.RESULT_SIZE + 256
    size += latch_space(2) + 64
    seg = dsm.Segment.create(size)
    toc = Toc.create(seg.buf, ex.PEER_MAGIC, 4)
    off = toc.allocate(4 + len(raw))
    struct.pack_into("<I", seg.buf, off, len(raw))
    seg.buf[off + 4:off + 4 + len(raw)] = raw
    toc.insert(ex.KEY_PLAN, off)
    q_off = toc.allocate(queue_size_for(ring))
    mq_create(seg.buf, q_off, queue_size_for(ring))
    toc.insert(ex.KEY_QUEUE, q_off)
    toc.insert(ex.KEY_RESULT, toc.allocate(ex.RESULT_SIZE))
    l_off = toc.allocate(latch_space(2))
    create_latches(seg, l_off, 2)  # 0: ours, 1: the peer's
    toc.insert(ex.KEY_PEER_LATCHES, l_off)
    h = backend.register_dynamic_worker(WorkerSpec(
        name="mq peer", entry="bgwlab.parallel.examples:mq_peer", extra=seg.name.encode(),
        restart=NEVER_RESTART, notify=True, fault=fault))
    return seg, toc, q_off, h


def peer_result(seg, toc):
    off = toc.lookup(ex.KEY_RESULT)
    (n,) = struct.unpack_from("<I", seg.buf, off)
    return json.loads(bytes(seg.buf[off + 4:off + 4 + n])) if n else None


sizes_st = st.lists(st.one_of(st.integers(0, 40), st.integers(41, 3000)), min_size=0, max_size=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ring=st.sampled_from([8, 64, 200, 1024]), sizes=sizes_st,
       peer_nowait=st.lists(st.booleans(), min_size=1, max_size=3),
       my_nowait=st.lists(st.booleans(), min_size=1, max_size=3),
       detach_after=st.none() | st.integers(0, 12), partial=st.booleans(),
       worker_sends=st.booleans(), seed=st.integers(0, 10**6))
def test_across_processes_every_message_arrives_whole_and_in_order(
        peer_cluster, ring, sizes, peer_nowait, my_nowait, detach_after, partial, worker_sends, seed):
    _c, b = peer_cluster
    stop = len(sizes) if detach_after is None else min(detach_after, len(sizes))
    plan = dict(role="send" if worker_sends else "receive", sizes=sizes, nowait=peer_nowait,
                detach_after=stop, partial=partial, seed=seed)
    seg, toc, q_off, h = start_peer(b, ring, plan)
    latch = LeaderLatch(b, seg.buf, toc.lookup(ex.KEY_PEER_LATCHES))
    q = MessageQueue(seg.buf, q_off, latch, handle=h)
    try:
        if worker_sends:
            q.set_receiver()
            got, i = [], 0
            while True:
                res, msg = q.receive(nowait=my_nowait[i % len(my_nowait)])
                i += 1
                if res is WOULD_BLOCK:
                    latch.wait(also=(q.peer_fd,) if q.peer_fd >= 0 else ())
                    latch.reset()
                    continue
                if res is DETACHED:
                    break
                got.append(msg)
        else:
            q.set_sender()
            results = []
            for k in range(stop):
                msg = ex.message(seed, k, sizes[k])
                while (res := q.send(msg, nowait=my_nowait[k % len(my_nowait)])) is WOULD_BLOCK:
                    latch.wait(also=(q.peer_fd,) if q.peer_fd >= 0 else ())
                    latch.reset()
                results.append(res)
            assert results == [SUCCESS] * stop  # the receiver waits for all of them
            q.detach()
        assert h.wait_for_shutdown(timeout=20).name == "STOPPED"
        result = peer_result(seg, toc)
        assert result is not None and result["ok"], result
        if worker_sends:
            # Exactly the complete messages, in order.  The one begun with nowait just before
            # the detach arrives only if that send completed; cut off, it never arrives.
            n = stop + (partial and stop < len(sizes) and result["results"][-1] == "SUCCESS")
            assert got == [ex.message(seed, k, sizes[k]) for k in range(n)]
        if not worker_sends:
            assert result["got"] == stop
            assert result["results"][stop:] in ([], ["DETACHED"])
        w, r = q.bytes_written, q.bytes_read
        assert 0 <= w - r <= q.ring_size and w % 8 == 0
    finally:
        q.close()
        latch.close()
        seg.destroy()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ring=st.sampled_from([8, 64, 512]), sizes=st.lists(st.integers(0, 2000), min_size=3, max_size=8),
       detach_after=st.integers(0, 2))
def test_a_receiver_that_detaches_stops_the_sender(peer_cluster, ring, sizes, detach_after):
    """Detach from the receiving side: the sender gets SUCCESS then only DETACHED, never hangs."""
    _c, b = peer_cluster
    seg, toc, q_off, h = start_peer(b, ring, dict(role="send", sizes=sizes, nowait=[False],
                                                  detach_after=None, partial=False, seed=1))
    latch = LeaderLatch(b, seg.buf, toc.lookup(ex.KEY_PEER_LATCHES))
    q = MessageQueue(seg.buf, q_off, latch, handle=h)
    try:
        q.set_receiver()
        for k in range(detach_after):
            assert q.receive() == (SUCCESS, ex.message(1, k, sizes[k]))
        q.detach()
        assert h.wait_for_shutdown(timeout=20).name == "STOPPED"
        results = peer_result(seg, toc)["results"]
        n_ok = results.count("SUCCESS")
        assert results == ["SUCCESS"] * n_ok + ["DETACHED"] * (len(results) - n_ok)
        assert n_ok >= detach_after
    finally:
        q.close()
        latch.close()
        seg.destroy()


@pytest.mark.parametrize("fault", [Fault.fork_failure(), Fault.crash_before_main(exit_code=1)],
                         ids=["fork_failure", "early_exit"])
def test_a_counterpart_that_never_attaches_is_detected_through_its_handle(peer_cluster, fault):
    _c, b = peer_cluster
    seg, toc, q_off, h = start_peer(b, 64, dict(role="send", sizes=[1], nowait=[False],
                                                detach_after=None, partial=False, seed=0), fault)
    latch = LeaderLatch(b, seg.buf, toc.lookup(ex.KEY_PEER_LATCHES))
    q = MessageQueue(seg.buf, q_off, latch)
    try:
        q.set_receiver()
        q.set_handle(h)
        assert q.wait_for_attach() is DETACHED  # returns: no hang
        assert q.receive() == (DETACHED, None)
        assert q.sender_pid == 0 and q.detached
    finally:
        q.close()
        latch.close()
        seg.destroy()


def test_a_sender_killed_mid_message_gives_detached_not_a_hang(peer_cluster):
    _c, b = peer_cluster
    seg, toc, q_off, h = start_peer(b, 64, dict(role="send", sizes=[100_000], nowait=[False],
                                                detach_after=None, partial=False, seed=0))
    latch = LeaderLatch(b, seg.buf, toc.lookup(ex.KEY_PEER_LATCHES))
    q = MessageQueue(seg.buf, q_off, latch, handle=h)
    try:
        q.set_receiver()
        assert q.wait_for_attach() is SUCCESS
        wait_until(lambda: q.bytes_written - q.bytes_read == q.ring_size, 10, "the sender to fill the ring")
        os.kill(q.sender_pid, signal.SIGKILL)
        assert q.receive() == (DETACHED, None)  # the pidfd said it died; half a message is dropped
        assert q.bytes_written < 100_000 and q.detached
        assert h.wait_for_shutdown(timeout=20).name == "STOPPED"
    finally:
        q.close()
        latch.close()
        seg.destroy()
