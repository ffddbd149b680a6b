"""The shared-memory segment of a cluster, and the ownership protocol written on it.

The segment is a file (``DIR/shmem``, mode 0600, in a 0700 directory) that every
process of the cluster maps with ``mmap(MAP_SHARED)``.  It is laid out once, at fixed
offsets, and never grows::

    offset 0          header            (one page)
    IN_USE_OFF        in_use[max_workers]      one byte per slot
    TERMINATE_OFF     terminate[max_workers]   one byte per slot
    BACKENDS_OFF      backend table            BACKEND_SIZE bytes per entry
    SLOTS_OFF         slot records             SLOT_SIZE bytes per slot

The two flag arrays are kept apart from the slot records so that the postmaster can
notice every change with one slice comparison, whatever ``max_workers`` is.

Ownership protocol (PostgreSQL's ``BackgroundWorkerSlot``, bgworker.c)
----------------------------------------------------------------------

``in_use[i]`` is the ownership token of slot ``i``.

* ``in_use == 0``: the slot belongs to the registrants.  A registrant holding the
  registration lock (``flock`` on ``DIR/registration.lock``; the kernel drops it if the
  holder dies) may write every field of the record.  It writes the spec and its checksum,
  then ``generation``, then ``pid = -1``, then ``terminate = 0``, and **last**
  ``in_use = 1``.
* ``in_use == 1``: the slot belongs to the postmaster.  Only the postmaster writes
  ``pid``, and only it may set ``in_use`` back to 0 (after writing ``pid = 0``).
  The one exception is ``terminate[i]``, which any registrant holding a handle with
  the current generation may set to 1 (under the registration lock, so that the slot
  cannot be recycled under its feet).

``pid`` means: ``-1`` not started yet (or a restartable worker whose fork failed and
will be retried), ``0`` not running (exited; or stopped and waiting to restart; or
forgotten), ``> 0`` the running worker's pid.

``generation`` is taken from ``header.next_generation`` (incremented under the
registration lock), so it is unique in the whole cluster and never goes backwards --
not in a slot, not across slots, and not across a crash-restart, where the postmaster
re-seeds the counter above every generation it has ever accepted.

The postmaster takes no lock, ever.  It never trusts the segment: it copies a slot's
spec into private memory when it first sees ``in_use`` go to 1, checks the checksum and
every field, and from then on works only from its copy.  A scribbled slot can make one
worker fail to start; it cannot crash or wedge the postmaster.

Memory ordering
---------------

Python gives us no barrier instructions, so ordering comes from three places:

1. Program order within one process: CPython executes the stores above one after the
   other (each is a ``memcpy`` into the mapping), and on x86-64 (TSO) stores become
   visible to other cores in program order.  So a postmaster that sees
   ``in_use == 1`` sees the spec written before it.
2. The system call that publishes a change: a registrant always ends with
   ``pidfd_send_signal`` / ``kill`` to the postmaster, and the postmaster with
   ``pidfd_send_signal`` to the registrant.  Signal delivery goes through locks in the
   kernel, which act as full barriers on every architecture, so the woken side sees
   everything written before the signal.
3. Validation for the cases the first two do not cover (a postmaster woken by an
   unrelated signal on a weakly ordered CPU, a torn read, a scribbler): the spec carries
   a checksum over itself and its generation (``spec_checksum``).  A slot whose checksum
   does not match is not rejected at once: it is looked at again a little later
   (``RECHECK_NS``), and only a slot that is still inconsistent then is rejected and freed.

4. One store per field.  ``struct.pack_into`` must never write a field another process
   may be reading: CPython's packer first zeroes the whole struct (``memset``) and then
   stores the value, so a concurrent reader can see 0 in between.  For ``pid`` a
   transient 0 reads as "stopped": the postmaster's ``pid = -1`` on accepting a
   request made a registrant polling at that instant report STOPPED for a worker that
   then started (issue 16; ``tests/test_shmem_single_store.py`` sees such zeros within
   milliseconds with ``pack_into``).  So the live scalar fields -- ``state``,
   ``next_generation``, ``crash_restarts``, ``generation``, ``pid`` -- are read and
   written through typed memoryviews of the mapping (``_u32``, ``_u64``, ``_i32``):
   one aligned load or store of the whole value, which x86-64 and arm64 perform
   atomically.  Every such field sits at an offset aligned to its size (asserted
   below).  One-byte fields (``in_use``, ``terminate``, the PMSignal flags) are single
   stores already.

Readers on the registrant side (``get_pid``) read ``generation``, ``in_use``, ``pid``
and ``generation`` again, and trust the answer only when both generations match the
handle's; since generations never repeat, a recycled slot can never be mistaken for
the one the handle names.
"""

