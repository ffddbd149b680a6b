# Frozen copy for benchmarks/ab_launch.py --a s7: bgwlab/parallel/mq.py as of 913c416 (before the worker
# start-up work of session 8), imports made absolute (pl_*_s7).  Do not edit.
"""A single-sender, single-receiver message queue in shared memory (PostgreSQL's ``shm_mq.c``).

Layout of one queue, at a 64-byte aligned offset of a segment (native u64 words)::

    word 0  bytes_written   total bytes the sender has published; only the sender writes
    word 1  bytes_read      total bytes the receiver has consumed; only the receiver writes
    word 2  sender_pid      0 until the sender attaches; set once, by the sender, last
    word 3  sender_start    its start time (clock ticks); written before sender_pid
    word 4  receiver_pid    0 until the receiver attaches; set once, by the receiver, last
    word 5  receiver_start  written before receiver_pid
    word 6  detached        0 -> 1, by either side (or on behalf of a dead counterpart)
    word 7  ring_size       set by the creator; a multiple of 8; never changes
    word 8  receiver_latch  offset, in this segment, of the receiver's latch record
                            (latch.py); written before receiver_pid, never changes
    word 9  sender_latch    the same for the sender
    128 ... the ring        ring_size bytes

The protocol (``shm_mq``'s invariants)
--------------------------------------

* **One sender, one receiver, each set once.**  ``set_sender`` / ``set_receiver`` store
  the start time and the latch record's offset, then the pid, then fence; a second
  attempt is refused.  Each side then sets the other's latch, so a counterpart waiting
  for it to attach re-checks.
* **Counters only grow, and 0 <= bytes_written - bytes_read <= ring_size.**  The
  difference is the unread data, starting at ring offset ``bytes_read % ring_size``.
  The sender may write only the free part of the ring and publishes by raising
  ``bytes_written``; only the receiver gives bytes back, by raising ``bytes_read``.
  So neither needs a lock to touch the ring: nobody else reads or writes the bytes it
  owns at that moment.
* **Messages are length-prefixed and aligned.**  A message is an 8-byte length word
  (``Size``) then the payload, padded to 8 bytes (``MAXALIGN``).  Since the ring size
  and every position are multiples of 8, a length word is never split.  A message larger
  than the ring, or one that would wrap at the ring's end, goes through in pieces: the
  sender writes what fits, waits for the receiver to make room, writes on
  (``shm_mq_send_bytes``); the receiver reassembles.  Any other message moves whole, in
  one copy each way (bgwlab's shortcut, same bytes and counters as PostgreSQL's): a
  sender short of room waits until all of it fits, and a receiver that finds it begun
  but not yet complete waits until it is (both publish their own counter before they
  wait, so the other side can always finish).
* **Blocking and non-blocking.**  ``send(nowait=True)`` / ``receive(nowait=True)``
  return ``WOULD_BLOCK`` instead of waiting; the call must be repeated (a send with the
  *same* message) and resumes where it stopped.
* **Detach only goes false -> true.**  After it, sends return ``DETACHED``; the receiver
  still drains every *complete* message already written, then gets ``DETACHED``.  A
  message cut short by a detach is never delivered.
* **Progress sets the counterpart's latch**: the sender's after a complete message (or
  when the ring is full, before it waits; and, inside a message larger than the ring,
  each time more than a quarter ring is pending -- PostgreSQL's ``shm_mq_send_bytes``
  publishes only when the ring is full: measured here, the two are equal), the
  receiver's when it gives space back (at least a quarter of the ring, or before it
  waits, or at the end of a message larger than the ring, before its copy into
  ``bytes``), either side's on detach.  One
  bgwlab departure: between messages, a receiver that finds the sender may be asleep
  publishes the room but wakes it only once three quarters of the ring are free (a
  wakeup is a system call and a context switch; on one CPU a sender woken for a
  quarter ring takes the CPU, writes a quarter, sleeps again); before it could block
  it always wakes it, so nothing is owed then.  As in
  PostgreSQL, the queue sets the latch every time and the *latch* decides what that
  costs (latch.py): nothing but a fence and a load while the counterpart's latch is
  still set or its owner is awake; one ``write()`` to its FIFO when it may be asleep.
  A side that finds nothing to do waits the latch way: reset, look, wait
  (``_wait`` waits then resets, and every caller looks before it waits again), so a
  set that lands after the look is never lost.  Nothing waits by polling (the latch may
  spin briefly before it sleeps while the counterpart runs: latch.py, "Spinning first").
* **A dead counterpart ends every wait.**  Before it attaches: through its worker handle
  (``shm_mq_set_handle``; the postmaster's notification sets our latch when it stops).
  After: through a pidfd of it, validated against its start time, in the same ``poll()``
  as our latch; a counterpart found dead is marked ``detached`` "to make it official".
  Two queues of one process with the same counterpart (a worker's error and data queues:
  both the leader's) may share that pidfd (``peer_from``): a (pid, start time) pair names
  one process, so one pidfd tells both queues; the last of them to close releases it.
  (In PostgreSQL a process that dies without detaching takes the whole cluster through
  crash-restart; bgwlab's leaders live outside that crash domain -- DESIGN §1a.)

Where memory ordering comes from
--------------------------------

The words are read and written through a ``memoryview`` cast to native ``Q``: one
aligned 8-byte load or store each (CPython copies them with a fixed-size ``memcpy``),
atomic on x86-64 and AArch64, so a counter is never seen torn -- never with
``struct.pack_into``, which zeroes a field before storing it.  Order: the sender writes
ring bytes *then* raises ``bytes_written``; the receiver reads ``bytes_written`` *then*
the ring.  x86-64 (TSO) keeps stores in order and loads in order, which is what
PostgreSQL's ``pg_write_barrier`` / ``pg_read_barrier`` enforce on weaker CPUs (CPython
exposes no barrier; bgwlab targets x86-64 here).  The store -> load orderings that a
wakeup needs are full fences (``latch.fence``):

* a progressing side raises its counter (or ``detached``), then ``SetLatch`` fences
  before it loads the counterpart's ``is_set`` (latch.py's fence A); the waiting side's
  ``ResetLatch`` fences between its store of ``is_set = 0`` and its look at the counter
  (fence C).  Dekker: one of them sees the other's store.
* attaching: a side stores its pid, then fences, then looks at the counters and the
  counterpart's pid; a progressing side that has not found its counterpart yet fences
  between its counter store and its load of the counterpart's pid.  So either it finds
  the new counterpart (and sets its latch) or the counterpart sees the progress.
"""

