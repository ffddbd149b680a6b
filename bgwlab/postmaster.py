"""The postmaster: one lean, single-threaded process that forks and supervises workers.

Run as ``python -S -m bgwlab.postmaster DIR [READY_FD]``, or as ``Cluster.start()`` runs it:
``python -S -u -c "...from bgwlab.postmaster import main..." DIR READY_FD`` (the same
``main``, without runpy: see "The image" below).

It sleeps in one ``poll()`` on: its signal self-pipe (SIGUSR1 from registrants,
SIGCHLD, SIGTERM), the pidfd of the process that started it, and a pidfd per backend
that it notifies.  On every wake it reaps children, absorbs changes in shared memory
(new registrations, terminate requests; PostgreSQL's ``BackgroundWorkerStateChange``)
and starts what is due (``maybe_start_bgworkers``: at most 100 per pass).

Every function here runs in the postmaster only, unless it says otherwise.  It takes
no lock and trusts nothing in the segment: see the protocol in ``shmem.py``.

The image
---------

``fork()`` copies the parent's page tables: every page of private memory the postmaster
has touched, and every mapping (each shared library is four or five).  A fork that
fails copies them all too -- the kernel's pids check comes after the copy -- and then
tears the copy down.  So what the postmaster loads before its first fork is paid on
every start, failed or not.  It loads the C modules it needs (``posix``, ``_signal``,
``select``, ``mmap``, ``_struct``) and little else:

* ``_signal``, not ``signal``: ``signal``'s enum wrappers import ``enum``, ``functools``,
  ``collections``, ``operator``, ``reprlib``, ``keyword`` and ``types`` -- about 0.8 MB of
  heap.  The calls are the same; the signal numbers are plain ints.
* no ``zlib``: the slot's checksum is computed with Python's integers
  (``shmem.spec_checksum``); zlib's module and libz were ten mappings.
* no runpy: ``python -m`` leaves ``importlib.util``, ``contextlib``, ``warnings`` (and
  with them functools and collections again) in the heap, so ``Cluster.start()`` calls
  ``main`` through ``-c`` instead.
* ``gc.freeze()`` once everything is loaded (``setup``).

Together: 4.0 -> 3.1 MB of private memory, 65 -> 55 mappings.  Interleaved A/Bs (B / A;
``benchmarks/ab_patches/old_image.py`` and ``old_crc.py`` put the old image back): without
signal and runpy, start 0.91-0.94x, genuine fork failure 0.88-0.93x, the postmaster's CPU
per start 0.88-0.91x; without zlib, start and genuine fork failure 0.98-1.00x.
``tests/test_postmaster_image.py`` checks what a running postmaster has loaded when it
forks, so that a later import cannot grow the image unnoticed.
"""

import os
import select
import sys
import time

import _signal  # signal's C module, not signal: see "The image" above

from . import shmem
from .eventlog import EventWriter
from .procinfo import open_pidfd, preload_libc, process_uid, start_ticks

MAX_STARTS_PER_PASS = 100  # as PostgreSQL's MAX_BGWORKERS_TO_LAUNCH
KILL_GRACE_NS = 5_000_000_000  # SIGKILL children still alive this long after SIGQUIT/SIGTERM
NEVER = -1
FORK_BLOCKED_SIGNALS = (_signal.SIGUSR1, _signal.SIGCHLD, _signal.SIGTERM, _signal.SIGINT,
                        _signal.SIGHUP, _signal.SIGQUIT)
SIGUSR1 = _signal.SIGUSR1
SIGCHLD = _signal.SIGCHLD


class RegisteredWorker:
    """The postmaster's private copy of one registered worker (``RegisteredBgWorker``)."""

    __slots__ = ("slot", "generation", "spec", "raw", "pid", "start_at", "notify",
                 "terminate_seen", "fork_attempts", "term_sent", "seen_in_recovery", "seen_ns")

    def __init__(self, slot, generation, spec, raw, now):
        self.slot = slot
        self.generation = generation
        self.spec = spec
        self.raw = raw  # the validated bytes, to repair the slot after a crash
        self.pid = -1  # -1 not started, 0 not running, >0 running: mirrors the slot
        self.start_at = now + spec.pm_delay_ns
        self.notify = None  # (backend index, pid, start ticks) once validated
        self.terminate_seen = False
        self.fork_attempts = 0
        self.term_sent = False
        self.seen_in_recovery = False  # first seen during a crash-restart: served after it
        self.seen_ns = now  # when the request was seen (its request_seen event)


def read_config(directory: str) -> dict:
    """Parse DIR/postmaster.conf: ``key=value`` lines; ``path=`` lines form sys.path."""
    cfg = {"path": []}
    with open(os.path.join(directory, "postmaster.conf"), encoding="utf-8") as f:
        for line in f:
            key, _, value = line.rstrip("\n").partition("=")
            if key == "path":
                cfg["path"].append(value)
            elif key == "preload":
                cfg["preload"] = [m for m in value.split(",") if m]
            else:
                cfg[key] = value
    return cfg