from __future__ import annotations

import mmap
import os
import struct
import sys
import time

if sys.byteorder != "little":  # the layout is little-endian and the typed views are native
    raise ImportError("bgwlab's shared-memory layout needs a little-endian CPU")

MAGIC = b"BGWLAB\x00\x01"
LAYOUT_VERSION = 2  # 2: a 64-bit checksum (spec_checksum) where 1 had zlib's CRC-32
PAGE = 4096

# Postmaster states (header.state)
PM_STARTING, PM_RUNNING, PM_CRASH_RECOVERY, PM_SHUTDOWN, PM_STOPPED = range(5)
PM_STATE_NAMES = ("starting", "running", "crash_recovery", "shutdown", "stopped")

# --- header --------------------------------------------------------------------------
# magic, version, max_workers, max_backends, state, pm_pid, pm_uid, pm_start_ticks,
# next_generation, crash_restarts
HEADER = struct.Struct("<8sIIIIiIQQQ")
# "PMSignal" flags (pmsignal.c): a registrant sets one, then signals the postmaster.
PMSIGNAL_OFF = 128
PMSIGNAL_WORKER_CHANGE = 0  # a slot was registered or a terminate requested
PMSIGNAL_BACKEND_CHANGE = 1  # a backend attached or detached
N_PMSIGNALS = 2
# "Log owed" (postmaster only): 1 from the moment the postmaster wakes until it has
# written the event-log lines of everything it did in that pass (see Segment.log_owed).
LOG_OWED_OFF = 192
STATE_OFF = 8 + 4 * 3  # offset of state within HEADER (after magic, version and the two sizes)
NEXT_GEN_OFF = 8 + 4 * 5 + 4 + 8  # offset of next_generation within HEADER
CRASH_RESTARTS_OFF = NEXT_GEN_OFF + 8
assert HEADER.size == NEXT_GEN_OFF + 16
assert STATE_OFF % 4 == 0 and NEXT_GEN_OFF % 8 == 0 and CRASH_RESTARTS_OFF % 8 == 0  # one store each
assert LOG_OWED_OFF % 4 == 0 and LOG_OWED_OFF >= PMSIGNAL_OFF + N_PMSIGNALS

# --- backend table -------------------------------------------------------------------
# in_use, pid, start_ticks, uid.  Written only by registrants, under the lock.
BACKEND = struct.Struct("<B3xiQI12x")
BACKEND_SIZE = BACKEND.size  # 32

# --- slot record ---------------------------------------------------------------------
# The first 16 bytes are the dynamic part: generation (registrant, while in_use == 0)
# and pid (postmaster, while in_use == 1).  The rest is the spec, written only while
# in_use == 0 and covered by the checksum.
SLOT_DYN = struct.Struct("<Qi4x")
SLOT_SPEC = struct.Struct(
    "<"
    "i"  # notify_backend: index into the backend table, or -1
    "i"  # notify_pid
    "Q"  # notify_start_ticks
    "i"  # restart_ms: -1 = never restart
    "4x"
    "q"  # main_arg
    "HHH"  # name_len, entry_len, extra_len
    "2x"
    "i"  # fault: fork_errno (0 = none)
    "i"  # fault: fork_failures (0 = every attempt)
    "i"  # fault: crash_exit_code (-1 = none)
    "i"  # fault: crash_signal (0 = none)
    "Q"  # fault: slow_start_ns (between fork and user code)
    "Q"  # fault: pm_delay_ns (between request seen and fork)
    "96s"  # name (name_len bytes used)
    "256s"  # entry "module:function"
    "128s"  # extra
)
SLOT_CHECKSUM = struct.Struct("<Q")
SPEC_OFF = SLOT_DYN.size
CHECKSUM_OFF = SPEC_OFF + SLOT_SPEC.size
SLOT_SIZE = (CHECKSUM_OFF + SLOT_CHECKSUM.size + 63) // 64 * 64
GEN_OFF, PID_OFF = 0, 8  # within a slot record: 8- and 4-byte aligned (records are 64-aligned)

NAME_MAX = 95
ENTRY_MAX = 255
EXTRA_MAX = 128
RECHECK_NS = 100_000_000


def _align(n: int, to: int = 64) -> int:
    return (n + to - 1) // to * to


