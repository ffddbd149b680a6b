# Frozen copy for benchmarks/ab_launch.py --a s7: bgwlab/parallel/latch.py as of 913c416 (before the worker
# start-up work of session 8), imports made absolute (pl_*_s7).  Do not edit.
"""The latch that message-queue waits sleep on (PostgreSQL's ``latch.c``), in the segment.

A parallel context's segment holds one *latch record* per participant (the leader's,
then one per worker) and, next to the segment in ``/dev/shm``, one named FIFO per
record.  A process owns its record: it alone resets the latch and sleeps on it.  Any
process of the context sets it -- a counterpart that made progress on a queue.  A set
costs **no system call at all** unless the owner may be asleep; then it is one
``write()`` of a byte to the owner's FIFO, which wakes the owner's ``poll()``.  (Before,
every wakeup was a SIGUSR1: ``pidfd_send_signal``, the kernel's signal delivery, a C
handler writing a self-pipe, a Python handler, a dispatcher fanning out to eventfds --
8 to 12 system calls, and a second thread in every worker.)

Layout of one record (``LATCH_SIZE`` bytes, 64-byte aligned, native u64 words)::

    word 0  is_set          1: set.  Setters store 1 (0 -> 1); only the owner stores 0 (reset)
    word 1  maybe_sleeping  1 from just before the owner's last look at is_set until it
                            is back from poll(); only the owner writes it
    word 2  owner_pid       0 until a process owns the record; the owner stores it last
                            (after owner_start) and 0 again when it disowns it (close)
    word 3  owner_start     the owner's start time (clock ticks); informational
    word 4  name_len        length of the FIFO's name; the creator writes it
    40 ...  name            ASCII: ``/dev/shm/<name>`` is the record's FIFO; the creator
                            writes it, before any other process maps the segment;
                            read-only afterwards

The FIFOs are named ``<segment name>.latch<k>`` and belong to the segment: the leader
makes them with the segment (``Segment.create_fifo``, mode 0600, ``mkfifo`` never
follows or reuses a name) and removes them with it -- the segment's rule, "its names
live exactly as long as its leader" (dsm.py), covers them.

The protocol (PostgreSQL's ``SetLatch`` / ``ResetLatch`` / ``WaitLatch``)
--------------------------------------------------------------------------

**SetLatch** (``Peer.set_latch``; any process)::

    fence                 (A) our earlier stores (bytes_written, bytes_read, detached)
                              before our load of is_set
    if is_set: return     the owner has not reset it yet: it will look at the queues
    is_set = 1
    fence                 (B) our store of is_set before our load of maybe_sleeping
    if not maybe_sleeping: return     the owner will see is_set before it sleeps
    write(FIFO, 1 byte)   the owner may be in poll(): wake it

**ResetLatch** (owner)::

    is_set = 0
    fence                 (C) the reset before our next loads of the queues' counters

**WaitLatch** (owner; callers reset, look at the queues, then wait)::

    maybe_sleeping = 1
    fence                 (D) before our load of is_set
    if is_set: maybe_sleeping = 0; return
    poll(FIFO, death fds, the counterparts' pidfds, ...)
    maybe_sleeping = 0; read the FIFO empty

Why no wakeup is lost.  Two store -> fence -> load pairs (Dekker: with a full fence on
both sides, at least one side sees the other's store):

* (A)/(C): a setter that stored progress and then read ``is_set = 1`` read it before the
  owner's reset was visible, so the owner's look at the queues after (C) sees the
  progress.  Otherwise the setter reads 0 and goes on to set the latch.
* (B)/(D): either the setter sees ``maybe_sleeping = 1`` and writes the FIFO, or the
  owner sees ``is_set = 1`` and does not sleep.  A byte written while the owner did not
  sleep after all stays in the FIFO: its next ``poll()`` returns at once (a spurious
  wakeup: it looks and waits again), never a missed one.

So a sender streaming to a busy receiver pays one fence and one load per publish; a
receiver whose latch is already set costs its senders nothing more; four workers
publishing while their leader sleeps wake it with one byte, not four.

Spinning first
--------------

Before it says it may sleep, a wait may look at ``is_set`` for a while (its *spin*).  A
counterpart that makes progress meanwhile finds ``maybe_sleeping = 0``: it stores
``is_set = 1`` and makes no system call, and the spinner returns without one either.  A
sleep and a wakeup cost both processes tens of microseconds (the write, the scheduler,
poll's return, the drain) -- on a VM whose idle vCPU halts, a wakeup across CPUs costs
~50 us; between a leader and a worker on two CPUs, the counterpart's next step is
usually much closer than that.  The spin only *reads* a hint: the protocol above runs
unchanged after it, so it cannot lose a wakeup.

A wait spins only while a counterpart **may be running**: one whose record says it is
not asleep (``maybe_sleeping = 0``, ``owner_pid`` set), or one we just woke (we wrote
its FIFO and have not seen it awake since: ``Peer.woken``).  The counterparts are the
``Peer`` objects the latch ``watch``es (a ``MessageQueue`` watches its counterpart once
it attached).  A counterpart asleep cannot set the latch before someone wakes it, so
spinning for it can only waste a CPU; with nobody watched (no counterpart attached
yet), no spin either.  The spin also stops as soon as every counterpart has gone to
sleep.

The spin adapts, per latch, as adaptive mutexes do: it starts at ``SPIN_US``
microseconds (``BGWLAB_LATCH_SPIN_US``, default 100; 0 turns it off; never in a
process that may use one CPU only -- measured: letting a process pinned to one CPU spin
cost the 64 B round trip of two processes pinned to one CPU 10 %).  A spin that saw the latch set makes the next one whole again; one that ran out
halves it, and below ``SPIN_MIN_US`` the spin stops -- until ``PROBE_EVERY`` sleeps
later, when one whole spin is tried again, then after twice as many sleeps each time a
try fails (up to ``PROBE_MAX``).  A spin that ran out while a counterpart that may run
is on *our* CPU (field 39 of ``/proc/PID/stat``, "processor": the CPU it runs on or
waits for; ours from ``/proc/thread-self/stat``) stops at once instead of halving: the
counterpart was waiting for the CPU we spun on, so every spin only delays it -- the two
processes that the scheduler packed on one CPU, or pinned there.  The look costs two
``pread``s, a few microseconds, and is made only when a spin failed or is about to wait
for a wakeup (below): never on the path of a spin that pays.  A try is whole, not short, on purpose: after a sleep
the counterpart is asleep too, and it answers only after a wakeup's time; a short try
would never see it and two processes taking turns would stay in the sleeping regime
for good (measured: the round trip stuck at ~100 us instead of ~10 us).  So a
counterpart that answers within the spin is met spinning, and one that is idle, or
that cannot run because the CPUs are busy (a spin would only take its CPU -- two
processes on one CPU), costs a failed spin now and then, ever less often.
PostgreSQL's ``WaitLatch`` does not spin (its ``s_lock`` spinlocks do); this is
bgwlab's trade of a little CPU for latency.

A wakeup's time
---------------

A counterpart we just woke (``Peer.woken``) and that is not awake yet is on its way, and
how long that takes is the machine's, not the counterpart's: on a VM whose idle vCPU
halts (``haltpoll.guest_halt_poll_ns=0``) on a busy host it was measured at hundreds of
microseconds, more than a spin.  Counted against the spin, that wakeup made every spin
after a sleep fail -- and a stream of 1 MiB messages, once a disturbance had put both
sides to sleep, stayed in the sleeping regime for good (two wakeups per ring: ~0.15 GB/s
instead of ~2 GB/s; the probe, a whole spin, could not outlast a wakeup either).  So a
spin does not count the time until the counterpart it woke is awake: it waits for it,
up to the latch's *wake wait* (``WAKE_WAIT_US``, 500), then spins as usual.  Not when
the counterpart is on our CPU (it cannot arrive before we sleep).  A wake wait that
runs out -- a counterpart that cannot run because its CPU is busy with other work, not
halted -- halves the wait, and below a whole spin it is off; one that pays, or a probe,
makes it whole again.

The fence
---------

The words are read and written through a ``memoryview`` cast to native ``Q``: one
aligned 8-byte load or store each, never ``struct.pack_into`` (which zeroes a field
before it stores it: a reader could see a transient 0).  x86-64 (TSO) keeps stores in
order and loads in order, but lets a load pass an earlier store (the store buffer),
which is what the four fences above forbid.  Python has no ``pg_memory_barrier``, but
any LOCK-prefixed read-modify-write is a full barrier on x86-64, whatever address it
touches, and acquiring a fresh ``_thread`` lock is one (CPython's lock is a POSIX
semaphore: glibc's ``sem_trywait`` is a ``lock cmpxchg``): ``fence()``, a fraction of a
microsecond.  On other CPUs (``FENCED`` false) a set always writes the FIFO, whatever
the words say: correct, only slower.

What else ends a wait
---------------------

Death fds in the same ``poll()``: the postmaster's pidfd in a leader, the
postmaster-alive pipe in a worker (``WL_EXIT_ON_PM_DEATH``), and whatever the caller
adds -- the counterparts' pidfds (a counterpart that died), so nothing hangs.  A leader
also still hears from the *postmaster* by SIGUSR1 (a worker handle changed: started,
stopped), through ``bgwlab.latch.dispatcher``: its eventfd is in the same ``poll()``,
and a notification counts as a set of this latch.  A worker no longer handles SIGUSR1
at all (it stays ignored, as the engine starts it): its SIGTERM still ends any wait,
through the engine's wakeup pipe (``drain_fds``).
"""