class Postmaster:
    def __init__(self, directory: str, cfg: dict):
        self.directory = directory
        self.pid = os.getpid()
        self.uid = os.geteuid()
        self.max_workers = int(cfg["max_workers"])
        self.max_backends = int(cfg["max_backends"])
        self.restart_after_crash = cfg.get("restart_after_crash", "1") == "1"
        self.log_events = cfg.get("log_events", "1") == "1"
        self.pdeathsig = cfg.get("pdeathsig", "0") == "1"  # bgwlab-only: see worker.child_main
        self.starter = (int(cfg.get("starter_pid", "0")), int(cfg.get("starter_start", "0")))
        self.preload = cfg.get("preload", [])
        self.workers = {}  # slot -> RegisteredWorker
        self.owned = bytearray(self.max_workers)  # 1 where self.workers has the slot
        self.slot_bits = int.from_bytes(b"\x01" * self.max_workers, "little")
        self.by_pid = {}  # running child pid -> RegisteredWorker
        self.pending = {}  # slot -> RegisteredWorker that wants a fork
        self.suspect = {}  # slot -> first time its content failed validation
        self.backends = {}  # backend index -> (pid, start ticks, pidfd)
        self.slot_hwm = [0] * self.max_workers  # highest generation accepted per slot
        self.gen_hwm = 0
        self.state = shmem.PM_STARTING
        self.crash_restarts = 0
        self.deadline = None  # SIGKILL survivors after this (crash recovery / shutdown)
        self.stop_reason = ""
        self.usr1 = False  # SIGUSR1 seen on this wake
        self.unlogged = {}  # slot -> RegisteredWorker whose request_seen is not written yet
        # The fork path (bgwlab/forkpath.py): the directory of the built C module, or "" for
        # the Python reference; "c" was asked for explicitly: no fallback then.
        self.fork_c_dir = cfg.get("fork_c", "")
        self.fork_c_required = cfg.get("fork_path", "auto") == "c"
        self.fork_path_note = cfg.get("fork_path_note", "")  # why not C, when "auto" fell back
        self.fork_c = None  # _forkpath.c's fork_publish_notify once loaded (setup)

    # -- setup -----------------------------------------------------------------------------
    def setup(self) -> None:
        os.umask(0o077)
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        for s in FORK_BLOCKED_SIGNALS:  # (these six: SIGUSR1, SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGQUIT)
            _signal.signal(s, _noop_handler)
        _signal.signal(_signal.SIGPIPE, _signal.SIG_IGN)
        _signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        # postmaster_alive_fds: only we hold the write end; workers see EOF when we die.
        self.alive_r, self.alive_w = os.pipe2(os.O_CLOEXEC)
        self.events = EventWriter(os.path.join(self.directory, "events.jsonl"), "postmaster",
                                  enabled=self.log_events)
        # the workers' writer, made once: a forked worker logs through it (worker.child_main)
        self.worker_events = self.events.with_source("worker").prepare(
            "reached_main", "early_crash", "worker_error")
        from . import worker  # noqa: F401  (loaded before fork, so children need not)

        if self.fork_c_dir:
            try:
                self.fork_c = load_fork_c(self.fork_c_dir)
            except ImportError as e:
                if self.fork_c_required:
                    raise SystemExit(f"bgwlab postmaster: fork_path='c' but {e}") from None
                self.fork_path_note = f"the built C fork path did not load: {e}"
                print(f"bgwlab postmaster: {self.fork_path_note}; using the Python one", file=sys.stderr)

        if self.pdeathsig:  # only its workers call prctl (through ctypes): load it once here.
            preload_libc()  # Otherwise not at all: _ctypes and libffi are ~10 more mappings
            #                 that every fork() copies (A/B in benchmarks/README.md)
        for mod in self.preload:
            try:
                __import__(mod)
            except Exception as e:  # a bad preload must not stop the cluster
                print(f"bgwlab postmaster: could not preload {mod}: {e!r}", file=sys.stderr)
        import gc

        gc.freeze()  # what is loaded so far is permanent: no GC pass walks (and so
        #              copy-on-write-faults) those pages after each fork
        self.seg = shmem.Segment(os.path.join(self.directory, "shmem"), create=True,
                                 max_workers=self.max_workers, max_backends=self.max_backends)
        self.seg.init_header(self.pid, self.uid, start_ticks(self.pid) or 0, 1)
        self.poller = select.poll()
        self.poller.register(self.wake_r, select.POLLIN)
        self.starter_fd = -1
        if self.starter[0] > 0:
            fd = open_pidfd(*self.starter)
            if fd is None:
                raise SystemExit("bgwlab postmaster: the starting process is already gone")
            self.starter_fd = fd
            self.poller.register(fd, select.POLLIN)
        os.close(os.open(os.path.join(self.directory, "registration.lock"),
                         os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        pidfile = os.path.join(self.directory, "postmaster.pid")
        with open(pidfile + ".tmp", "w") as f:
            f.write(f"{self.pid}\n{start_ticks(self.pid)}\n")
        os.rename(pidfile + ".tmp", pidfile)
        self.set_state(shmem.PM_RUNNING)
        self.events.emit("postmaster_started", max_workers=self.max_workers,
                         max_backends=self.max_backends, fork_path=self.fork_path(),
                         **({"fork_path_note": self.fork_path_note} if self.fork_path_note else {}))

    def fork_path(self) -> str:
        """Which fork path start_worker takes: "c" (bgwlab/_forkpath.c) or "python"."""
        return "python" if self.fork_c is None else "c"

    def private_fds(self) -> list[int]:
        """Fds a forked worker must close.  Called in the child."""
        fds = [self.wake_r, self.wake_w, self.alive_w]
        if self.starter_fd >= 0:
            fds.append(self.starter_fd)
        fds.extend(b[2] for b in self.backends.values())
        return fds

    def set_state(self, state: int) -> None:
        self.state = state
        self.seg.set_state(state)

    # -- main loop -------------------------------------------------------------------------
    def run(self) -> int:
        """The postmaster's loop: sleep, then one pass over everything that may have changed.

        A pass may signal a registrant before it writes the lines of what it did (a start's
        and a failed fork's are written after the signal and a yield), so the header's
        log_owed word says 1 from the wake-up to the end of the pass: Cluster.events() waits
        for 0 (shmem.set_log_owed).
        """
        seg = self.seg
        while True:
            timeout_ms = self.next_timeout_ms()
            try:
                ready = self.poller.poll(timeout_ms)
            except InterruptedError:
                ready = []
            seg.set_log_owed(1)  # the lines of this pass are not written yet
            sigs = self.drain_wakeups()
            self.usr1 = SIGUSR1 in sigs  # rescan even if a scribbler cleared the PMSignal flag
            for fd, _ in ready:
                if fd == self.starter_fd and self.state != shmem.PM_SHUTDOWN:
                    self.begin_shutdown("the process that started the cluster exited")
                elif fd not in (self.wake_r, self.starter_fd):
                    self.forget_backend_fd(fd)
            if (_signal.SIGTERM in sigs or _signal.SIGINT in sigs or _signal.SIGQUIT in sigs) \
                    and self.state != shmem.PM_SHUTDOWN:
                self.begin_shutdown("shutdown requested")
            if self.by_pid or SIGCHLD in sigs:  # (no child: waitpid would only raise)
                self.guarded(self.reap_children)
            self.guarded(self.absorb_shmem_changes)
            self.guarded(self.advance_state)
            if self.state == shmem.PM_STOPPED:
                seg.set_log_owed(0)
                return 0
            self.guarded(self.start_due_workers)
            if self.unlogged:  # requests seen but not started in this pass (delayed, recovery)
                self.events.write(b"".join([self.seen_line(rw) for rw in list(self.unlogged.values())]))
            seg.set_log_owed(0)  # every line of the pass is in the file (after its write())

    def guarded(self, step) -> None:
        """Run one step of the loop; an unexpected error is logged, never fatal."""
        try:
            step()
        except Exception as e:
            import traceback

            traceback.print_exc()
            self.events.emit("postmaster_error", error=f"{type(e).__name__}: {e}")

    def drain_wakeups(self) -> bytes:
        data = b""
        while True:
            try:
                chunk = os.read(self.wake_r, 4096)
            except BlockingIOError:
                return data
            data += chunk
            if len(chunk) < 4096:  # a short read emptied the pipe: no second read (it would
                return data        # only raise); a byte written since makes poll() return at once

    def next_timeout_ms(self):
        """Sleep until the earliest timed thing: a delayed start, a recheck, a deadline."""
        now = time.monotonic_ns()
        t = None
        if self.state == shmem.PM_RUNNING:
            for rw in self.pending.values():
                if t is None or rw.start_at < t:
                    t = rw.start_at
        for first in self.suspect.values():
            r = first + shmem.RECHECK_NS
            if t is None or r < t:
                t = r
        if self.deadline is not None and (t is None or self.deadline < t):
            t = self.deadline
        if t is None:
            return None
        return max(0, (t - now + 999_999) // 1_000_000)

    # -- children --------------------------------------------------------------------------
    def reap_children(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            t = time.monotonic_ns()
            rw = self.by_pid.pop(pid, None)
            if rw is None:
                continue
            if os.WIFEXITED(status):
                self.on_worker_exit(rw, os.WEXITSTATUS(status), None, t)
            elif os.WIFSIGNALED(status):
                self.on_worker_exit(rw, None, os.WTERMSIG(status), t)

    def on_worker_exit(self, rw, code, sig, t) -> None:
        """CleanupBackgroundWorker + HandleChildCrash."""
        worker_pid = rw.pid
        rw.pid = 0
        crash = code not in (0, 1)
        self.events.emit("exited", rw.slot, rw.generation, t_ns=t, worker_pid=worker_pid,
                         exit_code=code, signal=sig, crash=crash)
        if self.state == shmem.PM_SHUTDOWN:
            self.forget_and_notify(rw, "postmaster shutdown")
            return
        if self.state == shmem.PM_CRASH_RECOVERY:
            self.seg.set_pid(rw.slot, 0)  # handled when recovery ends
            return
        if code == 0:
            self.forget_and_notify(rw, "exit 0")
        elif code == 1:
            if rw.spec.restart_ms == NEVER or rw.terminate_seen:
                self.forget_and_notify(rw, "terminated" if rw.terminate_seen else "exit 1, never restart")
            else:
                self.seg.set_pid(rw.slot, 0)
                rw.start_at = t + rw.spec.restart_ms * 1_000_000
                self.pending[rw.slot] = rw
                self.events.emit("restart_scheduled", rw.slot, rw.generation,
                                 after_s=rw.spec.restart_ms / 1000)
                self.notify(rw, "exited")
        elif self.restart_after_crash:
            self.seg.set_pid(rw.slot, 0)
            self.begin_crash_recovery(rw, code, sig)
        else:
            self.seg.set_pid(rw.slot, 0)
            self.begin_shutdown(f"worker in slot {rw.slot} crashed and restart_after_crash is off")

    def begin_crash_recovery(self, culprit, code, sig) -> None:
        """Stop every other worker (SIGQUIT), then reinitialise (PostgreSQL's crash-restart)."""
        self.crash_restarts += 1
        self.seg.set_crash_restarts(self.crash_restarts)
        self.set_state(shmem.PM_CRASH_RECOVERY)
        self.events.emit("crash_restart", culprit.slot, culprit.generation, phase="begin",
                         exit_code=code, signal=sig, running=len(self.by_pid))
        for pid in list(self.by_pid):
            _kill(pid, _signal.SIGQUIT)
        self.deadline = time.monotonic_ns() + KILL_GRACE_NS

    def finish_crash_recovery(self) -> None:
        """All children are gone: repair shared memory, forget NEVER_RESTART workers, wake waiters.

        As PostgreSQL's ResetBackgroundWorkerCrashTimes: every restartable worker -- the
        one that crashed too -- starts again at once, whatever its restart interval.
        bgwlab's registrants outlive the crash (DESIGN §1a), so one more case exists
        here: a request first seen during the recovery was made after the crash began,
        and it is served now, NEVER_RESTART or not.
        """
        self.deadline = None
        self.seg.set_next_generation(max(self.seg.next_generation(), self.gen_hwm + 1))
        now = time.monotonic_ns()
        for rw in list(self.workers.values()):
            self.seg.write_spec(rw.slot, rw.raw)
            self.seg.set_generation(rw.slot, rw.generation)
            self.seg.set_in_use(rw.slot, 1)
            if rw.terminate_seen or (rw.spec.restart_ms == NEVER and not rw.seen_in_recovery):
                self.forget_and_notify(rw, "crash-restart")
            else:
                rw.pid = -1
                self.seg.set_pid(rw.slot, -1)
                # a fault's postmaster delay still applies to a request not yet served
                rw.start_at = max(rw.start_at, now) if rw.seen_in_recovery else now
                rw.seen_in_recovery = False
                self.pending[rw.slot] = rw
                self.notify(rw, "crash-restart")
        self.set_state(shmem.PM_RUNNING)
        self.events.emit("crash_restart", phase="end", kept=len(self.workers))

    def begin_shutdown(self, reason: str) -> None:
        self.stop_reason = reason
        self.set_state(shmem.PM_SHUTDOWN)
        self.events.emit("postmaster_stopping", reason=reason, running=len(self.by_pid))
        for rw in list(self.workers.values()):
            if rw.pid > 0:
                _kill(rw.pid, _signal.SIGTERM)
                rw.term_sent = True
            else:
                self.forget_and_notify(rw, "postmaster shutdown")
        self.deadline = time.monotonic_ns() + KILL_GRACE_NS

    def advance_state(self) -> None:
        """Move crash recovery and shutdown along once their children are gone."""
        if self.state not in (shmem.PM_CRASH_RECOVERY, shmem.PM_SHUTDOWN):
            return
        if self.by_pid and self.deadline is not None and time.monotonic_ns() >= self.deadline:
            for pid in list(self.by_pid):
                _kill(pid, _signal.SIGKILL)
            self.deadline = None
        if self.by_pid:
            return
        if self.state == shmem.PM_CRASH_RECOVERY:
            self.finish_crash_recovery()
        else:
            for rw in list(self.workers.values()):
                self.forget_and_notify(rw, "postmaster shutdown")
            self.set_state(shmem.PM_STOPPED)
            self.events.emit("postmaster_stopped", reason=self.stop_reason)

    # -- shared memory -----------------------------------------------------------------------
    def absorb_shmem_changes(self) -> None:
        """BackgroundWorkerStateChange: copy new registrations, act on terminate requests.

        Driven by the PMSignal flag, which a registrant sets after its writes and before
        its signal: clearing the flag first and scanning second can only see more.
        """
        flags = self.seg.take_pmsignals()
        if flags[shmem.PMSIGNAL_BACKEND_CHANGE]:
            self.check_backends()
        if not (flags[shmem.PMSIGNAL_WORKER_CHANGE] or self.suspect or self.usr1):
            return
        now = time.monotonic_ns()
        in_use = self.seg.in_use_array()
        for slot in [s for s in self.suspect if in_use[s] != 1]:
            del self.suspect[slot]  # withdrawn before we judged it: nothing left to recheck
        if in_use.translate(None, b"\x00\x01"):  # a byte no registrant writes: scribbled
            for slot, v in enumerate(in_use):
                if v > 1 and slot in self.workers:
                    self.restore_slot(self.workers[slot], v)
                elif v > 1:  # nobody would ever claim it: free it
                    self.seg.set_in_use(slot, 0)
                    self.events.emit("slot_rejected", slot, reason=f"in_use byte {v} is not 0 or 1; freed")
            in_use = self.seg.in_use_array()
        # Which slots changed hands, in O(max_workers) C work rather than a Python loop
        # over every slot in use: one bit per slot (bit 0 of each byte), ours vs. theirs.
        claimed = int.from_bytes(in_use, "little") & self.slot_bits
        ours = int.from_bytes(self.owned, "little")
        for slot in _slots_of(claimed & ~ours):
            self.accept_registration(slot, now)
        for slot in _slots_of(ours & ~claimed):  # someone scribbled our ownership token: take it back
            self.restore_slot(self.workers[slot], in_use[slot])
        term = self.seg.terminate_array()
        i = term.find(1)
        while i != -1:
            rw = self.workers.get(i)
            if rw is not None and not rw.terminate_seen:
                self.handle_terminate(rw)
            i = term.find(1, i + 1)

    def accept_registration(self, slot: int, now: int) -> None:
        gen = self.seg.generation(slot)
        raw = self.seg.spec_bytes(slot)
        spec = shmem.decode_spec(raw, gen)
        if isinstance(spec, str) or gen <= self.slot_hwm[slot]:
            reason = spec if isinstance(spec, str) else "generation went backwards"
            first = self.suspect.setdefault(slot, now)
            if now - first < shmem.RECHECK_NS:
                return  # maybe a write still in flight: look again shortly
            del self.suspect[slot]
            self.seg.set_pid(slot, 0)
            self.seg.set_in_use(slot, 0)
            self.events.emit("slot_rejected", slot, gen, reason=reason)
            if not isinstance(spec, str):  # a valid spec under a stale generation counter:
                self.seg.set_next_generation(max(self.seg.next_generation(), self.gen_hwm + 1))
            self.wake_rejected(slot, gen, raw)
            return
        self.suspect.pop(slot, None)
        rw = RegisteredWorker(slot, gen, spec, raw, now)
        rw.seen_in_recovery = self.state == shmem.PM_CRASH_RECOVERY
        self.slot_hwm[slot] = gen
        if gen > self.gen_hwm:
            self.gen_hwm = gen
        self.workers[slot] = rw
        self.owned[slot] = 1
        self.seg.set_pid(slot, -1)
        if spec.notify_backend >= 0:
            target = (spec.notify_backend, spec.notify_pid, spec.notify_start)
            if self.backend_pidfd(*target) is not None:
                rw.notify = target
            else:
                self.events.emit("notify_dropped", slot, gen, reason="notify pid is not a live attached backend",
                                 notify_pid=spec.notify_pid)
        # request_seen is written later, with its time now: after the signal if the worker
        # starts in this pass (start_worker), else before the postmaster sleeps (run)
        self.unlogged[slot] = rw
        if self.state == shmem.PM_SHUTDOWN:
            self.forget_and_notify(rw, "postmaster shutdown")
        else:
            self.pending[slot] = rw

    def restore_slot(self, rw, token: int) -> None:
        """Another process changed the in_use token of a slot we own: write our copy back.

        A registrant may have taken the slot for free meanwhile and written its own
        registration over ours; that one cannot be served, so its waiter is woken (it
        then reads STOPPED: its generation is gone).
        """
        gen, raw = self.seg.generation(rw.slot), self.seg.spec_bytes(rw.slot)
        self.seg.write_spec(rw.slot, rw.raw)
        self.seg.set_generation(rw.slot, rw.generation)
        self.seg.set_pid(rw.slot, rw.pid)
        self.seg.set_in_use(rw.slot, 1)
        self.events.emit("slot_rejected", rw.slot, rw.generation,
                         reason=f"in_use of a live slot set to {token} by another process; restored")
        if gen != rw.generation and not isinstance(shmem.decode_spec(raw, gen), str):
            self.wake_rejected(rw.slot, gen, raw)

    def wake_rejected(self, slot: int, gen: int, raw: bytes) -> None:
        """Wake whoever waits on a rejected slot, if the bytes name a live attached backend.

        The target is validated like any other (table entry, pid and start time), so a
        scribbled one reaches nobody, and a real one gets at worst a spurious wakeup.
        """
        target = shmem.SLOT_SPEC.unpack_from(raw)[:3]
        fd = self.backend_pidfd(*target)
        if fd is None:
            return
        try:
            _signal.pidfd_send_signal(fd, SIGUSR1)
        except OSError:
            return
        self.events.emit("notified", slot, gen, target_pid=target[1], reason="rejected")

    def handle_terminate(self, rw) -> None:
        rw.terminate_seen = True
        self.events.emit("terminate_seen", rw.slot, rw.generation, worker_pid=rw.pid)
        if rw.pid > 0:
            if not rw.term_sent:
                _kill(rw.pid, _signal.SIGTERM)
                rw.term_sent = True
        else:
            self.forget_and_notify(rw, "terminated before start")

    def forget_and_notify(self, rw, reason: str, lines_first=None) -> None:
        """ForgetBackgroundWorker, then wake the registrant (so it can reuse the slot at once).

        Postmaster only.  `lines_first`: a callable giving the worker's events not yet
        written (a failed fork's, its request_seen line included); they are built and
        written with 'unregistered' and 'notified' after the signal, in one write (the
        pass's log_owed covers the gap).  Without it, 'unregistered' is written before the
        signal, as before.
        """
        if self.workers.get(rw.slot) is not rw:
            return
        if lines_first is None and self.unlogged.get(rw.slot) is rw:  # (forgotten in the pass that saw it)
            self.events.write(self.seen_line(rw))
        gen_there = self.seg.generation(rw.slot)  # ours, unless a registrant wrote over our slot
        raw_there = self.seg.spec_bytes(rw.slot) if gen_there != rw.generation else None
        if gen_there != rw.generation or self.seg.pid(rw.slot) != -1:
            # A worker that ran: pid 0 before the token, as ReportBackgroundWorkerExit writes
            # slot->pid before ForgetBackgroundWorker frees the slot -- a reader never sees a
            # free slot with a pid (and, between the two stores, reads STOPPED for a slot not
            # yet free: PostgreSQL's window too).
            self.seg.set_pid(rw.slot, 0)
        # One that never started keeps pid -1 (NOT_YET_STARTED) until the token goes, so its
        # registrant reads STOPPED only once the slot is free and can register again at once.
        # (A clean-clone CI run caught the window: a terminated, never-started worker read
        # STOPPED while its slot was still in use.)  bgwlab differs here: PostgreSQL's
        # BackgroundWorkerStateChange reports such a worker dead (ReportBackgroundWorkerPID,
        # pid 0) a pass before maybe_start_bgworkers frees its slot (README, Differences).
        self.seg.set_in_use(rw.slot, 0)
        t = time.monotonic_ns()
        del self.workers[rw.slot]
        self.owned[rw.slot] = 0
        self.pending.pop(rw.slot, None)
        fd = None
        if lines_first is not None and rw.notify is not None:
            fd = self.backend_pidfd(*rw.notify)  # cached since the request was accepted
        if fd is None:
            # logged before the signal: a registrant it wakes finds the worker gone in the log
            if lines_first is not None:
                self.events.write(lines_first())
            self.events.emit("unregistered", rw.slot, rw.generation, t_ns=t, reason=reason)
            self.notify(rw, reason)  # (or logs why it cannot)
        else:
            target_pid = rw.notify[1]
            t_sent = self.notify(rw, reason, log=False)  # the signal, then a yield
            ev = self.events
            ev.write(lines_first()
                     + ev.line("unregistered", rw.slot, rw.generation, t_ns=t, reason=reason)
                     + (ev.line("notified", rw.slot, rw.generation, t_ns=t_sent, target_pid=target_pid,
                                reason=reason) if t_sent else b""))
        if raw_there is not None:  # (its in_use token had been scribbled): freed with ours, wake it
            self.events.emit("slot_rejected", rw.slot, gen_there, reason="registered over a live slot")
            self.wake_rejected(rw.slot, gen_there, raw_there)
        elif self.state == shmem.PM_RUNNING:
            self.warm_request_path(rw)

    def warm_request_path(self, rw) -> None:
        """Write now, while nobody waits, the pages that the next request's path writes first.

        The last fork() write-protected every page of ours (a fork that failed did too),
        and the first write to each page since then is a page fault (~1-2 us here).  The
        loop's own pages are written again on every pass, but the code and classes that
        only a new request uses -- accept_registration's spec decoder, SpecRecord,
        RegisteredWorker -- would fault on the next registrant's time.  So after a worker
        is forgotten (an exit, a failed fork), once its registrant has been signalled, we
        decode its validated bytes again and build a RegisteredWorker that is thrown away:
        what accept_registration will do with the next request.  (Right after a start it
        would compete with the new worker and the woken registrant: measured, it did not pay.)
        """
        spec = shmem.decode_spec(rw.raw, rw.generation)
        if not isinstance(spec, str):
            RegisteredWorker(rw.slot, rw.generation, spec, rw.raw, rw.seen_ns)
        if rw.notify is not None:
            self.backend_pidfd(*rw.notify)  # (accept_registration validates the target so)

    # -- starting workers ----------------------------------------------------------------------
    def start_due_workers(self) -> None:
        if self.state != shmem.PM_RUNNING or not self.pending:
            return
        now = time.monotonic_ns()
        started = 0
        for rw in sorted(self.pending.values(), key=_start_at):
            if rw.start_at > now or started >= MAX_STARTS_PER_PASS:
                break
            if rw.terminate_seen:
                self.forget_and_notify(rw, "terminated before start")
                continue
            started += 1
            try:
                self.start_worker(rw)
            except Exception as e:  # a bug (start_worker handles a refused fork itself) ...
                self.start_raised(rw, e)
        if started >= MAX_STARTS_PER_PASS:
            os.write(self.wake_w, b"\0")  # more are due: loop again at once

    def start_raised(self, rw, e: Exception) -> None:
        """start_worker raised `e` (not a refused fork: a bug).  Postmaster only.  Logged; and
        a worker still waiting for its fork is treated as a failed start (forgotten and its
        registrant woken, or its restart scheduled), so that a due worker whose start raises
        again neither spins this loop nor leaves its registrant waiting."""
        import traceback

        traceback.print_exc()
        self.events.emit("postmaster_error", rw.slot, rw.generation, error=f"{type(e).__name__}: {e}")
        if rw.pid > 0 or self.pending.get(rw.slot) is not rw:
            return  # forked (its child runs) or already handled
        if rw.spec.restart_ms == NEVER:
            self.forget_and_notify(rw, f"start failed: {type(e).__name__}")
        else:  # (at least a second apart: a start that keeps raising must not spin either)
            rw.start_at = time.monotonic_ns() + max(rw.spec.restart_ms, 1000) * 1_000_000

    def start_worker(self, rw) -> None:
        """do_start_bgworker: fork, publish the pid, notify -- then the rest (logging never
        delays the signal).

        Between fork() and the signal the parent runs as little Python as it can: every
        page it writes there is a copy-on-write fault (the child shares them all), paid
        while the registrant waits.  So the notify target is validated before the fork
        (the pidfd reaches exactly that process whenever we send), and the bookkeeping
        comes after the signal.
        """
        rw.fork_attempts += 1
        spec = rw.spec
        fd = self.backend_pidfd(*rw.notify) if rw.notify is not None else None
        fork_c = self.fork_c  # None: the Python path below, the reference (bgwlab/forkpath.py)
        # seg.set_pid's one aligned store, its typed view and word found before fork(): the
        # call after it would touch a bound method, two frames and the layout object first.
        pids, pid_word = self.seg._i32, (self.seg.layout.slot_off(rw.slot) + shmem.PID_OFF) // 4
        t_attempt = time.monotonic_ns()
        try:
            if spec.fork_errno and (spec.fork_failures == 0 or rw.fork_attempts <= spec.fork_failures):
                raise InjectedOSError(spec.fork_errno, os.strerror(spec.fork_errno))
            # Block our signals across fork(): until the child has dropped our handlers and
            # wakeup fd (worker.child_main unblocks them), a signal to it would be swallowed
            # by our no-op handler and its byte written into *our* self-pipe (a SIGTERM to
            # a newborn worker would shut the cluster down).
            _signal.pthread_sigmask(_signal.SIG_BLOCK, FORK_BLOCKED_SIGNALS)
            try:
                if fork_c is None:
                    pid = os.fork()
                else:  # fork, publish, signal, yield -- the steps below, in C, before any Python
                    pid, t_forked, t_notified = fork_c(pids, pid_word, -1 if fd is None else fd, SIGUSR1)
            except BaseException:
                _signal.pthread_sigmask(_signal.SIG_UNBLOCK, FORK_BLOCKED_SIGNALS)
                raise
        except OSError as e:
            t_fail = time.monotonic_ns()
            ev = self.events

            # The failed start's events, each with the time it happened.  Called only inside
            # this except block: Python unbinds `e` when the block ends.
            def lines() -> bytes:
                return (self.seen_line(rw)
                        + ev.line("fork_attempted", rw.slot, rw.generation, t_ns=t_attempt,
                                  attempt=rw.fork_attempts)
                        + ev.line("fork_failed", rw.slot, rw.generation, t_ns=t_fail, errno=e.errno,
                                  error=os.strerror(e.errno or 0), injected=isinstance(e, InjectedOSError),
                                  attempt=rw.fork_attempts))
            if spec.restart_ms == NEVER:
                # Free the slot and signal first, then write these lines (as a start does):
                # a reader that learns STOPPED and asks the log (Cluster.events(),
                # WorkerHandle.history()) waits for this pass's log_owed to clear.
                self.forget_and_notify(rw, "fork failed", lines_first=lines)
            else:
                rw.start_at = t_fail + spec.restart_ms * 1_000_000  # pid stays -1: NOT_YET_STARTED
                ev.write(lines() + ev.line("restart_scheduled", rw.slot, rw.generation,
                                           after_s=spec.restart_ms / 1000))
            return
        if pid == 0:
            try:
                from .worker import child_main

                child_main(self, rw)  # never returns ...
            finally:
                os._exit(1)  # ... nor ever unwinds into the postmaster's loop in the child
        if fork_c is None:
            t_forked = time.monotonic_ns()
            pids[pid_word] = pid  # = seg.set_pid(rw.slot, pid), before the signal: the registrant reads it
            t_notified = 0
            if fd is not None:
                t_notified = time.monotonic_ns()
                try:
                    _signal.pidfd_send_signal(fd, SIGUSR1)
                except OSError:
                    t_notified = -1  # gone meanwhile: notify() below says so and forgets it
                # Give the CPU away once, as the new worker does (worker.child_main): the
                # registrant we just woke is often queued on our CPU, and what we still do here
                # (bookkeeping, the start's events: copy-on-write faults while the child shares
                # our pages, ~0.1-0.2 ms) would run first (A/B in benchmarks/README.md).
                os.sched_yield()
        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, FORK_BLOCKED_SIGNALS)
        rw.pid = pid
        self.by_pid[pid] = rw
        del self.pending[rw.slot]
        if t_notified < 0 or (fd is None and rw.notify is not None):
            t_notified = self.notify(rw, "forked", log=False)  # sends, or logs why it cannot
        ev = self.events  # the start's events, each with the time it happened, in one write
        lines = (self.seen_line(rw)
                 + ev.line("fork_attempted", rw.slot, rw.generation, t_ns=t_attempt, attempt=rw.fork_attempts)
                 + ev.line("forked", rw.slot, rw.generation, t_ns=t_forked, worker_pid=pid))
        if t_notified > 0 and rw.notify is not None:
            lines += ev.line("notified", rw.slot, rw.generation, t_ns=t_notified,
                             target_pid=rw.notify[1], reason="forked")
        ev.write(lines)

    def seen_line(self, rw) -> bytes:
        """`rw`'s request_seen line if it is not written yet (it is then written by the caller).

        accept_registration takes the time; the line waits so that a worker started in
        the same pass is signalled before anything is logged (start_worker writes it with
        the start's other events), and is written in any case before the postmaster
        sleeps (run) or lets the slot go (forget_and_notify, a failed fork).
        """
        if self.unlogged.get(rw.slot) is not rw:
            return b""
        del self.unlogged[rw.slot]
        return self.events.line("request_seen", rw.slot, rw.generation, t_ns=rw.seen_ns, name=rw.spec.name)

    # -- notification --------------------------------------------------------------------------
    def notify(self, rw, reason: str, log: bool = True) -> int:
        """SIGUSR1 to the worker's notify backend, if it is still attached and alive.

        Returns the time of sending (0 if nothing was sent).  pidfd_send_signal reaches
        exactly the process we validated: a recycled pid can never be signalled.
        """
        if rw.notify is None:
            return 0
        fd = self.backend_pidfd(*rw.notify)
        if fd is None:
            self.events.emit("notify_dropped", rw.slot, rw.generation, reason="backend detached or gone",
                             notify_pid=rw.notify[1])
            rw.notify = None
            return 0
        t = time.monotonic_ns()
        try:
            _signal.pidfd_send_signal(fd, SIGUSR1)
        except OSError:
            target, rw.notify = rw.notify, None  # forget_backend() may clear rw.notify too
            self.forget_backend(target[0])
            self.events.emit("notify_dropped", rw.slot, rw.generation, reason="backend exited",
                             notify_pid=target[1])
            return 0
        # Give the CPU away once, as start_worker does after a start's signal: the registrant
        # we woke may be queued on our CPU, behind our logging and the rest of this pass.
        # (A failed start and an exit; A/B: genuine fork failure 0.96-0.98x, death 0.95-1.01x.)
        os.sched_yield()
        if log:
            self.events.emit("notified", rw.slot, rw.generation, t_ns=t, target_pid=rw.notify[1], reason=reason)
        return t

    def backend_pidfd(self, idx: int, pid: int, start: int):
        """A pidfd for backend `idx` if the table still names (pid, start) there, else None."""
        if not 0 <= idx < self.max_backends or pid <= 0:
            return None
        in_use, tpid, tstart, _uid = self.seg.backend(idx)
        if not in_use or tpid != pid or tstart != start:
            return None
        cached = self.backends.get(idx)
        if cached is not None:
            if cached[0] == pid and cached[1] == start:
                return cached[2]
            self.forget_backend(idx)
        if process_uid(pid) != self.uid and self.uid != 0:
            return None  # never signal another user's process, whatever the table says
        fd = open_pidfd(pid, start)
        if fd is None:
            return None
        self.backends[idx] = (pid, start, fd)
        self.poller.register(fd, select.POLLIN)
        return fd

    def forget_backend(self, idx: int, why: str = "") -> None:
        b = self.backends.pop(idx, None)
        if b is None:
            return
        try:
            self.poller.unregister(b[2])
        except KeyError:
            pass
        os.close(b[2])
        for rw in self.workers.values():
            if rw.notify is not None and rw.notify[0] == idx:
                # pending notifications for a departed backend are forgotten -- and logged
                self.events.emit("notify_dropped", rw.slot, rw.generation,
                                 reason=f"backend {why or 'gone'}", notify_pid=rw.notify[1])
                rw.notify = None
        if why:
            self.events.emit("backend_gone" if why == "exited" else "backend_detached",
                             backend=idx, backend_pid=b[0])

    def forget_backend_fd(self, fd: int) -> None:
        for idx, b in list(self.backends.items()):
            if b[2] == fd:
                self.forget_backend(idx, "exited")

    def check_backends(self) -> None:
        """A backend attached or detached: drop cached targets the table no longer names."""
        for idx, (pid, start, _fd) in list(self.backends.items()):
            in_use, tpid, tstart, _uid = self.seg.backend(idx)
            if not in_use or tpid != pid or tstart != start:
                self.forget_backend(idx, "detached")

    def exit_cleanup(self) -> None:
        self.seg.set_state(shmem.PM_STOPPED)
        self.seg.close()


class InjectedOSError(OSError):
    """An OSError raised on purpose at the fork call site (a Fault.fork_failure)."""


def _slots_of(bits: int):
    """Slot numbers, ascending, of the set bits of a one-bit-per-byte mask."""
    while bits:
        low = bits & -bits
        yield (low.bit_length() - 1) >> 3
        bits ^= low


def _start_at(rw) -> int:
    return rw.start_at  # (a sort key made once, not a lambda per pass)


def _noop_handler(signum, frame):
    pass  # the C handler already wrote the signal number into our self-pipe


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)  # our own unreaped child: its pid cannot have been recycled
    except ProcessLookupError:
        pass


def load_fork_c(directory: str):
    """_forkpath.c's fork_publish_notify, from the module Cluster.start built in `directory`
    (bgwlab/forkpath.py).  Postmaster only, before the first fork.  The standard import
    machinery, so nothing but the extension joins the image; ImportError if it cannot."""
    sys.path.insert(0, directory)
    try:
        __import__("_bgwlab_forkpath")
    finally:
        sys.path.remove(directory)
    return sys.modules["_bgwlab_forkpath"].fork_publish_notify


def main(argv) -> int:
    directory = os.path.abspath(argv[1])
    ready_fd = int(argv[2]) if len(argv) > 2 else -1
    cfg = read_config(directory)
    if cfg["path"]:
        sys.path[:] = cfg["path"]
    pm = Postmaster(directory, cfg)
    pm.setup()
    if ready_fd >= 0:
        os.write(ready_fd, b"Rc" if pm.fork_c is not None else b"Rp")  # ready, and the fork path
        os.close(ready_fd)
    try:
        return pm.run()
    finally:
        pm.exit_cleanup()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
