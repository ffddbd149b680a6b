"""Clean shutdown under load (issue 5, item 7).

``stop()`` -- or the postmaster's death -- while hundreds of waits are pending (threads
and asyncio tasks, on running, unstarted, retrying and restart-pending workers) and
other threads keep registering: every waiter returns with STOPPED or POSTMASTER_DIED,
every child is reaped, the segment is removed.
"""

from __future__ import annotations

import asyncio
import errno
import signal
import threading
import time

import pytest

from bgwlab import Cluster, Fault, HandleStatus, PostmasterDied, WorkerSpec
from bgwlab.errors import BgwError
from bgwlab.latch import dispatcher

from conftest import wait_until
from reliability_helpers import forked_and_exited, leftover_workers, make_spec

STARTED, STOPPED, DIED = HandleStatus.STARTED, HandleStatus.STOPPED, HandleStatus.POSTMASTER_DIED
N_THREAD_WAITS = 200
N_ASYNC_WAITS = 200


def _populate(b):
    """64 slots in every state a worker can wait in."""
    hs = {"running": [b.register_dynamic_worker(make_spec("forever")) for _ in range(16)],
          "parked": [b.register_dynamic_worker(make_spec("parked")) for _ in range(16)],
          "retrying": [b.register_dynamic_worker(WorkerSpec(
              name="retry", entry="bgwlab.examples:noop", restart=3600,
              fault=Fault.fork_failure(errno=errno.EAGAIN))) for _ in range(16)],
          "restart_pending": [b.register_dynamic_worker(WorkerSpec(
              name="again", entry="bgwlab.examples:fail", restart=3600)) for _ in range(16)]}
    for h in hs["running"]:
        assert h.wait_for_startup(timeout=20)[0] is STARTED
    for h in hs["restart_pending"]:  # ran once, failed, waits an hour to restart
        assert h.wait_for_shutdown(timeout=20) is STOPPED
    return hs


class Waits:
    """Hundreds of blocked waits: threads and asyncio tasks, no timeouts."""

    def __init__(self, hs):
        self.results = []
        self.lock = threading.Lock()
        pending = hs["parked"] + hs["retrying"]  # NOT_YET_STARTED: startup waits block
        everyone = hs["running"] + pending  # not STOPPED: shutdown waits block
        # (restart_pending workers read STOPPED already: they are there to be shut down)
        self.jobs = []
        for i in range(N_THREAD_WAITS):
            h = pending[i % len(pending)] if i % 2 else everyone[i % len(everyone)]
            self.jobs.append(("startup" if i % 2 else "shutdown", h))
        self.threads = [threading.Thread(target=self._wait, args=job, daemon=True) for job in self.jobs]
        self.async_jobs = [("startup" if i % 2 else "shutdown",
                            pending[i % len(pending)] if i % 2 else everyone[i % len(everyone)])
                           for i in range(N_ASYNC_WAITS)]
        self.async_results = []
        self.async_error = None
        self.loop_thread = threading.Thread(target=self._run_loop, daemon=True)

    def _wait(self, what, h):
        r = h.wait_for_startup()[0] if what == "startup" else h.wait_for_shutdown()
        with self.lock:
            self.results.append((what, r))

    def _run_loop(self):
        async def one(what, h):
            if what == "startup":
                return what, (await h.wait_for_startup_async())[0]
            return what, await h.wait_for_shutdown_async()

        async def main():
            return await asyncio.gather(*(one(w, h) for w, h in self.async_jobs))

        try:
            self.async_results = asyncio.run(main())
        except BaseException as e:  # noqa: BLE001 -- reported by join()
            self.async_error = e

    def start(self):
        base = len(dispatcher._latches)
        for t in self.threads:
            t.start()
        self.loop_thread.start()
        # Observable: every wait has registered its latch and is blocked.
        wait_until(lambda: len(dispatcher._latches) >= base + N_THREAD_WAITS + N_ASYNC_WAITS, timeout=60,
                   what="every waiter to block")
        assert not self.results and not self.async_results

    def join(self, timeout):
        deadline = time.monotonic() + timeout
        for t in self.threads + [self.loop_thread]:
            t.join(max(0.0, deadline - time.monotonic()))
        stuck = [j for j, t in zip(self.jobs, self.threads) if t.is_alive()]
        assert not stuck and not self.loop_thread.is_alive(), f"{len(stuck)} waits never returned"
        if self.async_error is not None:
            raise AssertionError(f"an async wait raised {self.async_error!r}") from self.async_error
        return self.results + list(self.async_results)


class Registrants:
    """Threads that keep registering and waiting while the cluster goes down."""

    def __init__(self, b, n=4):
        self.b = b
        self.outcomes = []
        self.errors = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]

    def _run(self):
        while True:
            try:
                h = self.b.register_dynamic_worker(make_spec("sleep"))
            except PostmasterDied:
                self.outcomes.append("refused: postmaster died")
                return
            except BgwError as e:  # e.g. the backend detached by stop(): a clear error, not a hang
                self.outcomes.append(f"refused: {type(e).__name__}")
                return
            except Exception as e:  # noqa: BLE001
                self.errors.append(repr(e))
                return
            s = h.wait_for_shutdown()
            self.outcomes.append(s)
            if s is DIED:
                return

    def start(self):
        for t in self.threads:
            t.start()
        wait_until(lambda: len(self.outcomes) >= 8, timeout=30, what="registrants to get going")

    def join(self, timeout):
        for t in self.threads:
            t.join(timeout)
        assert not any(t.is_alive() for t in self.threads), "a registrant thread hung"
        assert not self.errors, self.errors


@pytest.mark.parametrize("how", ["stop", "postmaster_killed"])
def test_shutdown_with_hundreds_of_pending_waits(how, capsys):
    cluster = Cluster.start(max_workers=72, max_backends=8)
    try:
        b = cluster.connect()
        hs = _populate(b)
        waits = Waits(hs)
        waits.start()
        regs = Registrants(b)
        regs.start()
        t0 = time.monotonic()
        if how == "stop":
            cluster.stop()
        else:
            cluster.kill_postmaster(signal.SIGKILL)
        results = waits.join(30)
        t_all = time.monotonic() - t0
        regs.join(30)
        assert len(results) == N_THREAD_WAITS + N_ASYNC_WAITS
        allowed = {STOPPED, DIED}
        assert {r for _, r in results} <= allowed, {r for _, r in results}
        assert all(o in allowed or str(o).startswith("refused") for o in regs.outcomes)
        if how == "postmaster_killed":
            assert any(r is DIED for _, r in results)
            # Orphaned workers notice the death by themselves (alive pipe / PDEATHSIG).
            wait_until(lambda: not leftover_workers(forked_and_exited(cluster.events())[0]), timeout=20,
                       what="orphaned workers to exit")
    finally:
        cluster.stop()
    evs = cluster.events()
    forked, exited = forked_and_exited(evs)
    assert not leftover_workers(forked), "a worker outlived its cluster"
    if how == "stop":
        assert forked == exited, f"never reaped by the postmaster: {forked - exited}"
        assert [e.kind for e in evs if e.kind == "postmaster_stopped"] == ["postmaster_stopped"]
    assert not cluster.directory.exists(), "the segment and its directory were not removed"
    assert not cluster.alive
    with capsys.disabled():
        print(f"\nshutdown ({how}): {len(results)} pending waits all returned {t_all * 1000:.0f} ms after "
              f"the {how}; {len(forked)} workers, {len(regs.outcomes)} registrant round trips")