from __future__ import annotations

import os
import select
import stat
from _thread import allocate_lock as _allocate_lock
from time import monotonic_ns as _now_ns

from bgwlab import worker as _bgw  # the engine's worker module (in a worker: its alive and wakeup fds)
from bgwlab.errors import PostmasterDied
from bgwlab.procinfo import open_pidfd, start_ticks, wait_fds

LATCH_SIZE = 128
W_IS_SET, W_MAYBE_SLEEPING, W_OWNER_PID, W_OWNER_START, W_NAME_LEN = range(5)
NAME_OFF = 40
NAME_MAX = LATCH_SIZE - NAME_OFF
SHM_DIR = "/dev/shm"

# A full fence (see "The fence"); only trusted on x86-64.
FENCED = os.uname().machine.lower() in ("x86_64", "amd64")
# How long a wait looks at is_set before it says it may sleep (see "Spinning first").
SPIN_US = int(os.environ.get("BGWLAB_LATCH_SPIN_US", "100"))
SPIN_MIN_US = 4
PROBE_EVERY = 64  # sleeps without spinning before a spin is tried again ...
PROBE_MAX = 1024  # ... doubling after every try that failed, up to this
# How long a spin may wait, at most, for a counterpart that we woke and that is not awake
# yet (see "A wakeup's time"), when it is not on our CPU.
WAKE_WAIT_US = 500
_spin_ns = None  # SPIN_US in ns, or 0 on a single CPU (decided at import: see spin_ns)



