"""Scheduler slices: ask Linux to run the postmaster, and a registrant's waiting thread, at
once when they are woken.  (The postmaster's first; the registrant's at the end, after
``hold_short_slice``.)

Why.  Since Linux 6.6 the fair scheduler is EEVDF: every task has a *slice* (by default
``base_slice_ns`` scaled by 1 + log2 of the CPUs: 1.4 ms on this 2-CPU VM's 6.18 kernel), its virtual
deadline is "now + slice", and the task with the earliest deadline among those owed CPU
time runs next.  A task that has just started running is protected until it has used its
slice (``RUN_TO_PARITY``).  So when a registrant's signal wakes the postmaster while
another task holds the CPU -- a worker forked a moment ago, in its first copy-on-write
faults -- the postmaster waits up to that task's slice.  Since Linux 6.12 a task may ask
for a shorter slice (``sched_setattr`` with ``sched_runtime``, 0.1-100 ms, no privilege
needed); a woken task whose slice is shorter than the running one's preempts it
(``PREEMPT_SHORT``).  Fairness is kept: a shorter slice does not give a task more CPU,
only earlier turns: what a process that sleeps most of the time and has a little to do
when woken needs, and what the feature was added for.

What.  ``Cluster.start`` asks for a 100 us slice for the postmaster, with
``SCHED_FLAG_RESET_ON_FORK``: every worker it forks starts with the default slice, as a
process forked by anyone else would (a custom slice is otherwise inherited).  PostgreSQL's
postmaster asks for nothing of the kind: PostgreSQL 15's, as ``bgwlab.pg`` starts it,
reads back the default (SCHED_OTHER, 1.4 ms on this VM), and the benchmarks measure it
so.

Measured (``benchmarks/run.py``, ratios to PostgreSQL taken within each run, geometric
mean of six runs by ``benchmarks/pool_runs.py``): without the slice (a1a1fe2) start median
0.99x, running 0.88x, early crash 0.79x, genuine fork failure 0.99x, start p99 1.18x
(1.07-1.29); with it (two series of six runs) start median 0.95x and 0.98x, running 0.78x
and 0.79x, early crash 0.75x and 0.74x, genuine fork failure 0.97x, start p99 1.10x
(1.05-1.20) and 1.05x (0.99-1.13).  ``benchmarks/ab.py --slice-ab`` (A: default slice,
B: this one, interleaved on one registrant) saw less: start 0.94-0.99x, running
0.96-1.00x.  A 300 us slice did alike in a probe (one seed).  The postmaster's pass often
runs longer than 100 us; the kernel may then let a task with an earlier deadline run
before the pass ends.

On a kernel without custom slices (before 6.12) the request is ignored; ``slice_of``
then reads 0, and nothing else changes.  The starting process and registrants load this
module (it loads ctypes when first called); the postmaster's image does not.
"""

from __future__ import annotations

import os
import platform
import struct
import threading
import weakref

from .procinfo import libc

# sched_setattr / sched_getattr: not in the os module.  x86_64 has its own numbers; the
# 64-bit ARM and RISC-V kernels use the generic table.
_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275), "arm64": (274, 275), "riscv64": (274, 275)}
SCHED_OTHER = 0
SCHED_FLAG_RESET_ON_FORK = 0x01
MIN_SLICE_NS, MAX_SLICE_NS = 100_000, 100_000_000  # the kernel's clamp
# struct sched_attr (include/uapi/linux/sched/types.h), the first 48 bytes (SCHED_ATTR_SIZE_VER0):
# size, policy, flags, nice, priority, runtime, deadline, period
_ATTR = struct.Struct("IIQiIQQQ")

