# Frozen copy for benchmarks/ab_launch.py --a s7: bgwlab/parallel/dsm.py as of 913c416 (before the worker
# start-up work of session 8), imports made absolute (pl_*_s7).  Do not edit.
"""Dynamic shared memory: one POSIX shared-memory segment per parallel context.

PostgreSQL's ``dsm.c`` creates a segment per parallel context and hands its *handle*
to the workers in ``bgw_main_arg`` (``LaunchParallelWorkers``).  Here a segment is a
file in ``/dev/shm`` (what ``shm_open`` makes), mapped with ``mmap(MAP_SHARED)``,
and handed to the workers *by name* in their ``extra`` bytes, with its random token in
``main_arg``.

Names and who frees them
------------------------

``/dev/shm/bgwlab.<leader pid>.<leader start ticks>.<token>``, mode 0600, created with
``O_EXCL | O_NOFOLLOW``: private to the user, never an existing file.  The rule:

    **a segment's name lives exactly as long as its leader.**

* The leader removes the name exactly once, on every path it lives through
  (``Segment.destroy``, which a ``weakref.finalize`` also runs at interpreter exit).
* A leader killed with SIGKILL frees nothing.  Then anyone may remove the name, because
  a leaderless segment is useless: workers that find their leader gone remove it as they
  exit, and ``remove_orphans()`` removes every name whose leader (pid + start time) is
  gone -- each new ``ParallelContext`` calls it, as PostgreSQL's postmaster calls
  ``dsm_cleanup_using_control_segment`` at startup.
* Removing the name never pulls memory from under a process: mappings stay valid until
  they are unmapped; the kernel frees the pages after the name and the last mapping.

A segment has a family: the named FIFOs of its latches (latch.py),
``/dev/shm/<segment name>.latch<k>``, and of a parallel context's attach wakeup
(context.py), ``<segment name>.attach``, mode 0600, made by the leader with the segment
(``create_fifo``) and removed with it, on the same rule -- by ``destroy``, or by anyone
once the leader is gone (``remove_if_leader_gone`` removes the whole family,
``remove_orphans`` every name whose leader is gone).

In PostgreSQL the segment is reference-counted in a control segment (``dsm_attach`` /
``dsm_detach``; the last detach destroys it) and a backend that dies uncleanly causes a
crash-restart that cleans up.  bgwlab's leaders live outside the crash domain (DESIGN
§1a), so "leader gone" replaces the reference count.

Not ``multiprocessing.shared_memory``: Python 3.11 registers every segment it opens with
the resource tracker (a child process of its own), which unlinks it -- and warns -- when
*that* process exits, even if another still uses it.  ``os.open`` + ``mmap`` has no such
side effects.
"""

from __future__ import annotations

import mmap
import os
import stat

from bgwlab.procinfo import start_ticks, stat_fields

SHM_DIR = "/dev/shm"
PREFIX = "bgwlab."
MAX_SIZE = 1 << 36  # 64 GiB: far beyond any lesson; refuses a corrupt size early
FIFO_TAG = "latch"  # <segment name>.latch<k>: the FIFO of latch record k
ATTACH_TAG = "attach"  # <segment name>.attach: a parallel context's attach wakeup FIFO


_me = (0, 0)  # (pid, its start ticks), read from /proc once per process


def my_start_ticks() -> int:
    """This process's start time (clock ticks), read once per process (a forked child
    reads its own): every new segment's name and fixed state carry it."""
    global _me
    pid = os.getpid()
    if _me[0] != pid:
        _me = (pid, start_ticks(pid) or 0)
    return _me[1]


def random_token() -> int:
    """63 random bits from the kernel's CSPRNG (what ``secrets.randbits(63)`` reads, without
    importing secrets -> hmac, hashlib, random into every process that loads this module)."""
    return int.from_bytes(os.urandom(8), "little") >> 1


def segment_name(leader_pid: int, leader_start: int, token: int) -> str:
    return f"{PREFIX}{leader_pid}.{leader_start}.{token:016x}"


def parse_name(name: str) -> tuple[int, int, int] | None:
    """(leader pid, leader start ticks, token) of one of our names -- a segment's, or one
    of its FIFOs' (``<segment name>.latch<k>``, ``<segment name>.attach``) -- or None."""
    if not name.startswith(PREFIX) or "/" in name:
        return None
    parts = name[len(PREFIX):].split(".")
    if len(parts) == 4 and (parts[3] == ATTACH_TAG or (
            parts[3].startswith(FIFO_TAG) and parts[3][len(FIFO_TAG):].isdigit())):
        parts = parts[:3]
    if len(parts) != 3:
        return None
    try:
        return int(parts[0]), int(parts[1]), int(parts[2], 16)
    except ValueError:
        return None


def _path(name: str) -> str:
    if parse_name(name) is None:
        raise ValueError(f"{name!r} is not a bgwlab segment name")
    return os.path.join(SHM_DIR, name)


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def _unlink_family(path: str, fifos: list) -> None:
    """The segment's name, then its FIFOs' (a finalizer: runs at most once)."""
    _unlink(path)
    for name in fifos:
        _unlink(os.path.join(SHM_DIR, name))