class Layout:
    """Offsets of one segment, computed from its two sizes."""

    __slots__ = ("max_workers", "max_backends", "in_use_off", "terminate_off",
                 "backends_off", "slots_off", "size")

    def __init__(self, max_workers: int, max_backends: int):
        self.max_workers = max_workers
        self.max_backends = max_backends
        self.in_use_off = PAGE
        self.terminate_off = self.in_use_off + max_workers
        self.backends_off = _align(self.terminate_off + max_workers)
        self.slots_off = _align(self.backends_off + max_backends * BACKEND_SIZE)
        self.size = _align(self.slots_off + max_workers * SLOT_SIZE, PAGE)

    def slot_off(self, i: int) -> int:
        return self.slots_off + i * SLOT_SIZE

    def backend_off(self, i: int) -> int:
        return self.backends_off + i * BACKEND_SIZE


class SpecRecord:
    """The spec of one slot as the postmaster copied it (plain values, validated)."""

    __slots__ = ("notify_backend", "notify_pid", "notify_start", "restart_ms", "main_arg",
                 "name", "entry", "extra", "fork_errno", "fork_failures",
                 "crash_exit_code", "crash_signal", "slow_start_ns", "pm_delay_ns")

    def __init__(self, **kw):
        for k in self.__slots__:
            setattr(self, k, kw[k])


CHECKSUM_MODULUS = 2**61 - 1  # a (Mersenne) prime


def spec_checksum(body: bytes, generation: int) -> int:
    """The checksum of a slot's spec bytes and its generation (point 3 of the protocol).

    The bytes, then the 8 bytes of the generation, read as one little-endian number,
    modulo the prime 2**61 - 1.  A change confined to 7 consecutive bytes (a scribbled
    byte, a torn store of a field) changes that number by d * 256**k with 0 < |d| < p, which
    the prime never divides: it is always caught; any other change slips through with odds
    of about 1 in 2**61.  The same bytes under another generation (one that differs by
    less than p: any real one) are caught too.

    Python's own integers compute it (about 3 us), so neither the postmaster nor a worker
    loads zlib for a CRC: its two shared libraries were ten more mappings that every
    ``fork()`` copies (see "The image" in postmaster.py).
    """
    return ((int.from_bytes(body, "little") << 64) | generation) % CHECKSUM_MODULUS


def encode_spec(spec, generation: int, notify: tuple[int, int, int] | None) -> bytes:
    """Bytes of SLOT_SPEC + checksum for `spec` (a validated WorkerSpec).  Registrant side."""
    name = spec.name.encode()
    entry = spec.entry.encode()
    extra = bytes(spec.extra)
    f = spec.fault
    nb, npid, nstart = notify if notify else (-1, 0, 0)
    restart_ms = -1 if spec.restart < 0 else int(round(spec.restart * 1000))
    body = SLOT_SPEC.pack(
        nb, npid, nstart, restart_ms, int(spec.main_arg),
        len(name), len(entry), len(extra),
        (f.fork_errno or 0) if f else 0,
        (f.fork_failures or 0) if f else 0,
        f.crash_exit_code if f and f.crash_exit_code is not None else -1,
        (f.crash_signal or 0) if f else 0,
        int(f.slow_start_s * 1e9) if f else 0,
        int(f.postmaster_delay_s * 1e9) if f else 0,
        name, entry, extra,
    )
    return body + SLOT_CHECKSUM.pack(spec_checksum(body, generation))


def decode_spec(raw: bytes, generation: int) -> SpecRecord | str:
    """Validate the spec bytes of one slot.  Postmaster side: never raises.

    Returns a SpecRecord, or a short string saying why the bytes were rejected.
    """
    if len(raw) != SLOT_SPEC.size + SLOT_CHECKSUM.size:
        return "short record"
    body = raw[: SLOT_SPEC.size]
    (check,) = SLOT_CHECKSUM.unpack_from(raw, SLOT_SPEC.size)
    if spec_checksum(body, generation) != check:
        return "checksum mismatch"
    (nb, npid, nstart, restart_ms, main_arg, name_len, entry_len, extra_len,
     fork_errno, fork_failures, crash_exit, crash_sig, slow_ns, delay_ns,
     name, entry, extra) = SLOT_SPEC.unpack(body)
    if name_len > NAME_MAX or entry_len > ENTRY_MAX or extra_len > EXTRA_MAX:
        return "length field out of range"
    if not (restart_ms == -1 or 0 <= restart_ms <= 86_400_000):
        return "restart interval out of range"
    try:
        name_s = name[:name_len].decode()
        entry_s = entry[:entry_len].decode()
    except UnicodeDecodeError:
        return "name or entry is not UTF-8"
    if entry_s.count(":") != 1:
        return "entry is not module:function"
    if not (0 <= fork_errno < 4096 and fork_failures >= 0 and -1 <= crash_exit <= 255
            and 0 <= crash_sig < 65 and slow_ns < 86_400 * 10**9 and delay_ns < 86_400 * 10**9):
        return "fault plan out of range"
    return SpecRecord(
        notify_backend=nb, notify_pid=npid, notify_start=nstart, restart_ms=restart_ms,
        main_arg=main_arg, name=name_s, entry=entry_s, extra=extra[:extra_len],
        fork_errno=fork_errno, fork_failures=fork_failures, crash_exit_code=crash_exit,
        crash_signal=crash_sig, slow_start_ns=slow_ns, pm_delay_ns=delay_ns,
    )