def _read_attr(tid: int) -> tuple:
    """Thread `tid`'s (0: the caller's) struct sched_attr fields (size, policy, flags, nice,
    priority, runtime, deadline, period).  Raises OSError (ProcessLookupError: gone)."""
    import ctypes

    buf = ctypes.create_string_buffer(_ATTR.size)
    if libc().syscall(_SYSCALLS[platform.machine()][1], int(tid), buf, _ATTR.size, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return _ATTR.unpack_from(buf.raw)


def _write_attr(tid: int, policy: int, flags: int, nice: int, runtime: int) -> None:
    """sched_setattr on thread `tid` (0: the caller).  Raises OSError.  The struct for each
    (policy, flags, nice, runtime) is built once: a registrant's holds reuse two or three."""
    import ctypes

    key = (policy, flags, nice, runtime)
    attr = _attrs.get(key)
    if attr is None:
        attr = ctypes.create_string_buffer(_ATTR.pack(_ATTR.size, policy, flags, nice, 0, runtime, 0, 0),
                                           _ATTR.size)
        if len(_attrs) < 64:
            _attrs[key] = attr
    if libc().syscall(_SYSCALLS[platform.machine()][0], int(tid), attr, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


_attrs: dict = {}  # (policy, flags, nice, runtime) -> its struct sched_attr (read-only once built)


def slice_us_to_ns(name: str, slice_us) -> int:
    """A ``*_slice_us`` argument (`name`) in ns, 0 for None; ValueError unless None or an
    int in 100..100000 (the kernel's clamp, in us).  Checked before anything is started."""
    if slice_us is None:
        return 0
    if not isinstance(slice_us, int) or isinstance(slice_us, bool) or not 100 <= slice_us <= 100_000:
        raise ValueError(f"{name} must be None or an int in 100..100000, got {slice_us!r}")
    return slice_us * 1000


def supported() -> bool:
    """Linux on an architecture whose system call numbers we know."""
    return os.uname().sysname == "Linux" and platform.machine() in _SYSCALLS


def slice_of(pid: int = 0) -> int:
    """The scheduler slice of `pid` (0: this process) in ns, as the kernel reports it; 0 if
    the kernel reports none (no custom slices) or the call is unsupported here.
    Raises ProcessLookupError if `pid` is gone."""
    if not supported():
        return 0
    _size, policy, _flags, _nice, _prio, runtime, _dl, _period = _read_attr(pid)
    return runtime if policy == SCHED_OTHER else 0


def set_slice(pid: int, slice_ns: int, *, reset_on_fork: bool = True) -> int:
    """Ask for a `slice_ns` slice for `pid` (a SCHED_OTHER process of this user; 0: this
    process), keeping its nice value.  `slice_ns` = 0 returns it to the default.  With
    `reset_on_fork`, its children start with the default slice.  Returns the slice the
    kernel then reports (0 where custom slices do not exist).  Any process."""
    if slice_ns and not MIN_SLICE_NS <= slice_ns <= MAX_SLICE_NS:
        raise ValueError(f"slice_ns must be 0 or {MIN_SLICE_NS}..{MAX_SLICE_NS}, got {slice_ns!r}")
    if not supported():
        return 0
    _write_attr(pid, SCHED_OTHER, SCHED_FLAG_RESET_ON_FORK if reset_on_fork else 0,
                os.getpriority(os.PRIO_PROCESS, pid), int(slice_ns))
    return slice_of(pid)


# -- a short slice for a registrant's waiting threads ----------------------------------------------
# The other end of the same hop.  The postmaster signals the registrant right after fork();
# at that moment both CPUs of a 2-CPU machine are often taken (the postmaster finishing its
# pass, the new worker in its copy-on-write faults), and a woken registrant on the default
# slice may queue behind one of them for up to that task's slice.  A registrant thread with
# a short slice preempts it (PREEMPT_SHORT) and reads its pid at once.  Backend(wait_slice_us=)
# gives a thread that slice at its first wait and its own back when the backend detaches
# (hold_short_slice / give_back_slice).  Not per wait: asking and giving back cost ~3 us of
# kernel time each, and the giving back would fall between the wakeup and the return --
# measured, that cost the start's median 2-4 %.  Held, in six benchmark runs against the
# same engine without it in the same rounds (run.py --before same_engine): start 0.88-0.95x,
# start p99 0.85-0.94x, running 0.97-0.99x; the registrant's wake-up after the signal went
# from 78-125 / 330-2,400 us (median / p99) to 61-80 / 135-250 us.

_default_slice_ns = 0  # what the kernel reports for a thread on the default slice, once seen
_holds: dict = {}  # native thread id -> [what give_back_slice needs, its holders (weak)]
_holds_lock = threading.Lock()


def hold_short_slice(slice_ns: int):
    """Give the calling thread a `slice_ns` slice, keeping its policy, flags and nice value.
    Returns what give_back_slice needs, or None if nothing was changed: no custom slices
    here, a policy other than SCHED_OTHER, a slice already as short, or the kernel refused.
    Any thread."""
    if not supported():
        return None
    try:
        _size, policy, flags, nice, _prio, runtime, _dl, _period = _read_attr(0)
        if policy != SCHED_OTHER or not runtime or runtime <= slice_ns:
            return None  # (runtime 0: this kernel has no slices to report or set)
        # reset on fork: a process this thread forks meanwhile (a multiprocessing pool)
        # starts on the default slice, as it would have
        _write_attr(0, policy, flags | SCHED_FLAG_RESET_ON_FORK, nice, slice_ns)
    except OSError:
        return None
    return flags, runtime


def give_back_slice(saved, tid: int = 0) -> None:
    """Put back the slice hold_short_slice found (`saved`) in thread `tid` (0: the caller;
    else a live thread of this process).  A thread that was on the default slice goes back
    to the default (sched_runtime 0), not to a chosen slice of the same length: its
    children, and a later change of the kernel's base slice, see no trace.  Its nice value
    and policy are read again: a change made meanwhile is kept.  Silent if `tid` is gone."""
    global _default_slice_ns
    if saved is None:
        return
    flags, runtime = saved
    try:
        if os.sched_getscheduler(tid) & 0xFF != SCHED_OTHER:  # (& 0xFF: not RESET_ON_FORK's bit)
            return  # its policy was changed meanwhile: that choice stands
        nice = os.getpriority(os.PRIO_PROCESS, tid)  # (Linux: that thread's)
        _write_attr(tid, SCHED_OTHER, flags, nice, 0)
        if runtime == _default_slice_ns:
            return
        # Not known yet whether `runtime` was the default: we asked for the default; look.
        if _read_attr(tid)[5] == runtime:
            _default_slice_ns = runtime  # it was
        else:
            _write_attr(tid, SCHED_OTHER, flags, nice, runtime)  # a slice of its own: back
    except OSError:
        return  # the thread is gone


def hold_for(holder, slice_ns: int) -> None:
    """The calling thread holds a `slice_ns` slice on behalf of `holder` (a Backend) until
    release_all(holder).  Several holders share one hold; the first one asks the kernel,
    the last to let go gives the thread's own slice back.  Any thread."""
    tid = threading.get_native_id()
    with _holds_lock:
        entry = _holds.get(tid)
        if entry is not None:
            entry[1].add(holder)
            return
    saved = hold_short_slice(slice_ns)  # (our own thread: no other can add it meanwhile)
    with _holds_lock:
        _holds[tid] = [saved, weakref.WeakSet((holder,))]  # (a dropped Backend's __del__ detaches)


def release_all(holder) -> None:
    """`holder` lets go of every thread it holds; a thread that nobody holds any more and
    that still runs in this process gets its own slice back.  Any thread."""
    me, back = threading.get_native_id(), []
    with _holds_lock:
        for tid, entry in list(_holds.items()):
            entry[1].discard(holder)
            if not entry[1]:
                del _holds[tid]
                back.append((tid, entry[0]))
    for tid, saved in back:
        if saved is not None and (tid == me or os.path.exists(f"/proc/self/task/{tid}")):
            give_back_slice(saved, 0 if tid == me else tid)


def holds(holder) -> bool:
    """Does `holder` hold the calling thread (has it waited here since it attached)?"""
    entry = _holds.get(threading.get_native_id())
    return entry is not None and holder in entry[1]