from __future__ import annotations

import struct

from pl_latch_s7 import FENCED, Peer, my_start_ticks, fence as _fence  # noqa: F401  (FENCED: re-exported)

HEADER_SIZE = 128  # 10 words used; the ring stays 64-byte aligned
MAXALIGN = 8
LENGTH_WORD = struct.Struct("=Q")
MAX_MESSAGE = (1 << 30) - 1  # PostgreSQL's MaxAllocSize
MIN_RING = 8
# A receiver keeps the buffer it reassembles a message larger than the ring in, for the
# next such message, up to this size (a fresh megabyte costs an allocation and zeroing).
KEEP_BUFFER = 4 << 20

(W_WRITTEN, W_READ, W_SENDER, W_SENDER_START, W_RECEIVER, W_RECEIVER_START, W_DETACHED, W_RING,
 W_RECEIVER_LATCH, W_SENDER_LATCH) = range(10)
N_WORDS = HEADER_SIZE // 8

def maxalign(n: int) -> int:
    return (n + MAXALIGN - 1) & ~(MAXALIGN - 1)


def queue_size_for(ring_size: int) -> int:
    """Bytes a queue with `ring_size` bytes of ring needs (header included)."""
    return HEADER_SIZE + maxalign(ring_size)


class _MqResultType(type):
    """What ``enum.EnumMeta`` gave MqResult: iteration, ``len``, lookup by name,
    ``__members__``.  (Not ``enum`` itself: it brings collections, functools, operator,
    reprlib, keyword and types into the image of a postmaster that preloads the worker
    side, and every fork copies their pages.)"""

    def __iter__(cls):
        return iter(cls._members)

    def __len__(cls):
        return len(cls._members)

    def __contains__(cls, member):
        return member in cls._members

    def __getitem__(cls, name):
        for m in cls._members:
            if m.name == name:
                return m
        raise KeyError(name)

    @property
    def __members__(cls):
        return {m.name: m for m in cls._members}

    def __repr__(cls):
        return f"<enum {cls.__name__!r}>"


