"""The peers bgwlab is measured against, one trial at a time.

Each ``*_trial`` starts one child and returns a dict of nanosecond timestamps:

* ``t0``    -- just before the start call;
* ``t_pid`` -- the start call returned: the caller knows the child's pid
  (``os.fork()`` / ``Process.start()`` / ``Popen()`` returned in the parent);
* ``t1``    -- the caller knows the child's code runs (the child told it);
* ``t_last``-- the child's last instruction (``time.monotonic_ns()`` it sent back);
* ``t3``    -- the caller knows the child has stopped.

So "start" is ``t_pid - t0`` (request -> pid known), "running" is ``t1 - t0`` (request
-> the child's code ran, as the caller learns) and "death" is ``t3 - t_last``: the same
three pairs of instants the bgwlab runner times for a worker.  Each ``*_cycles`` function runs bare start/exit cycles
for a fixed time and returns how many completed.

The peers:

* ``raw_fork``   -- ``os.fork()``; the child ``os.kill(parent, SIGUSR1)``; the parent
  sleeps in ``poll()`` on its ``signal.set_wakeup_fd`` pipe; death is the SIGCHLD byte
  in the same pipe.  The floor for any Python supervisor.
* ``mp_fork`` / ``mp_forkserver`` / ``mp_spawn`` -- ``multiprocessing.Process.start()``;
  the child sends one byte on a ``Pipe``; death is ``Process.join()`` returning.
* ``popen``      -- ``subprocess.Popen([sys.executable, "-c", ...])``; the child writes one
  byte to its stdout; death is ``Popen.wait()`` returning.

This module is imported by ``multiprocessing`` children (spawn, forkserver): it stays lean.
"""

import os
import select
import signal
import sys
import time

STAMP = 8
TIMEOUT_MS = 30_000


def _ns() -> int:
    return time.monotonic_ns()


