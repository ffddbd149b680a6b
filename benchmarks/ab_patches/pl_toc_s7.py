# Frozen copy for benchmarks/ab_launch.py --a s7: bgwlab/parallel/toc.py as of 913c416 (before the worker
# start-up work of session 8), imports made absolute (pl_*_s7).  Do not edit.
"""A table of contents for a dynamic shared-memory segment (PostgreSQL's ``shm_toc.c``).

The leader lays the segment out once, before any worker exists; workers look things up
by key.  Layout, at offset 0 of the segment (little-endian u64 words)::

    0    magic           says what the segment is for (e.g. a parallel context)
    8    total_bytes     size of the segment, rounded down to ALIGN
    16   allocated       bytes handed out so far, from the END of the segment backwards
    24   nentry          entries used
    32   max_entries     capacity of the entry array
    40   entries         (key, offset) pairs, 16 bytes each

As in PostgreSQL, entries grow up from the header and chunks grow down from the end, and
every chunk is aligned (to a 64-byte cache line here, ``BUFFERALIGN`` there).

Ownership: only the leader writes the table, and only before it registers a worker
(registration is a system call, so workers forked afterwards see every byte).  After
that the table is read-only; readers still check every offset against the segment's
size, so a scribbled table is an error, never a stray access.
"""

from __future__ import annotations

import struct

HEADER = struct.Struct("<QQQQQ")
ENTRY = struct.Struct("<QQ")
ALIGN = 64


def align(n: int, to: int = ALIGN) -> int:
    return (n + to - 1) // to * to


class TocEstimator:
    """shm_toc_estimate_chunk / shm_toc_estimate_keys / shm_toc_estimate."""

    def __init__(self):
        self.space = 0
        self.keys = 0

    def chunk(self, size: int) -> None:
        self.space += align(size)

    def key(self, n: int = 1) -> None:
        self.keys += n

    def estimate(self) -> int:
        return estimate(self.keys, (self.space,))


def estimate(keys: int, chunks) -> int:
    """shm_toc_estimate in one call: the bytes a table of `keys` entries and `chunks` (sizes)
    takes -- what a TocEstimator adds up, for a caller that knows them all at once."""
    total = align(HEADER.size + keys * ENTRY.size)
    for size in chunks:
        total += align(size)
    return total


class Toc:
    """A table of contents over a writable buffer (a segment's mmap)."""

    def __init__(self, buf, magic: int):
        self.buf = buf
        self.magic = magic

    @classmethod
    def create(cls, buf, magic: int, max_entries: int) -> Toc:
        """shm_toc_create.  Leader only, before any worker exists.  Chunks are carved from
        the end of the buffer rounded down to ALIGN, so every chunk starts aligned."""
        total = len(buf) // ALIGN * ALIGN
        if align(HEADER.size + max_entries * ENTRY.size) > total:
            raise ValueError("segment too small for its table of contents")
        HEADER.pack_into(buf, 0, magic, total, 0, 0, max_entries)
        return cls(buf, magic)

    @classmethod
    def attach(cls, buf, magic: int) -> Toc:
        """shm_toc_attach: check the header.  Any process."""
        m, total, allocated, nentry, max_entries = HEADER.unpack_from(buf, 0)
        if m != magic:
            raise ValueError("not the expected kind of segment (bad table-of-contents magic)")
        if total != len(buf) // ALIGN * ALIGN or allocated > total or nentry > max_entries \
                or HEADER.size + max_entries * ENTRY.size > total:
            raise ValueError("corrupt table of contents")
        return cls(buf, magic)

    def _header(self):
        return HEADER.unpack_from(self.buf, 0)

    def allocate(self, size: int) -> int:
        """shm_toc_allocate: an aligned chunk of `size` bytes; returns its offset.  Leader only."""
        _m, total, allocated, nentry, max_entries = self._header()
        new = allocated + align(size)
        floor = align(HEADER.size + max_entries * ENTRY.size)
        if total - new < floor:
            raise ValueError(f"out of space in the segment: {size} more bytes do not fit")
        struct.pack_into("<Q", self.buf, 16, new)
        return total - new

    def insert(self, key: int, offset: int) -> None:
        """shm_toc_insert.  Leader only; each key once."""
        _m, total, _a, nentry, max_entries = self._header()
        if nentry >= max_entries:
            raise ValueError("table of contents is full")
        if self.lookup(key, missing_ok=True) is not None:
            raise ValueError(f"key {key:#x} is already in the table of contents")
        ENTRY.pack_into(self.buf, HEADER.size + nentry * ENTRY.size, key, offset)
        struct.pack_into("<Q", self.buf, 24, nentry + 1)

    def entries(self) -> dict:
        """{key: offset} of every entry, in one pass over the table: shm_toc_lookup for
        several keys at once (a worker looks up all of its keys at start-up, and each
        lookup scans the table).  Any process; every offset is checked as lookup checks
        it, and a key stored twice keeps its first offset, as lookup finds it."""
        _m, total, _a, nentry, max_entries = self._header()
        n = min(nentry, max_entries)
        words = struct.unpack_from(f"<{2 * n}Q", self.buf, HEADER.size) if n else ()
        out = {}
        for i in range(0, 2 * n, 2):
            key, off = words[i], words[i + 1]
            if not 0 < off < total:
                raise ValueError(f"corrupt table of contents: key {key:#x} points outside")
            if key not in out:
                out[key] = off
        return out

    def lookup(self, key: int, missing_ok: bool = False) -> int | None:
        """shm_toc_lookup: the offset stored under `key`.  Any process."""
        _m, total, _a, nentry, max_entries = self._header()
        for i in range(min(nentry, max_entries)):
            k, off = ENTRY.unpack_from(self.buf, HEADER.size + i * ENTRY.size)
            if k == key:
                if not 0 < off < total:
                    raise ValueError(f"corrupt table of contents: key {key:#x} points outside")
                return off
        if missing_ok:
            return None
        raise KeyError(f"key {key:#x} is not in the table of contents")