def spin_ns() -> int:
    """The spin of a wait, in ns: 0 when this process may use one CPU only (the setter
    could not run while we spin, if it shares that CPU; a counterpart unpinned, or pinned
    elsewhere, still spins for us).  A counterpart that merely *happens* to be on our CPU
    is found out when a spin fails (``_co_located``).

    Decided once per process image, when this module is imported: a worker inherits its
    postmaster's decision (and its affinity: a fork keeps it), instead of asking
    ``sched_getaffinity`` again in every worker's start-up."""
    global _spin_ns
    if _spin_ns is None:
        try:
            cpus = len(os.sched_getaffinity(0))
        except OSError:
            cpus = os.cpu_count() or 1
        _spin_ns = SPIN_US * 1000 if cpus > 1 else 0
    return _spin_ns


spin_ns()  # once, at import: a postmaster that preloads this module decides it for its workers


def _wake_wait_ns() -> int:
    return WAKE_WAIT_US * 1000 if spin_ns() else 0


# -- which CPU a process is on (field 39 of /proc/PID/stat, "processor") -----------------------
def _cpu_of(fd: int) -> int:
    """The CPU a process runs on, or last ran on (its run queue's) -- from an open
    /proc/PID/stat: one pread(), a few microseconds.  -1 if unknown."""
    try:
        data = os.pread(fd, 1024, 0)
        return int(data[data.rindex(b")") + 2:].split()[36])
    except (OSError, ValueError, IndexError):
        return -1


