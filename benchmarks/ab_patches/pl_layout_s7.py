# Frozen copy for benchmarks/ab_launch.py --a s7: bgwlab/parallel/layout.py as of 913c416 (before the worker
# start-up work of session 8), imports made absolute (pl_*_s7).  Do not edit.
"""The layout of a parallel context's segment, shared by the leader and its workers.

PostgreSQL's ``InitializeParallelDSM`` places, through the table of contents (toc.py)::

    PARALLEL_KEY_FIXED        FixedParallelState: leader pid + start time, sizes
    PARALLEL_KEY_ENTRYPOINT   "module:function" of the workers' code
    PARALLEL_KEY_PAYLOAD      the leader's bytes for every worker (read-only)
    PARALLEL_KEY_ERROR_QUEUE  nworkers error queues: 'E' + traceback, or 'X' (clean exit)
    PARALLEL_KEY_DATA_QUEUE   nworkers data queues (PostgreSQL's executor tuple queues)
    PARALLEL_KEY_LATCHES      1 + nworkers latch records (latch.py): the leader's, then
                              worker i's at 1 + i (PostgreSQL's procLatch lives in PGPROC)
    KEY_ATTACH                (bgwlab's) the attach wakeup: nworkers_launched + 1 once
                              launch() has registered them all (0 before), and the name of
                              the FIFO that the last worker to attach writes (context.py)

Worker ``i`` sends on queue ``i`` of each array; the leader is the receiver of all of
them, set before any worker exists.  Written only by the leader, before the first
registration; read-only afterwards (queues excepted: they have their own protocol; and
the attach word, which the leader stores once, after the last registration).
"""

from __future__ import annotations

import struct

from pl_latch_s7 import LATCH_SIZE, latch_space
from pl_mq_s7 import queue_size_for
from pl_toc_s7 import ALIGN, Toc, estimate

PARALLEL_MAGIC = 0x42475750_00000003  # "BGWP", version 3 (the attach wakeup)
KEY_FIXED, KEY_ENTRYPOINT, KEY_PAYLOAD, KEY_ERROR_QUEUE, KEY_DATA_QUEUE, KEY_LATCHES = 1, 2, 3, 4, 5, 6
KEY_ATTACH = 7
N_KEYS = 7
# The attach chunk (native u64 words): word 0 launched + 1 (0: not yet known), word 1 the
# FIFO name's length, then the name (ASCII).
ATTACH_SIZE = 128
ATTACH_NAME_OFF = 16
ERROR_QUEUE_SIZE = 16384  # PARALLEL_ERROR_QUEUE_SIZE
# leader_pid, leader_start, nworkers, entry_len, payload_len, error ring, data ring
FIXED = struct.Struct("<qQIIQQQ")
EXTRA = struct.Struct("<I")  # worker number, then the segment name (ASCII)


class Layout:
    """Sizes and offsets of one context's segment."""

    def __init__(self, nworkers: int, entry_len: int, payload_len: int, ring: int,
                 error_ring: int = ERROR_QUEUE_SIZE):
        self.nworkers, self.entry_len, self.payload_len = nworkers, entry_len, payload_len
        self.ring, self.error_ring = ring, error_ring
        self.error_stride = -(-queue_size_for(error_ring) // ALIGN) * ALIGN  # (toc.align)
        self.data_stride = -(-queue_size_for(ring) // ALIGN) * ALIGN
        self.size = estimate(N_KEYS, (FIXED.size, entry_len, max(payload_len, 1),
                                      self.error_stride * max(nworkers, 1),
                                      self.data_stride * max(nworkers, 1),
                                      latch_space(nworkers + 1), ATTACH_SIZE))

    def error_queue(self, base: int, i: int) -> int:
        return base + i * self.error_stride

    def data_queue(self, base: int, i: int) -> int:
        return base + i * self.data_stride

    @staticmethod
    def latch(base: int, k: int) -> int:
        """Latch record k: 0 is the leader's, 1 + i worker i's."""
        return base + k * LATCH_SIZE


def encode_extra(number: int, name: str) -> bytes:
    return EXTRA.pack(number) + name.encode("ascii")


def decode_extra(extra: bytes) -> tuple[int, str]:
    if len(extra) <= EXTRA.size:
        raise ValueError("a parallel worker's extra bytes must hold its number and segment name")
    return EXTRA.unpack_from(extra)[0], extra[EXTRA.size:].decode("ascii")


def read_fixed(toc: Toc, buf) -> dict:
    """The fixed state, checked against the segment.  Any process (workers trust nothing).
    Every key is looked up in one pass over the table (Toc.entries)."""
    keys = toc.entries()
    try:
        off, e_off, p_off, l_off, a_off, err_off, data_off = (
            keys[KEY_FIXED], keys[KEY_ENTRYPOINT], keys[KEY_PAYLOAD], keys[KEY_LATCHES],
            keys[KEY_ATTACH], keys[KEY_ERROR_QUEUE], keys[KEY_DATA_QUEUE])
    except KeyError as e:
        raise KeyError(f"key {e.args[0]:#x} is not in the table of contents") from None
    size = len(buf)
    if off + FIXED.size > size:
        raise ValueError("corrupt parallel state (fixed state outside the segment)")
    pid, start, nworkers, entry_len, payload_len, error_ring, ring = FIXED.unpack_from(buf, off)
    lay = Layout(nworkers, entry_len, payload_len, ring, error_ring)
    if lay.size > size or pid <= 0 or entry_len > 1024:
        raise ValueError("corrupt parallel state (sizes do not fit the segment)")
    if e_off + entry_len > size or p_off + payload_len > size:
        raise ValueError("corrupt parallel state (entry or payload outside the segment)")
    if l_off + latch_space(nworkers + 1) > size:
        raise ValueError("corrupt parallel state (latch records outside the segment)")
    if a_off % 8 or a_off + ATTACH_SIZE > size:
        raise ValueError("corrupt parallel state (attach chunk outside the segment)")
    return dict(leader_pid=pid, leader_start=start, nworkers=nworkers, layout=lay,
                entry=bytes(buf[e_off:e_off + entry_len]).decode(),
                payload_off=p_off, payload_len=payload_len,
                error_base=err_off, data_base=data_off, latch_base=l_off, attach_off=a_off)