class Segment:
    """One process's mapping of a segment.  ``buf`` is the mmap.

    ``create`` is for the leader only; ``attach`` for its workers.  ``destroy`` (leader
    only) removes the name exactly once; ``close`` unmaps (any process).
    """

    def __init__(self, name: str, mm: mmap.mmap, owner: bool):
        self.name = name
        self.buf = mm
        self.size = len(mm)
        self.owner = owner
        self._fifos: list[str] = []  # names of the FIFOs we made (create_fifo)
        self._finalizer = None
        if owner:  # (weakref only here: a worker's image need not carry it)
            import weakref

            self._finalizer = weakref.finalize(self, _unlink_family, _path(name), self._fifos)

    @classmethod
    def create(cls, size: int) -> Segment:
        """dsm_create: a new zero-filled segment of `size` bytes.  Leader only."""
        if not isinstance(size, int) or not 0 < size <= MAX_SIZE:
            raise ValueError(f"segment size must be 1..{MAX_SIZE} bytes, got {size!r}")
        me = os.getpid()
        while True:
            name = segment_name(me, my_start_ticks(), random_token())
            try:
                fd = os.open(_path(name), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600)
                break
            except FileExistsError:
                continue
        try:
            os.ftruncate(fd, size)  # tmpfs: pages are allocated on first touch, zero-filled
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED)
        except BaseException:
            _unlink(_path(name))
            raise
        finally:
            os.close(fd)
        return cls(name, mm, owner=True)

    @classmethod
    def attach(cls, name: str, token: int | None = None) -> Segment:
        """dsm_attach: map an existing segment.  Raises FileNotFoundError once its name
        has been removed (the leader is done or gone), PermissionError if it is not ours,
        ValueError if `token` is given and the name carries another (checked before the
        name is opened)."""
        parsed = parse_name(name)
        if parsed is None:
            raise ValueError(f"{name!r} is not a bgwlab segment name")
        if token is not None and parsed[2] != token:
            raise ValueError(f"segment {name} does not carry the token {token:#x} we were given")
        fd = os.open(SHM_DIR + "/" + name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if (not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid()
                    or st.st_mode & 0o077):
                raise PermissionError(f"{name} is not a private segment of this user")
            if not 0 < st.st_size <= MAX_SIZE:
                raise ValueError(f"{name} has an impossible size ({st.st_size})")
            mm = mmap.mmap(fd, st.st_size, mmap.MAP_SHARED)
        finally:
            os.close(fd)
        return cls(name, mm, owner=False)

    def create_fifo(self, tag: str) -> str:
        """mkfifo ``/dev/shm/<our name>.<tag>``, mode 0600; removed with the segment.
        Creator only.  Returns the FIFO's name."""
        if self._finalizer is None or not self._finalizer.alive:
            raise RuntimeError("only the live creator of a segment may add FIFOs to it")
        name = f"{self.name}.{tag}"
        if parse_name(name) is None:
            raise ValueError(f"bad FIFO tag {tag!r}")
        os.mkfifo(os.path.join(SHM_DIR, name), 0o600)  # EEXIST for any existing name: never ours
        self._fifos.append(name)  # destroy() removes it
        return name

    @property
    def token(self) -> int:
        return parse_name(self.name)[2]

    def exists(self) -> bool:
        return os.path.exists(os.path.join(SHM_DIR, self.name))

    def destroy(self) -> None:
        """dsm_detach + destroy: remove the name (once) and unmap.  Leader only."""
        if self._finalizer is None:
            raise RuntimeError("only the process that created a segment may destroy it")
        self._finalizer()  # runs _unlink at most once, however often destroy() is called
        self.close()

    def close(self) -> None:
        """Unmap.  Any process; every memoryview of ``buf`` must have been released."""
        try:
            self.buf.close()
        except (BufferError, ValueError):
            pass

    def __repr__(self):
        return f"<dsm Segment {self.name} {self.size} bytes>"


def leader_alive(pid: int, start: int) -> bool:
    """Is the process (pid, start ticks) running?  A zombie -- exited, not yet reaped by
    its parent -- is not: it will never free anything again."""
    fields = stat_fields(pid)
    if fields is None:
        return False
    return fields[0] not in (b"Z", b"X") and int(fields[19]) == start


def remove_if_leader_gone(name: str, *, known_gone: bool = False) -> bool:
    """Remove a segment name whose leader has exited.  Any process.  True if removed.

    `known_gone`: the caller holds proof (a pidfd of exactly that leader was readable)."""
    parsed = parse_name(name)
    if parsed is None:
        return False
    pid, start, _token = parsed
    if not known_gone and leader_alive(pid, start):
        return False  # the leader lives: only it may free the segment
    removed = _unlink(os.path.join(SHM_DIR, name))
    if len(name[len(PREFIX):].split(".")) == 3:  # a segment: its FIFOs too (rare path)
        try:
            family = [n for n in os.listdir(SHM_DIR) if n.startswith(name + ".")]
        except OSError:
            family = []
        for n in family:
            if parse_name(n) == parsed:
                removed = _unlink(os.path.join(SHM_DIR, n)) or removed
    return removed


def remove_orphans() -> list[str]:
    """Remove every segment of this user whose leader is gone.  Any process.

    As PostgreSQL's ``dsm_cleanup_using_control_segment``: what a dead leader left
    behind.  Returns the names removed.
    """
    removed = []
    uid = os.geteuid()
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return removed
    for name in names:
        if parse_name(name) is None:
            continue
        try:
            if os.lstat(os.path.join(SHM_DIR, name)).st_uid != uid:
                continue
        except FileNotFoundError:
            continue
        if remove_if_leader_gone(name):
            removed.append(name)
    return removed


def list_segments() -> list[str]:
    """Names of every bgwlab segment and latch FIFO in /dev/shm (for tests and teaching)."""
    try:
        return sorted(n for n in os.listdir(SHM_DIR) if parse_name(n) is not None)
    except OSError:
        return []