class MqResult(metaclass=_MqResultType):
    """shm_mq_result: ``SUCCESS``, ``WOULD_BLOCK``, ``DETACHED``.

    Behaves as the ``enum.Enum`` it was: three singletons compared with ``is`` (or ``==``),
    with ``.name`` and ``.value`` ("success", "would_block", "detached"), the same ``repr``
    and ``str``, ``MqResult("success")`` and ``MqResult["SUCCESS"]`` give the member,
    iteration in that order; they pickle and copy as themselves."""

    __slots__ = ("name", "value")
    _members = ()

    def __new__(cls, value):
        for m in cls._members:
            if m.value == value:
                return m
        raise ValueError(f"{value!r} is not a valid {cls.__name__}")

    def __setattr__(self, name, value):
        raise AttributeError(f"cannot change a {type(self).__name__} member")

    def __delattr__(self, name):
        raise AttributeError(f"cannot change a {type(self).__name__} member")

    def __repr__(self):
        return f"<{type(self).__name__}.{self.name}: {self.value!r}>"

    def __str__(self):
        return f"{type(self).__name__}.{self.name}"

    def __hash__(self):
        return hash(self.name)

    def __reduce__(self):
        return (type(self), (self.value,))


def _result(name: str, value: str) -> MqResult:
    m = object.__new__(MqResult)
    object.__setattr__(m, "name", name)
    object.__setattr__(m, "value", value)
    setattr(MqResult, name, m)  # type.__setattr__: a class attribute, as an Enum member
    return m


SUCCESS, WOULD_BLOCK, DETACHED = (_result("SUCCESS", "success"), _result("WOULD_BLOCK", "would_block"),
                                  _result("DETACHED", "detached"))
MqResult._members = (SUCCESS, WOULD_BLOCK, DETACHED)


class QueueDetached(Exception):
    """Internal: a wait found the queue detached."""


def mq_create(buf, offset: int, size: int) -> int:
    """shm_mq_create: lay out an empty queue in `size` bytes at `offset`.  Creator only,
    before either side attaches.  Returns the ring size (`size` minus the header,
    rounded down to 8 -- PostgreSQL's MAXALIGN_DOWN)."""
    if offset % 64:
        raise ValueError("a queue must start at a 64-byte aligned offset")
    ring = (size - HEADER_SIZE) & ~(MAXALIGN - 1)
    if ring < MIN_RING:
        raise ValueError(f"a queue needs at least {HEADER_SIZE + MIN_RING} bytes, got {size}")
    if offset + HEADER_SIZE + ring > len(buf):
        raise ValueError("queue does not fit in the segment")
    words = memoryview(buf)[offset:offset + HEADER_SIZE].cast("Q")
    try:
        for i in range(N_WORDS):
            words[i] = 0
        words[W_RING] = ring
    finally:
        words.release()
    return ring