def my_cpu() -> int:
    """The CPU this thread runs on (open, pread, close: no fd kept)."""
    try:
        fd = os.open("/proc/thread-self/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1
    try:
        return _cpu_of(fd)
    finally:
        os.close(fd)


def _co_located(peers) -> bool:
    """Is a counterpart that may be running on our CPU?  Then it cannot run while we spin
    (it is waiting for our CPU), and a spin only delays it.  Two preads: asked only when
    a spin failed, before a probe, and when a spin is about to wait for a wakeup."""
    mine = -2
    for p in peers:
        if p.pid == os.getpid():
            continue  # another thread of ours: it may run anywhere
        w = p._w
        if w is None or not w[W_OWNER_PID]:
            continue
        cpu = p.cpu()
        if cpu < 0:
            continue
        if mine == -2:
            mine = my_cpu()
        if cpu == mine:
            return True
    return False


_me = (0, 0)  # (pid, its start ticks): ours, read from /proc once per process


def my_start_ticks() -> int:
    """This process's start time (clock ticks), read once: a worker's start-up asks for it
    three times, and each read of /proc costs half a dozen system calls."""
    global _me
    pid = os.getpid()
    if _me[0] != pid:  # first call, or a forked child
        _me = (pid, start_ticks(pid) or 0)
    return _me[1]


def _any_running(peers) -> int:
    """May one of `peers` be running: 2 if one is not (yet) asleep on its latch, 1 if
    none is but one was just woken by us (on its way back), 0 otherwise.  A hint only
    (read without a fence): it decides whether a spin may pay, never a wakeup."""
    on_its_way = 0
    for p in peers:
        w = p._w
        if w is None or not w[W_OWNER_PID]:
            continue  # closed, or its owner disowned it (exiting)
        if not w[W_MAYBE_SLEEPING]:
            p.woken = False
            return 2
        if p.woken:
            on_its_way = 1  # we wrote its FIFO: it is on its way back
    return on_its_way


def fence() -> None:
    # Acquiring a *fresh* lock is one LOCK-prefixed compare-exchange.  Never a shared lock:
    # a signal handler that raises (SIGTERM's Terminated) between its acquire and release
    # would leave it held, and the next fence -- in the cleanup that follows -- would wait
    # forever.
    _allocate_lock().acquire()


def latch_space(n: int) -> int:
    """Bytes for `n` latch records."""
    return n * LATCH_SIZE


def create_latches(segment, offset: int, n: int) -> list[int]:
    """Lay out `n` latch records at `offset` of `segment` and make their FIFOs.  The
    segment's creator only, before any other process maps it.  Returns the records'
    offsets (record k's FIFO is ``<segment name>.latch<k>``)."""
    if offset % 64 or offset <= 0 or offset + n * LATCH_SIZE > len(segment.buf):
        raise ValueError("latch records must be 64-byte aligned, after offset 0, inside the segment")
    offs = []
    for k in range(n):
        off = offset + k * LATCH_SIZE
        name = segment.create_fifo(f"latch{k}").encode("ascii")
        if len(name) > NAME_MAX:
            raise ValueError(f"FIFO name too long for a latch record: {name!r}")
        words = memoryview(segment.buf)[off:off + NAME_OFF].cast("Q")
        try:
            for i in range(NAME_OFF // 8):
                words[i] = 0
            words[W_NAME_LEN] = len(name)
        finally:
            words.release()
        segment.buf[off + NAME_OFF:off + NAME_OFF + len(name)] = name
        offs.append(off)
    return offs


def _record_name(buf, offset: int) -> str:
    if offset <= 0 or offset % 64 or offset + LATCH_SIZE > len(buf):
        raise ValueError(f"no latch record can be at offset {offset}")
    words = memoryview(buf)[offset:offset + NAME_OFF].cast("Q")
    n = words[W_NAME_LEN]  # native byte order, as create_latches stored it
    words.release()
    if not 0 < n <= NAME_MAX:
        raise ValueError("corrupt latch record (name length)")
    name = bytes(buf[offset + NAME_OFF:offset + NAME_OFF + n]).decode("ascii")
    if "/" in name or not name.startswith("bgwlab."):
        raise ValueError(f"corrupt latch record (FIFO name {name!r})")
    return name


def _check_private_fifo(fd: int, name: str) -> None:
    st = os.fstat(fd)
    if not stat.S_ISFIFO(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise PermissionError(f"{name} is not a private FIFO of this user")


def drain_fifo(fd: int) -> None:
    """Read a non-blocking FIFO (or pipe) empty; any error only means nothing more to read."""
    try:
        while len(os.read(fd, 4096)) == 4096:
            pass
    except OSError:
        pass


class SharedLatch:
    """This process's latch: its record in a segment and the read end of its FIFO.

    Owner only (the process that made the object), from one thread at a time.  The
    record must lie in the same mapping as the queues that use it.
    """

    death_fds: tuple = ()
    drain_fds: tuple = ()

    def __init__(self, buf, offset: int):
        self.name = _record_name(buf, offset)
        # O_RDWR, not O_RDONLY: we stay a writer of our own FIFO, so its read end never
        # reports POLLHUP after a setter closes its end (poll() would return at once,
        # forever), and set() from another thread of ours needs no second fd.
        fd = os.open(SHM_DIR + "/" + self.name,
                     os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            _check_private_fifo(fd, self.name)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd  # the FIFO (read end): in every poll() of ours
        self.buf, self.offset = buf, offset
        self._w = memoryview(buf)[offset:offset + NAME_OFF].cast("Q")
        self._spin = spin_ns()  # this latch's current spin (ns); 0: off until the next probe
        self._wake_wait = _wake_wait_ns()  # how long a spin may wait for a woken counterpart (ns)
        self._unspun = 0  # sleeps since the spin went off
        self._probe_every = PROBE_EVERY  # sleeps between two tries while it is off
        self._counterparts = []  # Peers that set this latch (watch): spin only if one may run
        self._poller, self._poll_also = None, None
        self._pm_news = True
        me = os.getpid()
        self._w[W_OWNER_START] = my_start_ticks()
        self._w[W_OWNER_PID] = me  # OwnLatch: last, once the FIFO's read end is open

    # -- the owner's side ----------------------------------------------------------------
    def reset(self) -> None:
        """ResetLatch.  Then look at the shared state, then wait."""
        self._w[W_IS_SET] = 0
        fence()  # (C): the reset before the caller's loads of the queues

    def wait(self, also=(), timeout: float | None = None, postmaster: bool = True) -> list[int]:
        """WaitLatch: sleep until set, one of `also` is readable, or `timeout`.

        Returns the readable fds among `also` ([] when the latch was set).  Raises
        PostmasterDied if the postmaster is gone.  Owner only.  `postmaster=False`: the
        caller needs no news from the postmaster about worker handles for this wait
        (every counterpart it waits for has attached: their pidfds are in `also`), so a
        leader may skip the signal dispatcher's bookkeeping (LeaderLatch).
        """
        self._pm_news = postmaster
        w = self._w
        if w[W_IS_SET]:
            return []
        if timeout != 0 and self._spinning() and self._spin_now(timeout):
            return []
        w[W_MAYBE_SLEEPING] = 1
        fence()  # (D): our maybe_sleeping before our load of is_set
        if w[W_IS_SET]:
            w[W_MAYBE_SLEEPING] = 0
            return []
        try:
            ready = self._poll(also, timeout)
        finally:
            w[W_MAYBE_SLEEPING] = 0
        if ready is None:
            return []  # the common wakeup: our FIFO alone was readable (drained)
        if self.fd in ready:
            drain_fifo(self.fd)
        for fd in self.drain_fds:
            if fd in ready:
                drain_fifo(fd)
        self.check_postmaster(ready)
        return [fd for fd in ready if fd in also]

    def _spin_now(self, timeout) -> bool:
        """The spin: look at is_set while a counterpart may be running.  True if it got set.
        Adapts this latch's spin (see "Spinning first")."""
        peers = self._counterparts
        running = _any_running(peers)
        if not running:
            return False  # nobody who could set it runs (or none attached yet): it cannot pay
        w = self._w
        spin = self._spin if timeout is None else min(self._spin, int(timeout * 1e9))
        start = now = _now_ns()
        end = start + spin
        wake_end = -1  # > 0: we wait for a woken counterpart until then (0: we do not)
        n = 0
        while True:
            if w[W_IS_SET]:
                self._spin = _spin_ns  # it paid: the whole spin again next time
                self._probe_every = PROBE_EVERY
                if wake_end > 0:
                    self._wake_wait = _wake_wait_ns()  # so did waiting for its wakeup
                return True
            n += 1
            now = _now_ns()
            if not n & 15 or now >= end:
                running = _any_running(peers)
                if not running:
                    return False  # they went to sleep meanwhile: neither a success nor a failure
                if now < end:
                    continue
                # Run out.  A counterpart we woke that is not awake yet: its wakeup's time
                # does not count against the spin ("A wakeup's time") -- wait for it, up to
                # this latch's wake wait, unless it waits for our own CPU.
                if running == 1 and wake_end < 0:
                    wake_end = (start + self._wake_wait if timeout is None and self._wake_wait
                                and not _co_located(peers) else 0)
                if running == 1 and now < wake_end:
                    # Still on its way: keep waiting -- a spin's time past the last look at
                    # it, so that once awake it has about a whole spin to set the latch.
                    end = min(now + spin, wake_end)
                    continue
                break
        if wake_end > 0 and running == 1:
            # It never arrived: its wakeup takes longer than we would wait (a busy CPU, not
            # a halted one): wait half as long next time, none below a spin's length.
            self._wake_wait >>= 1
            if self._wake_wait < _spin_ns:
                self._wake_wait = 0
        if _co_located(peers):
            self._spin = 0  # it waits for our CPU: spinning only delays it (a probe may retry)
            return False
        self._spin >>= 1  # it did not: half as long next time, and stop below the floor
        if self._spin < SPIN_MIN_US * 1000:
            self._spin = 0
        return False

    def watch(self, peer) -> None:
        """Spin only while `peer` (a counterpart whose record is in our segment, one that
        sets this latch) or another watched one may be running.  Without any watched
        counterpart, a wait does not spin (MessageQueue watches its counterpart once it
        has attached)."""
        if peer is not None and peer._w is not None and peer not in self._counterparts:
            self._counterparts.append(peer)

    def unwatch(self, peer) -> None:
        if peer in self._counterparts:
            self._counterparts.remove(peer)

    def _spinning(self) -> bool:
        if self._spin:
            return True
        if not _spin_ns:
            return False
        self._unspun += 1
        if self._unspun >= self._probe_every:  # try again now and then: the load may have changed
            self._unspun = 0
            self._probe_every = min(self._probe_every * 2, PROBE_MAX)  # a success resets it
            self._spin = _spin_ns  # a whole spin: a counterpart asleep needs a wakeup's time
            self._wake_wait = _wake_wait_ns()  # and waits for a slow wakeup again
            return True
        return False

    def _poll_fds_for(self, also) -> tuple:
        return (self.fd, *also, *self.death_fds, *self.drain_fds)

    def _poll(self, also, timeout):
        """poll() our FIFO, `also` and the death and drain fds.  None when our FIFO alone
        was readable -- the common wakeup, a set -- and is drained; else the readable fds
        (the caller drains)."""
        # One poll object per latch, rebuilt only when `also` changes (a queue's
        # counterpart attached or exited): the same few fds at every sleep.
        if also != self._poll_also or self._poller is None:
            p = select.poll()
            for fd in self._poll_fds_for(also):
                p.register(fd, select.POLLIN)
            self._poller, self._poll_also = p, also
        events = self._poller.poll(None if timeout is None else max(0, int(timeout * 1000 + 0.999)))
        if len(events) == 1 and events[0][0] == self.fd:
            drain_fifo(self.fd)
            return None
        return [fd for fd, _ in events]

    def set(self) -> None:
        """SetLatch on our own latch (another thread of ours, say)."""
        w = self._w
        fence()
        if w[W_IS_SET]:
            return
        w[W_IS_SET] = 1
        fence()
        if FENCED and not w[W_MAYBE_SLEEPING]:
            return
        try:
            os.write(self.fd, b"\0")
        except OSError:
            pass  # full: a wakeup is pending anyway

    @property
    def is_set(self) -> bool:
        return bool(self._w[W_IS_SET])

    def check_postmaster(self, ready=None) -> None:
        fds = self.death_fds
        if fds and any(fd in (ready if ready is not None else wait_fds(fds, 0)) for fd in fds):
            raise PostmasterDied("the postmaster died during a parallel operation; start a new "
                                 "cluster")

    def close(self) -> None:
        """DisownLatch and close the FIFO's read end (setters then get EPIPE / ENXIO and
        give up).  The FIFO's name stays: the segment's creator removes it."""
        if self.fd < 0:
            return
        try:
            self._w[W_OWNER_PID] = 0
        except ValueError:
            pass  # the mapping is already gone
        self._w.release()
        os.close(self.fd)
        self.fd = -1


class LeaderLatch(SharedLatch):
    """A leader's latch: its record, plus what the postmaster tells a registrant.

    The postmaster's notifications (a worker handle changed) still arrive by SIGUSR1,
    through the dispatcher, which sets an eventfd; that eventfd is in our ``poll()`` and
    counts as a set of this latch.  The death fd is the backend's postmaster pidfd.
    Leader only.
    """

    def __init__(self, backend, buf, offset: int):
        super().__init__(buf, offset)
        self._ev = None
        pm_fd = getattr(backend, "_pm_fd", -1) if backend is not None else -1
        self.death_fds = (pm_fd,) if pm_fd >= 0 else ()
        if backend is not None:
            # Imported here, in the leader only: bgwlab.latch brings threading (whose
            # at-fork hook would run in every worker the postmaster forks) into the image
            # of a postmaster that preloads this module for its workers.
            from bgwlab.latch import EventfdLatch, dispatcher

            self._dispatcher = dispatcher
            self._ev = EventfdLatch()
            dispatcher.add(self._ev)

    def _poll_fds_for(self, also) -> tuple:
        fds = super()._poll_fds_for(also)
        return fds if self._ev is None else (*fds, self._ev.fileno())

    def _poll(self, also, timeout):
        ev = self._ev
        if ev is None:
            return super()._poll(also, timeout)
        if self._pm_news:
            fds = super()._poll_fds_for(also)
            ready = self._dispatcher.wait(ev, timeout, also=fds)  # also drains the signal pipe (main thread)
        else:
            # No handle news needed: our own poll object, with the eventfd in it all the
            # same (a notification the dispatcher delivered still wakes us).  Skips the
            # dispatcher's per-wait checks (its wakeup fd, its pipe), a few microseconds.
            ready = super()._poll(also, timeout)
            if ready is None:
                return None
        if ev.fileno() in ready:
            ev.reset()
            self._w[W_IS_SET] = 1  # a notification is a set: the caller resets and looks
        return ready

    def close(self) -> None:
        if self._ev is not None:
            self._dispatcher.remove(self._ev)
            self._ev.close()
            self._ev = None
        super().close()


class WorkerLatch(SharedLatch):
    """A worker's latch.  Worker only.  Its death fd is the postmaster-alive pipe; the
    engine's wakeup pipe (SIGTERM) is drained, so that a SIGTERM ends the wait and its
    handler raises ``Terminated``."""

    def __init__(self, buf, offset: int):
        super().__init__(buf, offset)
        alive, wake = _bgw._alive_fd, _bgw._wake_fd
        self.death_fds = (alive,) if alive >= 0 else ()
        self.drain_fds = (wake,) if wake >= 0 else ()


class Peer:
    """The counterpart process of a queue: (pid, start ticks) -> a pidfd, plus its latch.

    ``set_latch()`` is PostgreSQL's ``SetLatch(&proc->procLatch)`` on the counterpart's
    record (the protocol above).  The pidfd, validated against the start time, is
    readable once that process has exited: ``fd`` goes into waits.

    Two queues of one process whose counterpart is the same process, with the same latch
    record, may share one Peer (``share``): a worker's error and data queues, whose
    receiver is the leader.  Each holder closes it once; the last close releases it.

    The pidfd is opened, and checked against the start time, at the first use of ``fd``
    or ``gone`` -- not when the Peer is made: setting its latch needs neither, and a
    worker makes its Peer of the leader on the way to its attach announcement, where a
    ``pidfd_open`` and a read of /proc cost ~100 us of copy-on-write faults and system
    calls.  Opened later, the check is the same: a pid that another process has taken
    meanwhile fails it, and the Peer is gone -- as the process it named is.
    """

    __slots__ = ("pid", "start", "_fd", "_gone", "_w", "_name", "_wfd", "woken", "_statfd",
                 "latch_offset", "_refs")

    def __init__(self, pid: int, start: int, buf=None, latch_offset: int = 0):
        self.pid, self.start = pid, start
        self.latch_offset = latch_offset
        self._refs = 1
        self._fd = -2  # -2: not opened yet (see above); -1: none (it was gone, or closed)
        self._gone = False
        self._w = None
        self._name = None
        self._wfd = -1  # the FIFO's write end, opened at the first wakeup that needs it
        self.woken = False  # we wrote its FIFO and have not seen it awake since (a spin hint)
        self._statfd = None  # its /proc/PID/stat, opened at the first cpu()
        if buf is not None and latch_offset:
            self._name = _record_name(buf, latch_offset)
            self._w = memoryview(buf)[latch_offset:latch_offset + NAME_OFF].cast("Q")

    @property
    def fd(self) -> int:
        """Its pidfd (readable once it has exited), or -1 if it was gone when we looked."""
        fd = self._fd
        if fd == -2:
            fd = open_pidfd(self.pid, self.start)
            if fd is None:
                fd, self._gone = -1, True
            self._fd = fd
        return fd

    @property
    def gone(self) -> bool:
        """Has it exited?  One poll() until the answer is yes, then none."""
        if not self._gone:
            fd = self.fd
            if fd >= 0 and wait_fds([fd], 0):
                self._gone = True
        return self._gone

    def mark_gone(self) -> None:
        """A wait saw our pidfd readable: the process exited."""
        self._gone = True

    def share(self, pid: int, start: int, latch_offset: int):
        """This Peer, one more holder's, if it is (pid, start) with its latch record at
        `latch_offset` -- the same process (a pid and its start time name one process), so
        the same pidfd and the same latch; else None.  Not after close."""
        if (self._refs > 0 and pid == self.pid and start == self.start
                and latch_offset == self.latch_offset):
            self._refs += 1
            return self
        return None

    @property
    def shared(self) -> bool:
        """Does another holder still use it (a close now would not release it)?"""
        return self._refs > 1

    def cpu(self) -> int:
        """The CPU it runs on or last ran on (-1: unknown, gone).  A hint for the spin."""
        fd = self._statfd
        if fd is None:
            fd = -1
            if not self._gone and self.fd >= 0:  # (opens and checks the pidfd first: a recycled pid is not it)
                try:
                    fd = os.open(f"/proc/{self.pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    pass
            self._statfd = fd
        return _cpu_of(fd) if fd >= 0 else -1

    def may_sleep(self) -> bool:
        """Does its record say it may be asleep on its latch (the caller fenced after its
        last store of progress)?  True too where we cannot tell (not FENCED)."""
        w = self._w
        return w is not None and (not FENCED or bool(w[W_MAYBE_SLEEPING]))

    def set_latch(self) -> None:
        """SetLatch: no system call unless the counterpart may be asleep."""
        w = self._w
        if w is None:
            return
        if FENCED:
            fence()  # (A): our stores of progress before our load of is_set
            if w[W_IS_SET]:
                return
            w[W_IS_SET] = 1
            fence()  # (B): our store of is_set before our load of maybe_sleeping
            if not w[W_MAYBE_SLEEPING]:
                return
        else:
            w[W_IS_SET] = 1
        self._wake()

    def _wake(self) -> None:
        if self._wfd < 0:
            if self._name is None:
                return
            try:
                fd = os.open(SHM_DIR + "/" + self._name,
                             os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
            except OSError:
                # ENXIO: no reader (it closed its latch: it is exiting); ENOENT: the
                # segment is gone.  Nobody to wake.
                return
            try:
                _check_private_fifo(fd, self._name)
            except BaseException:
                os.close(fd)
                self._name = None
                raise
            self._wfd = fd
        self.woken = True
        try:
            os.write(self._wfd, b"\0")
        except OSError:
            pass  # EAGAIN: full, a wakeup is pending anyway; EPIPE: its reader closed

    def close(self) -> None:
        """Its holder is done with it; the last holder's close releases the fds and the view."""
        if self._refs > 1:
            self._refs -= 1
            return
        self._refs = 0
        if self._w is not None:
            self._w.release()
            self._w = None
        if self._wfd >= 0:
            os.close(self._wfd)
            self._wfd = -1
        if self._statfd is not None and self._statfd >= 0:
            os.close(self._statfd)
        self._statfd = None
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = -1
