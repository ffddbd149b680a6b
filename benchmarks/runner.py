"""A measuring process, driven by ``run.py`` one command at a time.

    python benchmarks/runner.py ROLE

Protocol: one JSON object per line on stdin (a command), one JSON object per line back
(``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``).  The protocol uses a private
copy of the original stdout; fd 1 is pointed at stderr so that nothing else (a child, a
warning) can corrupt it.

Roles:

* ``bgw``   -- a bgwlab registrant: attaches to one or more clusters and runs timed
  start/stop trials, failed starts and start/exit cycles;
* ``peers`` -- runs the peers of ``peers.py``.  A separate process, because the raw-fork
  peer needs SIGUSR1 and the signal wakeup fd, which bgwlab's dispatcher owns in a
  registrant;
* ``pg``    -- PostgreSQL's side (``pg_bench.py``): starts the servers and the probe at
  ``setup``, then one ``bench_trial()`` per command, timed inside the backend.

Both accept ``heap`` (hold ~N MB of Python objects from now on) and ``quit``.  This file
imports almost nothing at the top: ``multiprocessing`` spawn children re-import it.
"""

import json
import os
import sys
import time


def _ns() -> int:
    return time.monotonic_ns()


def _sleep_until(t_ns: int) -> None:
    left = t_ns - _ns()
    if left > 0:
        time.sleep(left / 1e9)


