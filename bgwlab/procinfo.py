"""Small Linux process facts: start time, pidfds, parent-death signal.

Used by every process of a cluster, so it imports nothing heavy.
"""

import os
import select

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def wait_fds(fds, timeout: float | None) -> list[int]:
    """poll() on `fds` for readability; returns the readable ones ([] on timeout).

    (Here, not in latch.py, so that a parallel worker's side can wait on pidfds without
    loading bgwlab.latch and its threading.)"""
    p = select.poll()
    for fd in fds:
        p.register(fd, select.POLLIN)
    ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
    return [fd for fd, _ in p.poll(ms)]


def _read_stat(pid: int) -> bytes | None:
    """/proc/PID/stat's bytes, or None if `pid` is gone.  os.open + os.read: a third of
    the system calls of open(), and no io objects."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)


def stat_fields(pid: int) -> list[bytes] | None:
    """The fields of /proc/PID/stat after the command name (fields[0] is the state,
    field 3 of the file), or None if `pid` is gone.

    The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    """
    data = _read_stat(pid)
    return None if data is None else data[data.rindex(b")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (field 22 of /proc/PID/stat), or None.

    A (pid, start_ticks) pair names one process for the lifetime of the machine: a pid
    that is recycled gets a later start time.

    Splits off the first 20 fields after the command name only, not all ~50 of them: a
    parallel worker asks this during its start-up, where every object made is paid in
    copy-on-write faults of the heap it shares with the postmaster.
    """
    data = _read_stat(pid)
    return None if data is None else int(data[data.rindex(b")") + 2 :].split(b" ", 20)[19])


def session_of(pid: int) -> int | None:
    """Session id of `pid` (field 6 of /proc/PID/stat), or None if it is gone."""
    fields = stat_fields(pid)
    return None if fields is None else int(fields[3])


def session_members(sid: int) -> list[int]:
    """Pids of the live processes in session `sid`.

    A session id names its processes for as long as one of them lives: Linux does not
    hand out a pid that is still some session's (or process group's) id.
    """
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit() and session_of(int(name)) == sid:
            pids.append(int(name))
    return pids


def kill_session(sid: int, signum: int, timeout: float = 5.0) -> list[int]:
    """Send `signum` to every process of session `sid` and wait (up to `timeout` s) until
    they have exited.  Returns the pids signalled.

    Race-free: each target is pinned by a pidfd, and its session checked again after the
    pidfd is open, so a pid that was recycled in between is never signalled.
    """
    import select
    import signal
    import time

    fds, signalled = {}, []
    for pid in session_members(sid):
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            continue
        if session_of(pid) != sid:
            os.close(fd)
            continue
        try:
            signal.pidfd_send_signal(fd, signum)
        except OSError:
            os.close(fd)
            continue
        fds[fd] = pid
        signalled.append(pid)
    deadline = time.monotonic() + timeout
    try:
        while fds:
            p = select.poll()
            for fd in fds:
                p.register(fd, select.POLLIN)
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for fd, _ in p.poll(int(left * 1000) + 1):  # a pidfd is readable once its process exited
                os.close(fd)
                fds.pop(fd)
    finally:
        for fd in fds:
            os.close(fd)
    return signalled


def process_uid(pid: int) -> int | None:
    """Real uid of `pid`, or None if it is gone."""
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def open_pidfd(pid: int, expected_start: int | None = None) -> int | None:
    """A pidfd for exactly the process (pid, expected_start), or None if that process is gone.

    The start time is checked *after* the pidfd is opened, so the fd can never refer
    to a process that merely inherited the pid.
    """
    try:
        fd = os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return None
    if expected_start is not None and start_ticks(pid) != expected_start:
        os.close(fd)
        return None
    os.set_inheritable(fd, False)
    return fd


_libc = None


def libc():
    """The C library through ctypes, loaded at the first call (ctypes is ~10 mappings that
    a postmaster without pdeathsig never loads)."""
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _prctl(option: int, arg: int) -> int:
    return libc().prctl(option, arg, 0, 0, 0)


def set_parent_death_signal(signum: int) -> None:
    """Ask the kernel to send `signum` when our parent (thread) exits.  Linux only."""
    _prctl(PR_SET_PDEATHSIG, signum)


def set_child_subreaper(on: bool = True) -> None:
    """Make this process adopt its orphaned descendants (so that it can reap them)."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0)


def preload_libc() -> None:
    """Load libc through ctypes now (postmaster only), so that forked workers need not."""
    _prctl(0x7FFFFFFF, 0)  # an invalid option: fails harmlessly, but loads ctypes + libc