class Segment:
    """One process's mapping of the segment, with typed accessors.

    Accessors are deliberately dumb: they read or write one field.  Which process may
    call which writer in which state is the protocol in the module docstring; each
    writer names its caller.
    """

    def __init__(self, path: str, *, create: bool = False, max_workers: int = 0,
                 max_backends: int = 0):
        self.path = path
        if create:
            layout = Layout(max_workers, max_backends)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.ftruncate(fd, layout.size)
                self.mm = mmap.mmap(fd, layout.size, mmap.MAP_SHARED)
            finally:
                os.close(fd)
        else:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            try:
                st = os.fstat(fd)
                if st.st_size < PAGE:
                    raise ValueError("segment too small")
                mm = mmap.mmap(fd, st.st_size, mmap.MAP_SHARED)
            finally:
                os.close(fd)
            magic, version, mw, mb = HEADER.unpack_from(mm, 0)[:4]
            if magic != MAGIC or version != LAYOUT_VERSION:
                mm.close()
                raise ValueError("not a bgwlab segment (bad magic or layout version)")
            layout = Layout(mw, mb)
            if layout.size > st.st_size:
                mm.close()
                raise ValueError("segment shorter than its header claims")
            self.mm = mm
        self.layout = layout
        self.max_workers = layout.max_workers
        self.max_backends = layout.max_backends
        # Typed views for the live scalar fields: one aligned load or store each (point 4 of
        # the module docstring).  layout.size is a whole number of pages, so both casts fit.
        whole = memoryview(self.mm)[: layout.size]
        self._u32, self._u64, self._i32 = whole.cast("I"), whole.cast("Q"), whole.cast("i")
        whole.release()

    def close(self) -> None:
        for view in (self._u32, self._u64, self._i32):
            view.release()  # exported views would make mmap.close() fail (and leak the mapping)
        try:
            self.mm.close()
        except (BufferError, ValueError):
            pass

    # -- header -------------------------------------------------------------------------
    def init_header(self, pm_pid: int, pm_uid: int, pm_start: int, next_generation: int) -> None:
        """Postmaster only, before anyone else can map the segment."""
        HEADER.pack_into(self.mm, 0, MAGIC, LAYOUT_VERSION, self.max_workers,
                         self.max_backends, PM_STARTING, pm_pid, pm_uid, pm_start,
                         next_generation, 0)

    def header(self) -> tuple:
        return HEADER.unpack_from(self.mm, 0)

    def state(self) -> int:
        return self._u32[STATE_OFF // 4]

    def set_state(self, state: int) -> None:
        """Postmaster only.  One store: registrants read it at any time."""
        self._u32[STATE_OFF // 4] = state

    def set_crash_restarts(self, n: int) -> None:
        """Postmaster only.  One store."""
        self._u64[CRASH_RESTARTS_OFF // 8] = n

    def next_generation(self) -> int:
        return self._u64[NEXT_GEN_OFF // 8]

    def set_next_generation(self, g: int) -> None:
        """Registrant holding the lock, or the postmaster while re-seeding after a crash
        (which takes no lock: hence one store, never a transient 0)."""
        self._u64[NEXT_GEN_OFF // 8] = g

    def log_owed(self) -> int:
        return self._u32[LOG_OWED_OFF // 4]

    def set_log_owed(self, owed: int) -> None:
        """Postmaster only.  1 as it wakes, before it changes anything another process can
        see; 0 after the last write() of the pass.  The postmaster signals a registrant
        before it logs what it did (the wake-up is the latency being measured), so between
        those two instants the log lags the slot array.  A reader who saw a change and then
        waits for 0 (``wait_log_complete``) finds its lines.  Ordering: the store of 1
        precedes every store of the pass (program order, x86-64 TSO), and the store of 0
        follows the write() system call that put the lines in the file."""
        self._u32[LOG_OWED_OFF // 4] = owed

    def wait_log_complete(self, timeout: float = 1.0, alive=None) -> bool:
        """Any process: wait (sleeping 0.2 ms at a time, at most `timeout` s; not at all
        once ``alive()`` says the postmaster is gone) until the postmaster owes the event
        log no lines for a pass.  True if it owes none."""
        if not self._u32[LOG_OWED_OFF // 4]:
            return True
        deadline = time.monotonic() + timeout
        while self._u32[LOG_OWED_OFF // 4]:
            if time.monotonic() > deadline or (alive is not None and not alive()):
                return False
            time.sleep(0.0002)
        return True

    def set_pmsignal(self, reason: int) -> None:
        """Any registrant; then signal the postmaster."""
        self.mm[PMSIGNAL_OFF + reason] = 1

    def take_pmsignals(self) -> bytes:
        """Postmaster only: read the PMSignal flags, and clear only those that were set.

        As PostgreSQL's CheckPostmasterSignal.  Clearing the whole array after reading it
        would erase a flag a registrant sets between our read and our write: its request
        would then be lost (its signal finds no flag) and its wait_for_startup() would
        never return.
        """
        mm = self.mm
        flags = mm[PMSIGNAL_OFF : PMSIGNAL_OFF + N_PMSIGNALS]
        for reason, was_set in enumerate(flags):
            if was_set:
                mm[PMSIGNAL_OFF + reason] = 0
        return flags

    # -- flag arrays ----------------------------------------------------------------------
    def in_use_array(self) -> bytes:
        lo = self.layout.in_use_off
        return self.mm[lo : lo + self.max_workers]

    def terminate_array(self) -> bytes:
        lo = self.layout.terminate_off
        return self.mm[lo : lo + self.max_workers]

    def in_use(self, i: int) -> int:
        return self.mm[self.layout.in_use_off + i]

    def set_in_use(self, i: int, v: int) -> None:
        """1: registrant with the lock, as its last write.  0: postmaster, after pid = 0."""
        self.mm[self.layout.in_use_off + i] = v

    def terminate(self, i: int) -> int:
        return self.mm[self.layout.terminate_off + i]

    def set_terminate(self, i: int, v: int) -> None:
        """1: registrant with the lock and a current handle.  0: registrant filling a free slot."""
        self.mm[self.layout.terminate_off + i] = v

    # -- slots ------------------------------------------------------------------------------
    def generation(self, i: int) -> int:
        return self._u64[(self.layout.slot_off(i) + GEN_OFF) // 8]

    def pid(self, i: int) -> int:
        return self._i32[(self.layout.slot_off(i) + PID_OFF) // 4]

    def set_pid(self, i: int, pid: int) -> None:
        """Postmaster only while in_use; registrant (pid = -1) only while filling a free slot.

        One store (registrants poll this field): pack_into's zero-then-value would read as
        a transient "stopped" (pid 0) -- the wrong STOPPED of issue 16.
        """
        self._i32[(self.layout.slot_off(i) + PID_OFF) // 4] = pid

    def set_generation(self, i: int, g: int) -> None:
        """Registrant with the lock, while in_use == 0; postmaster when repairing its own
        slot, while registrants may read it: one store (a transient 0 would not match any
        handle, which would read STOPPED)."""
        self._u64[(self.layout.slot_off(i) + GEN_OFF) // 8] = g

    def spec_bytes(self, i: int) -> bytes:
        off = self.layout.slot_off(i) + SPEC_OFF
        return self.mm[off : off + SLOT_SPEC.size + SLOT_CHECKSUM.size]

    def write_spec(self, i: int, raw: bytes) -> None:
        """Registrant with the lock, while in_use == 0; postmaster when repairing its slot."""
        off = self.layout.slot_off(i) + SPEC_OFF
        self.mm[off : off + len(raw)] = raw

    # -- backend table ----------------------------------------------------------------------
    def backend(self, i: int) -> tuple[int, int, int, int]:
        """(in_use, pid, start_ticks, uid) of backend entry i."""
        return BACKEND.unpack_from(self.mm, self.layout.backend_off(i))

    def set_backend(self, i: int, in_use: int, pid: int, start: int, uid: int) -> None:
        """Registrant holding the lock.  Attaching writes in_use last; detaching first."""
        off = self.layout.backend_off(i)
        if in_use:
            struct.pack_into("<iQI", self.mm, off + 4, pid, start, uid)
            self.mm[off] = 1
        else:
            self.mm[off] = 0
            struct.pack_into("<iQI", self.mm, off + 4, 0, 0, 0)
