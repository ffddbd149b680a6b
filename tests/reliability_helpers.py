"""Helpers for the reliability tests (issue 5): worker kinds, invariant checks, load.

Imported by ``tests/test_reliability_*.py``, and also run as a script for the helper
*processes* those tests start (never forks of the test process, whose threads make
``fork()`` unsafe)::

    python tests/reliability_helpers.py registrant DIR SECONDS SEED [MAX_OUTSTANDING]
    python tests/reliability_helpers.py lock_holder DIR STAGE     # lock | spec | in_use
    python tests/reliability_helpers.py one_worker DIR            # register, report, block
    python tests/reliability_helpers.py sigusr1_counter [attach DIR]
    python tests/reliability_helpers.py pid_reuse SCENARIO        # inside a new PID namespace
    python tests/reliability_helpers.py foreign DIR PM_PID WORKER_PID USER  # drops to USER
    python tests/reliability_helpers.py scale_registrant DIR N_ROUND_TRIPS N_FILL

A helper process talks to its test over stdin/stdout: one JSON object per line, and
it blocks on stdin where the test must decide when it goes on (or kills it).
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
PY = sys.executable
LOST_WAIT_S = 20.0  # a wait that has not returned after this long counts as lost


# --- worker kinds ----------------------------------------------------------------------------
def make_spec(kind: str, name: str | None = None, notify: bool = True):
    """A WorkerSpec of one of the kinds the stateful test and the soak mix."""
    from bgwlab import NEVER_RESTART, Fault, WorkerSpec

    n = name or kind
    table = {
        "forever": dict(entry="bgwlab.examples:sleep_forever"),
        "exit0": dict(entry="bgwlab.examples:noop"),
        "sleep": dict(entry="bgwlab.examples:sleep_ms", main_arg=20),
        "sleep5": dict(entry="bgwlab.examples:sleep_ms", main_arg=5),  # STARTED or, if over already, STOPPED
        "exit1": dict(entry="bgwlab.examples:fail"),
        "exit1_restart": dict(entry="bgwlab.examples:fail", restart=0.1),
        "crash": dict(entry="bgwlab.examples:exit_with", main_arg=3),
        "crash_signal": dict(entry="bgwlab.examples:noop",
                             fault=Fault.crash_before_main(signal=signal.SIGSEGV)),
        "early_exit1": dict(entry="bgwlab.examples:noop", fault=Fault.crash_before_main(exit_code=1)),
        "fork_fail": dict(entry="bgwlab.examples:noop", fault=Fault.fork_failure(errno=errno.EAGAIN)),
        "fork_fail_once": dict(entry="bgwlab.examples:sleep_ms", main_arg=10, restart=0.05,
                               fault=Fault.fork_failure(errno=errno.ENOMEM, times=1)),
        "slow_start": dict(entry="bgwlab.examples:sleep_ms", main_arg=10, fault=Fault.slow_start(0.05)),
        "pm_slow": dict(entry="bgwlab.examples:noop", fault=Fault.slow_start(0.05, where="postmaster")),
        "parked": dict(entry="bgwlab.examples:noop", fault=Fault.slow_start(3600, where="postmaster")),
        "bad_entry": dict(entry="bgwlab.no_such_module:main"),
    }
    kw = dict(table[kind])
    kw.setdefault("restart", NEVER_RESTART)
    return WorkerSpec(name=n, notify=notify, **kw)


# Kinds that end by themselves (no terminate needed) and never restart forever.
SELF_ENDING = {"exit0", "sleep", "sleep5", "exit1", "crash", "crash_signal", "early_exit1", "fork_fail",
               "fork_fail_once", "slow_start", "pm_slow", "bad_entry"}
CRASHES = {"crash", "crash_signal"}


# --- reading the segment ----------------------------------------------------------------------
class RawSegment:
    """The cluster's segment mapped by hand (``DIR/shmem``), to inspect and to scribble on."""

    def __init__(self, directory):
        from bgwlab import shmem

        self.shmem = shmem
        fd = os.open(os.path.join(directory, "shmem"), os.O_RDWR | os.O_CLOEXEC)
        try:
            self.mm = mmap.mmap(fd, 0, mmap.MAP_SHARED)
        finally:
            os.close(fd)
        mw, mb = shmem.HEADER.unpack_from(self.mm, 0)[2:4]
        self.layout = shmem.Layout(mw, mb)
        self.max_workers, self.max_backends = mw, mb

    def close(self):
        self.mm.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def in_use(self) -> bytes:
        lo = self.layout.in_use_off
        return self.mm[lo : lo + self.max_workers]

    def used_slots(self) -> list[int]:
        return [i for i, v in enumerate(self.in_use()) if v]

    def generation(self, i: int) -> int:
        return self.shmem.SLOT_DYN.unpack_from(self.mm, self.layout.slot_off(i))[0]

    def pid(self, i: int) -> int:
        return self.shmem.SLOT_DYN.unpack_from(self.mm, self.layout.slot_off(i))[1]

    def backends(self) -> list[tuple]:
        return [self.shmem.BACKEND.unpack_from(self.mm, self.layout.backend_off(i))
                for i in range(self.max_backends)]

    # -- scribbling ----------------------------------------------------------------------------
    def regions(self) -> dict[str, tuple[int, int]]:
        L = self.layout
        return {
            "header": (0, self.shmem.PAGE),
            "in_use": (L.in_use_off, L.in_use_off + self.max_workers),
            "terminate": (L.terminate_off, L.terminate_off + self.max_workers),
            "slots": (L.slots_off, L.slots_off + self.max_workers * self.shmem.SLOT_SIZE),
        }

    def scribble(self, rng: random.Random, lo: int, hi: int, max_len: int = 64) -> tuple[int, int]:
        """Write random bytes somewhere in [lo, hi).  Returns (offset, length)."""
        off = rng.randrange(lo, hi)
        n = rng.randint(1, max(1, min(max_len, hi - off)))
        style = rng.random()
        if style < 0.3:
            data = rng.randbytes(n)
        elif style < 0.5:
            data = bytes([rng.choice((0, 1, 0xFF))]) * n
        elif style < 0.7:  # a plausible little-endian integer
            n = min(8, hi - off)
            data = rng.choice((0, 1, 2**31 - 1, 2**32 - 1, 2**63 - 1, 2**64 - 1,
                               rng.randrange(2**64))).to_bytes(8, "little")[:n]
        else:
            data = bytes(rng.randrange(256) for _ in range(n))
        self.mm[off : off + len(data)] = data
        return off, len(data)