def unexpected(h, what: str) -> str:
    """`what`, with the evidence: the event log of the handle's worker and the postmaster's
    output (where a worker that failed before it could log leaves its traceback)."""
    try:
        log = (h.backend.directory / "postmaster.log").read_text(errors="replace")[-3000:]
    except OSError as e:
        log = f"(unreadable: {e})"
    return f"{what}\n{h.explain()}\npostmaster.log (tail):\n{log or '  (empty)'}"


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Registrant:
    """Role ``bgw``: one backend per cluster, and a FIFO pair that timed workers talk through."""

    def __init__(self):
        import tempfile

        self.backends = {}
        self.dir = tempfile.mkdtemp(prefix="bgwbench-")
        for name in ("stamp", "go"):
            os.mkfifo(os.path.join(self.dir, name), 0o600)
        # Read-write opens never block on a FIFO, and keep both ends alive for the worker.
        self.stamp_fd = os.open(os.path.join(self.dir, "stamp"), os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self.go_fd = os.open(os.path.join(self.dir, "go"), os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)

    def close(self) -> None:
        for b in self.backends.values():
            b.detach()
        self.backends.clear()
        os.close(self.stamp_fd)
        os.close(self.go_fd)
        for name in ("stamp", "go"):
            os.unlink(os.path.join(self.dir, name))
        os.rmdir(self.dir)

    def _drain(self, fd: int) -> None:
        try:
            while os.read(fd, 4096):
                pass
        except BlockingIOError:
            pass

    def _spec(self, kind: str):
        from bgwlab import NEVER_RESTART, Fault, WorkerSpec

        if kind == "timed":
            return WorkerSpec(name="bench-timed", entry="bench_entry:timed", main_arg=0,
                              extra=self.dir.encode(), restart=NEVER_RESTART, notify=True)
        if kind == "fail":
            return WorkerSpec(name="bench-fail", entry="bench_entry:noop", main_arg=0,
                              extra=b"", restart=NEVER_RESTART, notify=True,
                              fault=Fault.fork_failure())
        if kind == "genuine":  # on the cluster whose postmaster is in a pids cgroup at its limit
            return WorkerSpec(name="bench-genuine-fail", entry="bench_entry:noop",
                              main_arg=0, extra=b"", restart=NEVER_RESTART, notify=True)
        if kind == "crash":  # the entry point cannot be resolved: an early crash, not injected
            return WorkerSpec(name="bench-crash", entry="bench_entry:no_such_entry",
                              main_arg=0, extra=b"", restart=NEVER_RESTART, notify=True)
        return WorkerSpec(name="bench-cycle", entry="bench_entry:noop", main_arg=0,
                          extra=b"", restart=NEVER_RESTART, notify=True)

    # -- commands ---------------------------------------------------------------------------
    def attach(self, clusters: dict) -> dict:
        import bgwlab

        for name, (directory, log_events, *wait_slice) in clusters.items():
            # [directory, log_events] or [..., wait_slice_us]: None for a registrant whose
            # waits keep the default slice (the engine before it had one: run.py --before)
            opts = {"wait_slice_us": wait_slice[0]} if wait_slice else {}
            self.backends[name] = bgwlab.attach(directory, log_events=log_events, **opts)
        self.specs = {k: self._spec(k) for k in ("timed", "fail", "genuine", "crash", "cycle")}
        return {"pid": os.getpid()}

    def _backend(self, cluster: str):
        """The backend of `cluster`, with this thread's scheduler slice as that backend's
        registrant would have it in steady state: held short (wait_slice_us, from its
        first wait on) or, for a backend with wait_slice_us=None (the engine before it
        had one), given back by every other backend.  Outside the timed window."""
        from bgwlab import sched

        b = self.backends[cluster]
        if b.wait_slice_ns:
            b.hold_short_slice()
        else:
            for other in self.backends.values():
                sched.release_all(other)
        return b

    def timed(self, cluster: str) -> dict:
        """request -> pid known -> running known; go -> last instruction -> stop known."""
        from bgwlab import HandleStatus
        from peers import STAMP, _read_exact

        b = self._backend(cluster)
        spec = self.specs["timed"]
        self._drain(self.stamp_fd)
        self._drain(self.go_fd)
        t0 = _ns()
        h = b.register_dynamic_worker(spec)
        status, pid = h.wait_for_startup()
        t1 = _ns()
        if status is not HandleStatus.STARTED:
            raise RuntimeError(unexpected(h, f"timed worker did not start: {status}"))
        first = _read_exact(self.stamp_fd, 2 * STAMP)
        t_run = _ns()
        t_main = int.from_bytes(first[:STAMP], "little")
        cpu_main = int.from_bytes(first[STAMP:], "little")
        os.write(self.go_fd, b"g")
        status = h.wait_for_shutdown()
        t3 = _ns()
        if status is not HandleStatus.STOPPED:
            raise RuntimeError(unexpected(h, f"timed worker did not stop: {status}"))
        t_last = int.from_bytes(_read_exact(self.stamp_fd, STAMP), "little")
        return {"slot": h.slot, "generation": h.generation, "pid": pid, "t0": t0, "t1": t1,
                "t_main": t_main, "t_run": t_run, "t_last": t_last, "t3": t3,
                "cpu_main": cpu_main}

    def fail(self, cluster: str, genuine: bool = False) -> dict:
        """request -> registrant knows it failed: an injected fork failure (the fork path
        raises without calling fork()), or with `genuine` a plain request on a cluster whose
        postmaster's fork() fails for real (pids cgroup)."""
        from bgwlab import HandleStatus

        b = self._backend(cluster)
        t0 = _ns()
        h = b.register_dynamic_worker(self.specs["genuine" if genuine else "fail"])
        status, _ = h.wait_for_startup()
        t1 = _ns()
        if status is not HandleStatus.STOPPED:
            raise RuntimeError(unexpected(h, f"failed start was reported as {status}"))
        return {"slot": h.slot, "generation": h.generation, "t0": t0, "t1": t1}

    def crash(self, cluster: str) -> dict:
        """request of a worker whose entry point does not exist -> registrant knows STOPPED."""
        from bgwlab import HandleStatus

        b = self._backend(cluster)
        t0 = _ns()
        h = b.register_dynamic_worker(self.specs["crash"])
        status, _ = h.wait_for_startup()
        if status is HandleStatus.STARTED:
            status = h.wait_for_shutdown()
        t1 = _ns()
        if status is not HandleStatus.STOPPED:
            raise RuntimeError(unexpected(h, f"early crash was reported as {status}"))
        return {"slot": h.slot, "generation": h.generation, "t0": t0, "t1": t1}

    def cycles(self, cluster: str, t_begin: int, duration_s: float) -> dict:
        """As many register -> started -> stopped cycles as fit in [t_begin, t_begin + duration)."""
        b = self._backend(cluster)
        spec = self.specs["cycle"]
        _sleep_until(t_begin)
        t_end = t_begin + int(duration_s * 1e9)
        n = 0
        while _ns() < t_end:
            h = b.register_dynamic_worker(spec)
            h.wait_for_startup()
            h.wait_for_shutdown()
            n += 1
        return {"count": n, "t_done": _ns()}


class PeerRunner:
    """Role ``peers``."""

    def __init__(self):
        import multiprocessing

        import peers

        self.peers = peers
        multiprocessing.set_forkserver_preload(["peers"])
        self.warm = set()

    def close(self) -> None:
        pass

    def trial(self, name: str) -> dict:
        p = self.peers
        if name == "raw_fork":
            with p.RawFork() as rf:
                return rf.trial()
        if name.startswith("mp_") and name not in self.warm:
            p.mp_warm(name[3:])  # the forkserver starts once; spawn's first import is cold
            self.warm.add(name)
        return p.TRIALS[name]()

    def cycles(self, name: str, t_begin: int, duration_s: float) -> dict:
        p = self.peers
        _sleep_until(t_begin)
        t_end = t_begin + int(duration_s * 1e9)
        if name == "raw_fork":
            with p.RawFork() as rf:
                n = rf.cycles(t_end)
        else:
            n = p.mp_cycles(name[3:], t_end)
        return {"count": n, "t_done": _ns()}


class PgRunner:
    """Role ``pg``: PostgreSQL's side, one ``bench_trial()`` per command."""

    def __init__(self):
        self.pg = None

    def setup(self, genuine_fail: bool) -> dict:
        import pg_bench

        self.pg = pg_bench.PgBench(genuine_fail)
        return {"version": self.pg.version, "genuine_fail": self.pg.limit is not None}

    def trial(self, kind: str) -> dict:
        return self.pg.trial(kind)

    def close(self) -> None:
        if self.pg is not None:
            self.pg.close()


def main(argv) -> int:
    role = argv[1]
    proto_out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    obj = {"bgw": Registrant, "peers": PeerRunner, "pg": PgRunner}[role]()
    heap = None
    try:
        for line in sys.stdin:
            cmd = json.loads(line)
            op = cmd.pop("op")
            try:
                if op == "quit":
                    proto_out.write(json.dumps({"ok": True}) + "\n")
                    break
                if op == "heap":
                    before = rss_mb()
                    from peers import make_heap

                    heap = make_heap(cmd["mb"])
                    res = {"rss_before_mb": before, "rss_mb": rss_mb(), "objects": len(heap)}
                elif op == "ping":
                    res = {"pid": os.getpid(), "rss_mb": rss_mb()}
                else:
                    res = getattr(obj, op)(**cmd)
                res["ok"] = True
            except Exception as e:
                import traceback

                res = {"ok": False, "error": f"{type(e).__name__}: {e}",
                       "traceback": traceback.format_exc()}
            proto_out.write(json.dumps(res) + "\n")
    finally:
        obj.close()
        del heap
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