class MessageQueue:
    """shm_mq_handle: this process's handle on one queue, as its sender or its receiver.

    `latch` is this process's ``SharedLatch`` (latch.py), whose record must lie in the same
    mapping as the queue; `handle` (optional) the ``WorkerHandle`` of the counterpart, if
    it is a worker we registered.  `peer_from` (optional): another queue of this process
    whose counterpart may be this queue's too (a worker's error queue, for its data
    queue: both are the leader's) -- if that queue's counterpart, once found, is the same
    process with the same latch record, this queue uses its ``Peer`` instead of opening
    a second pidfd (a ``pidfd_open`` and a read of /proc saved).  Not thread-safe: one
    thread per handle, as in PostgreSQL.
    """

    def __init__(self, buf, offset: int, latch, *, expect_size: int | None = None, handle=None,
                 peer_from: MessageQueue | None = None):
        view = memoryview(buf)
        self._words = view[offset:offset + HEADER_SIZE].cast("Q")
        ring = self._words[W_RING]
        if ring < MIN_RING or ring % MAXALIGN or offset + HEADER_SIZE + ring > len(buf) or (
                expect_size is not None and HEADER_SIZE + ring > expect_size):
            self._words.release()
            view.release()
            raise ValueError("corrupt queue header (ring size out of range)")
        self._ring = view[offset + HEADER_SIZE:offset + HEADER_SIZE + ring]
        view.release()
        self._buf = buf
        self.ring_size = ring
        self.latch = latch
        self.handle = handle
        # True if whoever calls the non-blocking methods puts peer_fd in its own waits and
        # calls peer_exited() when it is readable (ParallelContext does): then a
        # WOULD_BLOCK costs no poll() of the pidfd.
        self.pidfd_watched = False
        self.role = None  # "sender" | "receiver"
        self._peer: Peer | None = None
        self._peer_also = None  # (the counterpart's pidfd,): what our waits poll besides the latch
        self._peer_from = peer_from
        # sender state (shm_mq_handle): published counter + bytes not yet published
        self._written = 0
        self._send_pending = 0
        self._pending_msg = None  # the message a non-blocking send has begun
        self._pending_done = 0  # bytes of it (length word included) already in the ring
        # receiver state
        self._read = 0
        self._consume_pending = 0
        self._woke_at = 0  # our read position when we last set the sender's latch
        self._lazy_room = 0  # a lazy flush defers a sleeping sender's wakeup until this much is free
        self._expected = -1  # payload length, once the length word is read
        self._partial = None  # memoryview of payload length, over _rbuf, being filled ...
        self._rbuf = None  # the bytearray kept for the next message larger than the ring
        self._got = 0  # ... this far
        self._closed = False

    # -- observation (any process) -------------------------------------------------------
    @property
    def bytes_written(self) -> int:
        return self._words[W_WRITTEN]

    @property
    def bytes_read(self) -> int:
        return self._words[W_READ]

    @property
    def detached(self) -> bool:
        return self._words[W_DETACHED] != 0

    @property
    def sender_pid(self) -> int:
        return self._words[W_SENDER]

    @property
    def receiver_pid(self) -> int:
        return self._words[W_RECEIVER]

    @property
    def peer_fd(self) -> int:
        """A pidfd of the counterpart once it has attached, else -1: for callers that wait
        on several queues at once (readable when the counterpart exits)."""
        peer = self._find_peer() if self.role else None
        return peer.fd if peer is not None else -1

    # -- attaching ----------------------------------------------------------------------------
    def set_sender(self) -> None:
        """shm_mq_set_sender + shm_mq_attach: this process is the sender.  Once per queue."""
        self._set_me(W_SENDER, W_SENDER_START, W_SENDER_LATCH, "sender")
        self._written = self._words[W_WRITTEN]

    def set_receiver(self) -> None:
        """shm_mq_set_receiver + shm_mq_attach: this process is the receiver.  Once per queue."""
        self._set_me(W_RECEIVER, W_RECEIVER_START, W_RECEIVER_LATCH, "receiver")
        self._read = self._woke_at = self._words[W_READ]
        self._lazy_room = (3 * self.ring_size) >> 2

    def _set_me(self, w_pid, w_start, w_latch, role) -> None:
        import os

        if self.role is not None or self._words[w_pid] != 0:
            raise RuntimeError(f"this queue already has a {role}: each side is set once")
        if getattr(self.latch, "buf", None) is not self._buf:
            raise ValueError("the latch's record must lie in the queue's segment (same mapping)")
        me = os.getpid()
        self._words[w_start] = my_start_ticks()
        self._words[w_latch] = self.latch.offset
        self._words[w_pid] = me  # last: a reader that sees the pid sees the start and latch
        _fence()  # our pid before our loads of the counters and the counterpart's pid
        self.role = role
        self._find_peer()
        if self._peer is not None:
            self._peer.set_latch()

    def set_handle(self, handle) -> None:
        """shm_mq_set_handle: the counterpart's WorkerHandle, once it is registered."""
        self.handle = handle

    def _find_peer(self) -> Peer | None:
        """The counterpart, once it has attached (opens its pidfd the first time)."""
        if self._peer is None:
            w_pid, w_start, w_latch = ((W_RECEIVER, W_RECEIVER_START, W_RECEIVER_LATCH)
                                       if self.role == "sender"
                                       else (W_SENDER, W_SENDER_START, W_SENDER_LATCH))
            pid = self._words[w_pid]
            if pid:  # TSO: loads in order, so the start and latch stored before it are here
                start, latch_off = self._words[w_start], self._words[w_latch]
                other = self._peer_from
                shared = None
                if other is not None and other._peer is not None and other._buf is self._buf:
                    shared = other._peer.share(pid, start, latch_off)  # same process, same latch
                self._peer = shared or Peer(pid, start, self._buf, latch_off)
                watch = getattr(self.latch, "watch", None)
                if watch is not None:
                    watch(self._peer)  # our waits spin only while it may be running
        return self._peer

    def _set_peer_latch(self) -> None:
        """SetLatch(counterpart): after a store of progress (a counter, detached)."""
        peer = self._peer
        if peer is None:
            _fence()  # our store of progress before our load of the counterpart's pid
            peer = self._find_peer()
            if peer is None:
                return  # not attached yet: it will look at the counters when it does
        peer.set_latch()

    def _counterparty_gone(self, look: bool = True) -> bool:
        """shm_mq_counterparty_gone: detached, or the counterpart is known to be dead.

        `look`: poll() its pidfd now (one system call).  Blocking paths pass False: their
        wait has the pidfd in its poll() and marks the peer gone when it is readable;
        so do non-blocking calls when ``pidfd_watched`` says the caller does the same."""
        if self._words[W_DETACHED]:
            return True
        peer = self._find_peer()
        if peer is not None:
            if peer._gone or (look and peer.gone):
                self._words[W_DETACHED] = 1  # make it official
                return True
            return False
        if self.handle is not None:
            from bgwlab.backend import NOT_YET_STARTED, STARTED

            status = self.handle.get_pid()[0]
            if status is not STARTED and status is not NOT_YET_STARTED:
                if self._find_peer() is None:  # it may have attached just before it stopped
                    self._words[W_DETACHED] = 1
                    return True
        return False

    def peer_exited(self) -> None:
        """A wait of the caller's found ``peer_fd`` readable: the counterpart exited."""
        if self._peer is not None:
            self._peer.mark_gone()

    def _wait(self) -> None:
        """Sleep on the latch until something may have changed; then reset it (the caller
        looks again before it waits again)."""
        peer = self._peer or self._find_peer()
        latch = self.latch
        if peer is not None and peer.fd >= 0:
            # attached: its pidfd tells us if it dies, no news from the postmaster needed
            also = self._peer_also
            if also is None or also[0] != peer.fd:
                also = self._peer_also = (peer.fd,)  # the same tuple every time: poll object reused
            if latch.wait(also=also, postmaster=False):
                peer.mark_gone()  # its pidfd is readable: it exited
        else:
            latch.wait()
        latch.reset()

    def wait_for_attach(self) -> MqResult:
        """shm_mq_wait_for_attach: SUCCESS once the counterpart attached; DETACHED if it is
        gone first (needs a handle or its pid to tell)."""
        self._check_role(None)
        while True:
            if self._find_peer() is not None:
                return SUCCESS
            if self._counterparty_gone():
                return DETACHED
            self._wait()

    # -- sending (sender only) -------------------------------------------------------------------
    def send(self, data, nowait: bool = False, flush: bool = True) -> MqResult:
        """shm_mq_send.  Sender only.

        `data`: bytes-like, at most 1 GiB - 1.  With nowait, WOULD_BLOCK means "call again
        with the same message".  flush=False may keep a small message unpublished until a
        quarter of the ring is pending (PostgreSQL's force_flush=false).
        """
        return self.sendv((data,), nowait, flush)

    def sendv(self, parts, nowait: bool = False, flush: bool = True) -> MqResult:
        """shm_mq_sendv: one message made of several buffers.  Sender only."""
        if self._closed or self.role != "sender":
            self._check_role("sender")
        if self._pending_msg is None:
            msg = b"".join(parts) if len(parts) != 1 else parts[0]
            if type(msg) is bytes or type(msg) is bytearray:
                n = len(msg)
                words, ring = self._words, self.ring_size
                total = 8 + ((n + 7) & ~7)
                while n <= MAX_MESSAGE and (self._written % ring) + total <= ring:
                    # Fast path: the whole message goes, unwrapped, into the free part of
                    # the ring in one step.
                    written = self._written
                    if total <= ring - (written - words[W_READ]) and not words[W_DETACHED]:
                        off = written % ring
                        buf = self._ring
                        LENGTH_WORD.pack_into(buf, off, n)
                        buf[off + 8:off + 8 + n] = msg
                        self._written = written + total
                        self._send_pending += total
                        if flush or self._send_pending > ring >> 2:
                            self._flush_written()
                        return SUCCESS
                    # Not room enough yet: wait for room for all of it (the receiver takes
                    # an unwrapped message whole anyway), rather than write it piece by piece.
                    res = self._wait_for_room(total, nowait)
                    if res is not SUCCESS:
                        return res  # nothing of it written: a retry may send anything
            else:
                msg = memoryview(msg).cast("B")
            n = len(msg)
            if n > MAX_MESSAGE:
                raise ValueError(f"cannot send a message of size {n} via shared memory queue "
                                 f"(at most {MAX_MESSAGE} bytes)")
            self._pending_msg = (LENGTH_WORD.pack(n), memoryview(msg))
            self._pending_done = 0
        else:
            again = b"".join(bytes(p) for p in parts)
            if bytes(self._pending_msg[1]) != again:
                raise ValueError("a non-blocking send of another message is in progress: call "
                                 "send() again with the same message until it returns SUCCESS")
        length, body = self._pending_msg
        while self._pending_done < 8:
            res, n = self._send_bytes(memoryview(length)[self._pending_done:], nowait)
            self._pending_done += n
            if res is not SUCCESS:
                return self._end_send(res)
        res, n = self._send_bytes(body[self._pending_done - 8:], nowait)
        self._pending_done += n
        if res is not SUCCESS:
            return self._end_send(res)
        self._pending_msg = None
        if flush or self._send_pending > self.ring_size // 4:
            self._flush_written()
        return SUCCESS

    def _wait_for_room(self, total: int, nowait: bool) -> MqResult:
        """Wait until `total` bytes of the ring are free (total <= ring size).  Publishes
        what we wrote first, so that the receiver can make that room."""
        words = self._words
        while True:
            if words[W_DETACHED]:
                return DETACHED
            if total <= self.ring_size - (self._written - words[W_READ]):
                return SUCCESS
            self._flush_written()  # let the receiver see everything before we wait
            if self._counterparty_gone(nowait and not self.pidfd_watched):
                return DETACHED
            if nowait:
                return WOULD_BLOCK
            self._wait()  # then reset: the loop looks again before it waits again

    def flush(self) -> None:
        """Publish every byte sent so far (and set the receiver's latch if it may sleep).
        Sender only."""
        self._check_role("sender")
        self._flush_written()

    def _end_send(self, res: MqResult) -> MqResult:
        if res is DETACHED:
            self._pending_msg = None
        return res

    def _flush_written(self) -> None:
        """shm_mq_inc_bytes_written + SetLatch(receiver)."""
        if self._send_pending:
            self._words[W_WRITTEN] = self._written
            self._send_pending = 0
            peer = self._peer
            if peer is not None:
                peer.set_latch()  # fences before it loads is_set (latch.py, A)
            else:
                self._set_peer_latch()

    def _send_bytes(self, data: memoryview, nowait: bool) -> tuple[MqResult, int]:
        """shm_mq_send_bytes: write as much of `data` as fits, waiting for room unless nowait."""
        ring, words, size = self.ring_size, self._words, self.ring_size
        sent, n = 0, len(data)
        while sent < n:
            used = self._written - words[W_READ]
            available = min(ring - used, n - sent)
            if words[W_DETACHED]:
                return DETACHED, sent
            if available == 0:
                self._flush_written()  # let the receiver see everything before we wait
                if self._counterparty_gone(nowait and not self.pidfd_watched):
                    return DETACHED, sent
                if nowait:
                    return WOULD_BLOCK, sent
                self._wait()  # then reset: the loop looks again before it waits again
                continue
            offset = self._written % size
            now = min(available, size - offset)
            self._ring[offset:offset + now] = data[sent:sent + now]
            sent += now
            step = maxalign(now)  # padding only ever at the end of a message
            self._written += step
            self._send_pending += step
            if self._send_pending > ring // 4:
                self._flush_written()
        return SUCCESS, sent

    # -- receiving (receiver only) --------------------------------------------------------------
    def receive(self, nowait: bool = False) -> tuple[MqResult, bytes | None]:
        """shm_mq_receive: (SUCCESS, message) | (WOULD_BLOCK, None) | (DETACHED, None).  Receiver only."""
        if self._closed or self.role != "receiver":
            self._check_role("receiver")
        ring = self.ring_size
        if self._consume_pending > ring >> 2:
            self._flush_read(lazy=True)
        while self._expected < 0:
            # Fast path: a whole message, unwrapped, already published.
            read = self._read
            used = self._words[W_WRITTEN] - read
            if used < 8:
                res, _, _ = self._receive_bytes(8, nowait)  # flushes, waits; then look again
                if res is not SUCCESS:
                    return res, None
                continue
            off = read % ring
            buf = self._ring
            (nbytes,) = LENGTH_WORD.unpack_from(buf, off)  # a length word is never split
            total = 8 + ((nbytes + 7) & ~7)
            if off + total > ring or nbytes > MAX_MESSAGE:
                break  # wraps (or is larger than the ring): in pieces, below
            if used >= total:
                msg = buf[off + 8:off + 8 + nbytes].tobytes()
                self._read = read + total
                self._consume_pending += total
                return SUCCESS, msg
            # Begun but not all published: wait for the rest, then take it whole (the
            # sender can write all of it: everything before it is consumed, and
            # _receive_bytes gives those bytes back before it waits).
            res, _, _ = self._receive_bytes(total, nowait)
            if res is not SUCCESS:
                return res, None
        if self._expected < 0:
            res, rb, off = self._receive_bytes(8, nowait)
            if res is not SUCCESS:
                return res, None
            (nbytes,) = LENGTH_WORD.unpack_from(self._ring, off)
            if nbytes > MAX_MESSAGE:
                self._words[W_DETACHED] = 1
                raise ValueError(f"invalid message size {nbytes} in shared memory queue")
            self._consume(8)
            self._expected = nbytes
            buf = self._rbuf
            if buf is None or len(buf) < nbytes:
                buf = bytearray(nbytes)
                self._rbuf = buf if nbytes <= KEEP_BUFFER else None
            self._partial = memoryview(buf)[:nbytes]
            self._got = 0
        need = self._expected
        while self._got < need:
            still = need - self._got
            res, rb, off = self._receive_bytes(still, nowait)
            if res is not SUCCESS:
                return res, None
            take = min(rb, still)
            self._partial[self._got:self._got + take] = self._ring[off:off + take]
            self._got += take
            self._consume(maxalign(take))
            if self._consume_pending > ring >> 2:
                # A message larger than the ring: give room back while we copy, so that a
                # sender waiting for it writes on while we read (instead of taking turns).
                self._flush_read()
        if self._consume_pending:
            # Publish the message's last piece before the copy below (a megabyte takes tens
            # of microseconds): a sender waiting for room writes the next message meanwhile,
            # instead of waiting for our next receive() (where PostgreSQL's shm_mq_receive
            # publishes it).  Lazy: a sender that may be asleep is woken only as usual.
            self._flush_read(lazy=True)
        msg = bytes(self._partial)
        self._partial.release()
        self._expected, self._partial = -1, None
        return SUCCESS, msg

    def _consume(self, n: int) -> None:
        self._read += n
        self._consume_pending += n

    def _flush_read(self, lazy: bool = False) -> None:
        """shm_mq_inc_bytes_read + SetLatch(sender).

        `lazy` (the quarter-ring flush between messages): a sender that may be asleep is
        woken only once three quarters of the ring are free since its last wakeup, not
        one quarter -- a wakeup costs a system call here and a context switch (on one CPU,
        the woken sender would take the CPU to write a quarter ring, then sleep again).
        Never lost: every flush before we wait or return WOULD_BLOCK is eager."""
        if self._consume_pending:
            self._words[W_READ] = self._read
            self._consume_pending = 0
            peer = self._peer
            if peer is None:
                self._set_peer_latch()
                return
            if lazy and self._read - self._woke_at < self._lazy_room:
                _fence()  # our bytes_read before our load of its maybe_sleeping (as fence A)
                if peer.may_sleep():
                    return  # owed: the next eager flush (before we wait) pays it
            self._woke_at = self._read
            peer.set_latch()  # fences before it loads is_set (latch.py, A)

    def _receive_bytes(self, needed: int, nowait: bool) -> tuple[MqResult, int, int]:
        """shm_mq_receive_bytes: wait until `needed` bytes are readable or the ring wraps.

        Returns (result, bytes readable at offset, offset)."""
        size, words = self.ring_size, self._words
        while True:
            written = words[W_WRITTEN]
            used = written - self._read
            offset = self._read % size
            if used >= needed or offset + used >= size:
                return SUCCESS, min(used, size - offset), offset
            self._flush_read()  # give room back before waiting for more
            if words[W_DETACHED] or self._counterparty_gone(nowait and not self.pidfd_watched):
                if written != words[W_WRITTEN]:
                    continue  # the sender wrote its last bytes and then detached: read them
                return DETACHED, 0, 0
            if nowait:
                return WOULD_BLOCK, 0, 0
            self._wait()  # then reset: the loop looks again before it waits again

    # -- detaching ------------------------------------------------------------------------------
    def detach(self) -> None:
        """shm_mq_detach: mark the queue detached (once and for all) and wake the counterpart.
        Either side; idempotent.  A sender publishes what it has written first."""
        if self.role == "sender":
            if self._send_pending:
                self._words[W_WRITTEN] = self._written
                self._send_pending = 0
        elif self.role == "receiver":
            self._flush_read()
        self._words[W_DETACHED] = 1
        self._set_peer_latch()

    def close(self) -> None:
        """Release this handle (memoryviews, pidfd).  Does not detach."""
        if self._closed:
            return
        self._closed = True
        self._pending_msg = None
        if self._partial is not None:
            self._partial.release()
            self._partial = None
        self._rbuf = None
        self._ring.release()
        self._words.release()
        self._buf = None
        self._peer_from = None
        if self._peer is not None:
            unwatch = getattr(self.latch, "unwatch", None)
            if unwatch is not None and not self._peer.shared:  # (another queue still watches it)
                unwatch(self._peer)
            self._peer.close()  # a shared Peer: released by its last holder's close

    def _check_role(self, role) -> None:
        if self._closed:
            raise RuntimeError("this queue handle is closed")
        if role is not None and self.role != role:
            raise RuntimeError(f"only the queue's {role} may do that (this process is "
                               f"{self.role or 'not attached'})")
        if role is None and self.role is None:
            raise RuntimeError("attach first (set_sender or set_receiver)")

    def __repr__(self):
        return (f"<MessageQueue {self.role} ring={self.ring_size} written={self.bytes_written} "
                f"read={self.bytes_read}{' detached' if self.detached else ''}>")