# --- processes ----------------------------------------------------------------------------------
def zombie_children(pid: int) -> set[int]:
    try:
        kids = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return set()
    out = set()
    for k in kids:
        try:
            if k.status() == psutil.STATUS_ZOMBIE:
                out.add(k.pid)
        except psutil.NoSuchProcess:
            pass
    return out


def assert_zombies_get_reaped(pm_pid: int, timeout: float = 5.0) -> None:
    """Every zombie child of the postmaster seen now is reaped within `timeout`."""
    from conftest import wait_until

    seen = zombie_children(pm_pid)
    if seen:
        wait_until(lambda: not (seen & zombie_children(pm_pid)), timeout,
                   what=f"postmaster to reap zombies {sorted(seen)}")


def leftover_workers(worker_pids) -> list[int]:
    """Workers still running after their postmaster is gone.

    An orphaned worker is re-parented to this process (the test process is a child
    subreaper, see conftest), so it is one of our descendants.  Looking only there --
    not at any process with that pid -- keeps pids recycled by unrelated processes on a
    busy machine (a long soak forks more workers than there are pids) out of the count.
    """
    worker_pids = set(worker_pids)
    left = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.pid in worker_pids and p.status() != psutil.STATUS_ZOMBIE:
                left.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    return left


def helper(*args, stderr=None, **kw) -> subprocess.Popen:
    """Start this file as a helper process (line-buffered JSON on stdout)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
    return subprocess.Popen([PY, str(HERE / "reliability_helpers.py"), *map(str, args)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                            text=True, env=env, **kw)


def read_msg(proc: subprocess.Popen, timeout: float = 30.0) -> dict:
    """The next JSON line from a helper, or AssertionError if none comes in time."""
    import select as _select

    if not _select.select([proc.stdout], [], [], timeout)[0]:
        raise AssertionError(f"helper {proc.pid} said nothing for {timeout}s")
    line = proc.stdout.readline()
    if not line:
        raise AssertionError(f"helper {proc.pid} exited (rc={proc.wait()}) without answering")
    return json.loads(line)


def _close_pipes(proc: subprocess.Popen) -> None:
    for f in (proc.stdin, proc.stdout):
        try:
            if f:
                f.close()
        except OSError:
            pass


def finish(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Close a helper's pipes and reap it (killing it if it does not exit in time)."""
    _close_pipes(proc)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def kill9(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()
    _close_pipes(proc)


class PostmasterStaller:
    """Stop and continue a process (SIGSTOP/SIGCONT) in a background thread; always SIGCONTs."""

    def __init__(self, pid: int, period_s: float = 0.25, stall_s: tuple = (0.02, 0.15), seed: int = 0):
        self.pid, self.period_s, self.stall_s = pid, period_s, stall_s
        self.rng = random.Random(seed)
        self.stalls = 0
        self.stalled_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="staller", daemon=True)

    def _run(self):
        while not self._stop.wait(self.rng.uniform(0.5, 1.5) * self.period_s):
            d = self.rng.uniform(*self.stall_s)
            try:
                os.kill(self.pid, signal.SIGSTOP)
            except ProcessLookupError:
                return
            try:
                self._stop.wait(d)  # paced load, not a synchronisation: the stall itself
            finally:
                self._cont()
            self.stalls += 1
            self.stalled_s += d

    def _cont(self):
        try:
            os.kill(self.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._cont()


def events_of(events, slot=None, generation=None, kind=None):
    return [e for e in events
            if (slot is None or e.slot == slot) and (generation is None or e.generation == generation)
            and (kind is None or e.kind == kind)]


def forked_and_exited(events) -> tuple[set[int], set[int]]:
    forked = {e.detail["worker_pid"] for e in events if e.kind == "forked"}
    exited = {e.detail["worker_pid"] for e in events if e.kind == "exited"}
    return forked, exited


# --- worker entry points (resolved in workers through the test process's sys.path) -------------
class _TerminatedWhileFlushing:
    """A stdout whose flush() is interrupted by SIGTERM (the terminate() of a registrant
    that arrives just as the worker is exiting)."""

    def __init__(self, real):
        self.real = real

    def write(self, s):
        return self.real.write(s)

    def flush(self):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the next bytecode
        self.real.flush()


def sigterm_while_exiting(arg: int = 0) -> None:
    """Return normally (exit 0) -- but SIGTERM arrives while the worker flushes on its way out."""
    sys.stdout = _TerminatedWhileFlushing(sys.stdout)


# --- helper process bodies -----------------------------------------------------------------------
def _say(**msg):
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


SOAK_KINDS = ["exit0"] * 4 + ["sleep"] * 4 + ["exit1"] * 2 + ["early_exit1", "fork_fail", "fork_fail_once",
                                                               "slow_start", "pm_slow", "bad_entry",
                                                               "exit1_restart", "forever"]


def registrant_main(directory: str, seconds: float, seed: int, max_outstanding: int = 3,
                    crash_every: int = 0, self_ending_only: int = 0) -> None:
    """Hammer one cluster: register a few mixed workers, wait for each, terminate some.

    Reports its counters as a JSON line after every round (so a registrant killed -9
    still leaves figures), and a final line with ``"done": true``.
    """
    import bgwlab
    from bgwlab import HandleStatus, OutOfWorkerSlots, PostmasterDied

    rng = random.Random(seed)
    b = bgwlab.attach(directory)
    c = dict(ops=0, registered=0, out_of_slots=0, lost_waits=0, started=0, stopped=0,
             postmaster_died=0, terminated=0, wrong_pid=0, rounds=0)
    deadline = time.monotonic() + seconds
    _say(ready=True, pid=os.getpid(), **c)
    rounds = 0
    while time.monotonic() < deadline:
        rounds += 1
        handles = []
        for _ in range(rng.randint(1, max_outstanding)):
            kind = rng.choice(SOAK_KINDS)
            if self_ending_only and kind not in SELF_ENDING:
                kind = "sleep"
            if crash_every and rng.randrange(crash_every) == 0:
                kind = "crash"
            try:
                h = b.register_dynamic_worker(make_spec(kind))
            except OutOfWorkerSlots:
                c["out_of_slots"] += 1
                c["ops"] += 1
                break
            except PostmasterDied as e:
                c["postmaster_died"] += 1
                _say(pm_died_event={"where": "register", "error": str(e)})
                deadline = 0
                break
            c["registered"] += 1
            c["ops"] += 1
            handles.append((kind, h))
        for kind, h in handles:
            s, pid = h.wait_for_startup(timeout=LOST_WAIT_S)
            c["ops"] += 1
            if s is HandleStatus.NOT_YET_STARTED:
                c["lost_waits"] += 1
                _say(lost={"wait": "startup", "kind": kind, "slot": h.slot, "generation": h.generation})
            elif s is HandleStatus.STARTED:
                c["started"] += 1
                if not pid or pid <= 0:
                    c["wrong_pid"] += 1
            elif s is HandleStatus.POSTMASTER_DIED:
                c["postmaster_died"] += 1
                _say(pm_died_event={"where": "startup", "kind": kind})
            if kind not in SELF_ENDING or rng.random() < 0.3:
                h.terminate()
                c["terminated"] += 1
                c["ops"] += 1
        for kind, h in handles:
            s = h.wait_for_shutdown(timeout=LOST_WAIT_S)
            c["ops"] += 1
            if s is HandleStatus.STOPPED:
                c["stopped"] += 1
            elif s is HandleStatus.POSTMASTER_DIED:
                c["postmaster_died"] += 1
                _say(pm_died_event={"where": "shutdown", "kind": kind})
            else:
                c["lost_waits"] += 1
                _say(lost={"wait": "shutdown", "kind": kind, "slot": h.slot, "generation": h.generation,
                           "status": s.value})
        c["rounds"] = rounds
        _say(**c)
    b.detach()
    _say(done=True, **c)


def lock_holder_main(directory: str, stage: str) -> None:
    """Take the registration lock (as a registrant would) and die holding it.

    stage ``lock``: just hold it; ``spec``: also claim a free slot and write half of a
    registration (spec and next generation, not in_use); ``in_use``: complete every
    write including in_use = 1, but never signal the postmaster.
    """
    import fcntl

    import bgwlab
    from bgwlab import shmem

    b = bgwlab.attach(directory)
    seg = b.seg
    fd = os.open(os.path.join(directory, "registration.lock"), os.O_RDWR | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_EX)
    info = {"locked": True, "pid": os.getpid(), "backend": b.index}
    if stage in ("spec", "in_use"):
        slot = seg.in_use_array().find(0)
        if slot >= 0:
            gen = seg.next_generation()
            seg.set_next_generation(gen + 1)
            seg.write_spec(slot, shmem.encode_spec(make_spec("exit0"), gen, (b.index, os.getpid(), b._start)))
            if stage == "in_use":
                seg.set_generation(slot, gen)
                seg.set_pid(slot, -1)
                seg.set_terminate(slot, 0)
                seg.set_in_use(slot, 1)
            info.update(slot=slot, generation=gen)
    _say(**info)
    sys.stdin.read()  # hold the lock until killed


def one_worker_main(directory: str, kind: str = "forever", wait: str = "1") -> None:
    """Attach, register one worker (notify=True), wait for its start, report, block.

    wait ``0``: do not wait; ``1``: wait (bounded) before reporting; ``2``: report, then
    wait with no timeout and report the answer."""
    import bgwlab

    b = bgwlab.attach(directory)
    h = b.register_dynamic_worker(make_spec(kind))
    info = {"pid": os.getpid(), "slot": h.slot, "generation": h.generation, "backend": b.index}
    if wait == "2":  # report the registration first, then wait (no timeout) and report again
        _say(**info)
        s, pid = h.wait_for_startup()
        _say(status=s.value, worker_pid=pid)
        sys.stdin.readline()
        return
    if wait == "1":
        s, pid = h.wait_for_startup(timeout=LOST_WAIT_S)
        info.update(status=s.value, worker_pid=pid)
    _say(**info)
    cmd = sys.stdin.readline().strip()
    if cmd == "detach":
        b.detach()
        _say(detached=True)
        sys.stdin.readline()


def sigusr1_counter_main(mode: str = "plain", directory: str = "") -> None:
    """An unrelated process that counts every SIGUSR1 it gets; prints the count at EOF.

    mode ``attach``: it also attaches to the cluster (taking the backend-table entry of
    the dead registrant whose pid it reuses) but registers nothing, so any SIGUSR1 is
    one meant for somebody else.
    """
    count = [0]
    backend = None
    if mode == "attach":
        import bgwlab
        from bgwlab.latch import dispatcher

        backend = bgwlab.attach(directory)
        counted = lambda: dispatcher.handler_calls  # noqa: E731  (every SIGUSR1 runs it)
    else:
        signal.signal(signal.SIGUSR1, lambda s, f: count.__setitem__(0, count[0] + 1))
        counted = lambda: count[0]  # noqa: E731
    _say(ready=True, pid=os.getpid(), backend=backend.index if backend else -1)
    while sys.stdin.readline():  # each line: report the count so far
        _say(sigusr1=counted())
    _say(sigusr1=counted(), final=True)


def foreign_main(directory: str, pm_pid: int, worker_pid: int, user: str) -> None:
    """Become another user, then try to join, register and signal; report what happened.

    Started as root, it imports what it needs first (the interpreter may live where
    the other user cannot read), then drops privileges for good: groups, gid, uid.
    """
    import pwd

    import bgwlab
    from bgwlab import backend, cluster, errors, eventlog, forkpath, latch, procinfo, shmem, spec  # noqa: F401

    pw = pwd.getpwnam(user)
    os.setgroups([])
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)
    out = {"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups()}

    def attempt(name, fn):
        try:
            fn()
            out[name] = {"ok": True}
        except BaseException as e:  # noqa: BLE001 -- we report every outcome
            out[name] = {"ok": False, "type": type(e).__name__, "message": str(e),
                         "errno": getattr(e, "errno", None)}

    attempt("attach", lambda: bgwlab.attach(directory))
    attempt("backend", lambda: bgwlab.Backend(directory))
    attempt("open_segment", lambda: os.close(os.open(os.path.join(directory, "shmem"), os.O_RDONLY)))
    attempt("open_lock", lambda: os.close(os.open(os.path.join(directory, "registration.lock"), os.O_RDONLY)))
    attempt("read_events", lambda: open(os.path.join(directory, "events.jsonl")).read())
    attempt("list_directory", lambda: os.listdir(directory))
    attempt("signal_postmaster", lambda: os.kill(pm_pid, signal.SIGUSR1))
    attempt("terminate_postmaster", lambda: os.kill(pm_pid, signal.SIGTERM))
    attempt("signal_worker", lambda: os.kill(worker_pid, signal.SIGTERM))

    def pidfd_signal():
        fd = os.pidfd_open(pm_pid)
        try:
            signal.pidfd_send_signal(fd, signal.SIGUSR1)
        finally:
            os.close(fd)

    attempt("pidfd_signal_postmaster", pidfd_signal)

    def own_cluster_there():
        from bgwlab import Cluster

        Cluster.start(max_workers=1, directory=directory).stop()

    attempt("start_cluster_in_directory", own_cluster_there)
    _say(**out)


def scale_registrant_main(directory: str, round_trips: int, fill: int) -> None:
    """One of many concurrent registrants: timed round trips, then fill slots on command."""
    import bgwlab
    from bgwlab import HandleStatus, OutOfWorkerSlots

    b = bgwlab.attach(directory)
    _say(ready=True)
    sys.stdin.readline()  # go
    reg_ns, wait_ns, errors, full = [], [], 0, 0
    for _ in range(round_trips):
        spec = make_spec("sleep5")
        t0 = time.perf_counter_ns()
        try:
            h = b.register_dynamic_worker(spec)
        except OutOfWorkerSlots:
            full += 1
            continue
        t1 = time.perf_counter_ns()
        s, pid = h.wait_for_startup(timeout=LOST_WAIT_S)
        t2 = time.perf_counter_ns()
        if s is HandleStatus.NOT_YET_STARTED or (s is HandleStatus.STARTED and not pid):
            errors += 1  # (STOPPED is a fine answer: a 5 ms worker may be over already)
        if h.wait_for_shutdown(timeout=LOST_WAIT_S) is not HandleStatus.STOPPED:
            errors += 1
        reg_ns.append(t1 - t0)
        wait_ns.append(t2 - t1)
    _say(reg_ns=reg_ns, wait_ns=wait_ns, errors=errors, full=full)
    sys.stdin.readline()  # fill
    held = []
    for _ in range(fill):
        try:
            held.append(b.register_dynamic_worker(make_spec("parked")))
        except OutOfWorkerSlots:
            full += 1
    _say(filled=[(h.slot, h.generation) for h in held], full=full)
    sys.stdin.readline()  # release
    for h in held:
        h.terminate()
    stopped = sum(h.wait_for_shutdown(timeout=LOST_WAIT_S) is HandleStatus.STOPPED for h in held)
    _say(released=stopped)
    b.detach()


def pid_reuse_main(scenario: str) -> None:
    """Inside a fresh PID namespace (we are its pid 1): a registrant R that detached or
    died has its pid taken over by an unrelated process P.  R's worker then changes
    state; P must not receive a SIGUSR1, and the postmaster must log notify_dropped.

    Scenarios: ``detached`` (R detaches cleanly), ``died`` (R is killed -9 after its
    worker started), ``died_stalled`` (R registers while the postmaster is stopped, is
    killed -9 before the postmaster sees the request); each with a P that only counts
    SIGUSR1 (``_plain``) or that also attaches to the cluster in R's old backend entry
    (``_attach``).
    """
    from bgwlab import Cluster
    from bgwlab.procinfo import start_ticks

    base, _, pmode = scenario.rpartition("_")
    result = {"scenario": scenario}
    with Cluster.start(max_workers=4) as cluster:
        me = cluster.connect()  # to terminate R's worker through a handle of our own
        result["postmaster_pid"] = cluster.postmaster_pid
        if base == "died_stalled":
            os.kill(cluster.postmaster_pid, signal.SIGSTOP)
        r = helper("one_worker", cluster.directory, "forever", "0" if base == "died_stalled" else "1")
        info = read_msg(r)
        result["r"] = info
        r_pid, r_start = info["pid"], start_ticks(info["pid"])
        if base == "detached":
            r.stdin.write("detach\n")
            r.stdin.flush()
            read_msg(r)
            finish(r)
        else:
            kill9(r)
        # Force the pid to be reused: nothing else forks in this namespace.
        p = None
        for attempt in range(20):
            with open("/proc/sys/kernel/ns_last_pid", "w") as f:
                f.write(str(r_pid - 1))
            p = helper("sigusr1_counter", pmode, cluster.directory)
            if p.pid == r_pid:
                break
            kill9(p)
            p = None
        result["pid_reused"] = p is not None
        if p is None:
            _say(**result)
            return
        pinfo = read_msg(p)
        result["p"] = pinfo
        result["p_start_differs"] = start_ticks(p.pid) != r_start
        if base == "died_stalled":
            os.kill(cluster.postmaster_pid, signal.SIGCONT)
        h = me.handle(info["slot"], info["generation"])
        _wait_for(lambda: h.get_pid()[0].value == "started", 10)
        result["worker_pid"] = h.get_pid()[1]
        h.terminate()
        _wait_for(lambda: h.get_pid()[0].value == "stopped", 10)
        # Barrier: once the postmaster has handled a later request, it has finished
        # every notification for R's worker (it is single-threaded).
        probe = me.register_dynamic_worker(make_spec("exit0"))
        probe.wait_for_shutdown(timeout=LOST_WAIT_S)
        p.stdin.write("count\n")
        p.stdin.flush()
        result["p_sigusr1"] = read_msg(p)["sigusr1"]
        result["p_alive"] = p.poll() is None
        finish(p)
        evs = cluster.events()
        slot, gen = info["slot"], info["generation"]
        result["notify_dropped"] = [e.detail for e in evs if e.kind == "notify_dropped"
                                    and (e.slot, e.generation) == (slot, gen)]
        result["notified_targets"] = [e.detail.get("target_pid") for e in evs if e.kind == "notified"
                                      and (e.slot, e.generation) == (slot, gen)]
        result["exited"] = [e.detail for e in evs if e.kind == "exited" and (e.slot, e.generation) == (slot, gen)]
        me.detach()
    result["events"] = len(cluster.events())
    _say(**result)


def _wait_for(pred, timeout):
    """conftest.wait_until for helper processes (which do not import pytest)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.002)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "registrant":
        registrant_main(args[0], float(args[1]), int(args[2]), *(int(a) for a in args[3:]))
    elif cmd == "lock_holder":
        lock_holder_main(args[0], args[1])
    elif cmd == "one_worker":
        one_worker_main(*args)
    elif cmd == "sigusr1_counter":
        sigusr1_counter_main(*args)
    elif cmd == "foreign":
        foreign_main(args[0], int(args[1]), int(args[2]), args[3])
    elif cmd == "scale_registrant":
        scale_registrant_main(args[0], int(args[1]), int(args[2]))
    elif cmd == "pid_reuse":
        pid_reuse_main(args[0])
    else:
        raise SystemExit(f"unknown helper command {cmd}")