def _read_exact(fd: int, n: int, timeout_ms: int = TIMEOUT_MS) -> bytes:
    """Read `n` bytes from a (blocking or not) fd, waiting at most `timeout_ms` per chunk."""
    buf = b""
    p = select.poll()
    p.register(fd, select.POLLIN)
    while len(buf) < n:
        if not p.poll(timeout_ms):
            raise TimeoutError(f"no data on fd {fd} after {timeout_ms} ms")
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            raise EOFError(f"fd {fd} closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def make_heap(mb: int) -> list:
    """A heap of ~`mb` MB of small Python objects (what a notebook's caller holds)."""
    per_object = 140  # a 99-byte bytes object (132 B) + its list slot (8 B)
    return [b"%099d" % i for i in range(mb * 2**20 // per_object)]


# -- raw fork + signal --------------------------------------------------------------------------
def _noop_handler(signum, frame):
    pass


class RawFork:
    """The floor: fork, and a signal back through the signal wakeup fd.  A context manager:

    it owns SIGUSR1, SIGCHLD and the process's wakeup fd while it is entered.
    """

    def __enter__(self):
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.old = {s: signal.signal(s, _noop_handler) for s in (signal.SIGUSR1, signal.SIGCHLD)}
        self.old_fd = signal.set_wakeup_fd(self.w, warn_on_full_buffer=False)
        self.poller = select.poll()
        self.poller.register(self.r, select.POLLIN)
        return self

    def __exit__(self, *exc):
        signal.set_wakeup_fd(self.old_fd)
        for s, h in self.old.items():
            signal.signal(s, h)
        os.close(self.r)
        os.close(self.w)

    def _drain(self) -> bytes:
        data = b""
        try:
            while True:
                chunk = os.read(self.r, 4096)
                if not chunk:
                    break
                data += chunk
        except BlockingIOError:
            pass
        return data

    def _wait_for(self, signum: int) -> None:
        deadline = _ns() + TIMEOUT_MS * 1_000_000
        while True:
            if signum in self._drain():
                return
            left = (deadline - _ns()) // 1_000_000
            if left <= 0:
                raise TimeoutError(f"signal {signum} did not arrive")
            self.poller.poll(left)

    def trial(self) -> dict:
        go_r, go_w = os.pipe()
        st_r, st_w = os.pipe()
        parent = os.getpid()
        self._drain()
        t0 = _ns()
        pid = os.fork()
        if pid == 0:  # child
            try:
                os.kill(parent, signal.SIGUSR1)
                os.read(go_r, 1)
                t = _ns()
                os.write(st_w, t.to_bytes(STAMP, "little"))
            finally:
                os._exit(0)
        t_pid = _ns()
        try:
            self._wait_for(signal.SIGUSR1)
            t1 = _ns()
            os.write(go_w, b"g")
            self._wait_for(signal.SIGCHLD)
            t3 = _ns()
            os.waitpid(pid, 0)
            t_last = int.from_bytes(_read_exact(st_r, STAMP), "little")
        finally:
            for fd in (go_r, go_w, st_r, st_w):
                os.close(fd)
        return {"t0": t0, "t_pid": t_pid, "t1": t1, "t_last": t_last, "t3": t3}

    def cycles(self, t_end: int) -> int:
        """fork; child signals 'running' and exits; parent sees both."""
        parent = os.getpid()
        n = 0
        while _ns() < t_end:
            self._drain()
            pid = os.fork()
            if pid == 0:
                try:
                    os.kill(parent, signal.SIGUSR1)
                finally:
                    os._exit(0)
            self._wait_for(signal.SIGUSR1)
            os.waitpid(pid, 0)  # SIGCHLD is in flight or came already
            n += 1
        return n


# -- multiprocessing ------------------------------------------------------------------------------
def mp_child(running, go) -> None:
    """Target of the multiprocessing peers: say 'running', wait for 'go', stamp, return."""
    running.send_bytes(b"r")
    go.recv_bytes()
    running.send_bytes(_ns().to_bytes(STAMP, "little"))


def mp_noop() -> None:
    """Target for the multiprocessing start/exit cycles."""


def _context(method: str):
    import multiprocessing

    return multiprocessing.get_context(method)


def mp_trial(method: str) -> dict:
    ctx = _context(method)
    run_r, run_w = ctx.Pipe(duplex=False)
    go_r, go_w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=mp_child, args=(run_w, go_r), daemon=True)
    try:
        t0 = _ns()
        p.start()
        t_pid = _ns()
        if not run_r.poll(TIMEOUT_MS / 1000):
            raise TimeoutError(f"multiprocessing {method} child did not report")
        run_r.recv_bytes()
        t1 = _ns()
        go_w.send_bytes(b"g")
        p.join()
        t3 = _ns()
        if not run_r.poll(TIMEOUT_MS / 1000):
            raise TimeoutError(f"multiprocessing {method} child sent no stamp")
        t_last = int.from_bytes(run_r.recv_bytes(), "little")
    finally:
        if p.is_alive():
            p.kill()
            p.join()
        p.close()
        for c in (run_r, run_w, go_r, go_w):
            c.close()
    return {"t0": t0, "t_pid": t_pid, "t1": t1, "t_last": t_last, "t3": t3}


def mp_cycles(method: str, t_end: int) -> int:
    ctx = _context(method)
    n = 0
    while _ns() < t_end:
        p = ctx.Process(target=mp_noop, daemon=True)
        p.start()
        p.join()
        p.close()
        n += 1
    return n


def mp_warm(method: str) -> None:
    """Start the forkserver (or import what spawn needs) outside the measurements."""
    mp_trial(method)


# -- subprocess ------------------------------------------------------------------------------------
POPEN_CHILD = ("import os,time;os.write(1,b'r');os.read(0,1);"
               "os.write(1,time.monotonic_ns().to_bytes(8,'little'))")


def popen_trial() -> dict:
    import subprocess

    t0 = _ns()
    p = subprocess.Popen([sys.executable, "-c", POPEN_CHILD], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE)
    t_pid = _ns()
    try:
        _read_exact(p.stdout.fileno(), 1)
        t1 = _ns()
        os.write(p.stdin.fileno(), b"g")
        p.wait()
        t3 = _ns()
        t_last = int.from_bytes(_read_exact(p.stdout.fileno(), STAMP), "little")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdin.close()
        p.stdout.close()
    return {"t0": t0, "t_pid": t_pid, "t1": t1, "t_last": t_last, "t3": t3}


TRIALS = {
    "mp_fork": lambda: mp_trial("fork"),
    "mp_forkserver": lambda: mp_trial("forkserver"),
    "mp_spawn": lambda: mp_trial("spawn"),
    "popen": popen_trial,
}
