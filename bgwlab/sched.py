"""The postmaster's scheduler slice: ask Linux to run it at once when it is woken.

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
then reads 0, and nothing else changes.  Only the starting process loads this module
(it loads ctypes); the postmaster's image does not.
"""

from __future__ import annotations

import os
import platform
import struct

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

def _syscall(number: int, *args) -> None:
    import ctypes

    if libc().syscall(number, *args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def supported() -> bool:
    """Linux on an architecture whose system call numbers we know."""
    return os.uname().sysname == "Linux" and platform.machine() in _SYSCALLS


def slice_of(pid: int = 0) -> int:
    """The scheduler slice of `pid` (0: this process) in ns, as the kernel reports it; 0 if
    the kernel reports none (no custom slices) or the call is unsupported here.
    Raises ProcessLookupError if `pid` is gone."""
    if not supported():
        return 0
    import ctypes

    buf = ctypes.create_string_buffer(56)
    _syscall(_SYSCALLS[platform.machine()][1], int(pid), buf, 56, 0)
    size, policy, _flags, _nice, _prio, runtime, _dl, _period = _ATTR.unpack_from(buf.raw)
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
    import ctypes

    nice = os.getpriority(os.PRIO_PROCESS, pid)
    flags = SCHED_FLAG_RESET_ON_FORK if reset_on_fork else 0
    attr = ctypes.create_string_buffer(_ATTR.pack(_ATTR.size, SCHED_OTHER, flags, nice, 0,
                                                  int(slice_ns), 0, 0), _ATTR.size)
    _syscall(_SYSCALLS[platform.machine()][0], int(pid), attr, 0)
    return slice_of(pid)
