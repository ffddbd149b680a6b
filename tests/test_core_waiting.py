"""Notification and waiting: latches lose no wakeup; postmaster death wakes every waiter."""

import asyncio
import os
import signal
import threading
import time

import psutil
import pytest

from bgwlab import Cluster, Fault, HandleStatus, PostmasterDied, WorkerSpec
from bgwlab.latch import EventfdLatch, PipeLatch, dispatcher

from conftest import wait_until

STARTED, STOPPED, NOT_YET, DIED = (HandleStatus.STARTED, HandleStatus.STOPPED,
                                   HandleStatus.NOT_YET_STARTED, HandleStatus.POSTMASTER_DIED)
NOOP = WorkerSpec(name="n", entry="bgwlab.examples:noop")


@pytest.mark.parametrize("cls", [EventfdLatch, PipeLatch])
def test_latch_set_before_wait_is_not_lost(cls):
    with cls() as latch:
        latch.reset()
        latch.set()  # the "signal" lands between check and wait
        assert latch.wait(5) == [latch.fileno()]  # a lost set would be [] after 5 s
        latch.reset()
        assert latch.wait(0) == [] and not latch.is_set()


def test_sigusr1_from_another_thread_sets_every_registered_latch():
    a, b = EventfdLatch(), EventfdLatch()
    dispatcher.add(a), dispatcher.add(b)
    try:
        t = threading.Thread(target=lambda: os.kill(os.getpid(), signal.SIGUSR1))
        t.start(), t.join()
        assert a.wait(5) and b.wait(5)
    finally:
        dispatcher.remove(a), dispatcher.remove(b)
        a.close(), b.close()


DISPATCHER_PATHS = r"""
# Each of the dispatcher's three paths, in a fresh process (pytest's own has had its
# fan-out thread started by whichever earlier test waited off the main thread).
import json, os, signal, threading, time
from bgwlab.latch import EventfdLatch, dispatcher

def kill_from_a_thread():
    t = threading.Thread(target=lambda: os.kill(os.getpid(), signal.SIGUSR1))
    t.start(), t.join()

out = {}
dispatcher.install()
assert not dispatcher.thread_running

# 1. No waiter reads the pipe, no thread: the Python-level handler sets the latch (it
#    runs in the main thread, here when join() returns).
a = EventfdLatch(); dispatcher.add(a)
calls = dispatcher.handler_calls
kill_from_a_thread()
out["handler_set_latch"] = bool(a.wait(5))
out["handler_calls"] = dispatcher.handler_calls - calls
dispatcher.remove(a); a.close()

# 2. A main-thread waiter polls the wakeup pipe beside its latch and drains it itself.
dispatcher.drain()
a = EventfdLatch(); dispatcher.add(a)
seen = dispatcher.signals_seen
t = threading.Thread(target=lambda: (time.sleep(0.05), os.kill(os.getpid(), signal.SIGUSR1)))
t.start()
a.reset()
deadline = time.monotonic() + 10
while not a.is_set() and time.monotonic() < deadline:
    dispatcher.wait(a, deadline - time.monotonic())
t.join()
out["main_wait_woken"] = a.is_set()
out["main_wait_drained"] = dispatcher.signals_seen - seen
out["thread_after_main_wait"] = dispatcher.thread_running
dispatcher.remove(a); a.close()

# 3. A waiter in another thread starts the fan-out thread, which reads the pipe (the
#    main thread, blocked in join() with SIGUSR1 still blocked, never does).
news, registered, woke = [], threading.Event(), []
def waiter(latch):
    dispatcher.add(latch)
    registered.set()
    deadline = time.monotonic() + 10
    latch.reset()
    while not news and time.monotonic() < deadline:
        dispatcher.wait(latch, deadline - time.monotonic())
        latch.reset()
    woke.append(bool(news) and time.monotonic() < deadline)
    dispatcher.remove(latch); latch.close()
seen = dispatcher.signals_seen
w = threading.Thread(target=waiter, args=(EventfdLatch(),))
w.start()
registered.wait(5)
out["thread_started_by_waiter"] = dispatcher.thread_running
news.append(True)
kill_from_a_thread()
w.join(15)
out["thread_woke_waiter"] = woke == [True]
deadline = time.monotonic() + 5
while dispatcher.signals_seen == seen and time.monotonic() < deadline:
    time.sleep(0.002)
out["thread_drained"] = dispatcher.signals_seen - seen
print(json.dumps(out))
"""


def test_each_dispatcher_path_in_a_fresh_process():
    """The Python handler, a main-thread waiter's own drain, and the fan-out thread each
    wake a latch -- checked where no earlier test has started the thread already."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", DISPATCHER_PATHS], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["handler_set_latch"] and res["handler_calls"] >= 1, res
    assert res["main_wait_woken"] and res["main_wait_drained"] >= 1, res
    assert res["thread_after_main_wait"] is False, res  # a main-thread wait never starts it
    assert res["thread_started_by_waiter"] and res["thread_woke_waiter"], res
    assert res["thread_drained"] >= 1, res


MAIN_THREAD_WAIT = r"""
import json, threading
import bgwlab
from bgwlab.latch import dispatcher
with bgwlab.Cluster.start(max_workers=2) as c:
    b = c.connect()
    for _ in range(20):
        # a worker that cannot be over before we wake (a noop may be: then STOPPED is right)
        h = b.register_dynamic_worker(bgwlab.WorkerSpec(name="n", entry="bgwlab.examples:sleep_forever"))
        assert h.wait_for_startup()[0] is bgwlab.HandleStatus.STARTED
        h.terminate()
        assert h.wait_for_shutdown() is bgwlab.HandleStatus.STOPPED
    print(json.dumps({"threads": sorted(t.name for t in threading.enumerate()),
                      "signals_seen": dispatcher.signals_seen}))
"""


def test_main_thread_waits_drain_the_wakeup_pipe_themselves_without_a_second_thread():
    """A script that waits in its main thread gets one wakeup per signal: no fan-out thread
    is started (it would fight the waiter for the GIL), and the waiter itself read the
    signals from the wakeup pipe (40 waits, each ended by a SIGUSR1)."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", MAIN_THREAD_WAIT], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["threads"] == ["MainThread"]
    assert res["signals_seen"] >= 20  # at least one per start; a signal may cover two waits


def test_wait_with_timeout_returns_current_status(cluster, backend):
    h = backend.register_dynamic_worker(NOOP.replace(fault=Fault.slow_start(30, where="postmaster")))
    t0 = time.monotonic()
    assert h.wait_for_startup(timeout=0.2) == (NOT_YET, None)
    assert 0.19 <= time.monotonic() - t0 < 5
    assert h.wait_for_shutdown(timeout=0.05) is NOT_YET
    h.terminate()
    assert h.wait_for_startup() == (STOPPED, None)  # without a timeout: never NOT_YET_STARTED


def test_async_twins(cluster, backend):
    async def go():
        h = backend.register_dynamic_worker(WorkerSpec(name="a", entry="bgwlab.examples:sleep_forever"))
        s, pid = await h.wait_for_startup_async()
        h.terminate()
        st = await h.wait_for_shutdown_async()
        slow = backend.register_dynamic_worker(NOOP.replace(fault=Fault.slow_start(30, where="postmaster")))
        timed = await slow.wait_for_startup_async(timeout=0.1)
        slow.terminate()
        return s, pid, st, timed, await slow.wait_for_shutdown_async()

    s, pid, st, timed, st2 = asyncio.run(go())
    assert s is STARTED and pid > 0 and st is STOPPED
    assert timed == (NOT_YET, None) and st2 is STOPPED


def test_no_lost_wakeups_when_registrant_threads_are_busy(cluster, backend):
    """Hundreds of waits in a non-main thread while other threads burn the GIL."""
    WAIT_S = 20.0  # ~1000x a real wakeup, even with the GIL contended
    stop = threading.Event()

    def burn():
        x = 0
        while not stop.is_set():
            x += 1

    burners = [threading.Thread(target=burn) for _ in range(3)]
    results, errors, verdicts = [], [], []

    def waiter():
        try:
            for _ in range(150):
                h = backend.register_dynamic_worker(NOOP)
                t0 = time.monotonic()
                s, pid = h.wait_for_startup(timeout=WAIT_S)
                t1 = time.monotonic()
                s2 = h.wait_for_shutdown(timeout=WAIT_S)
                results.append((s, s2, t1 - t0, time.monotonic() - t1))
                verdicts.append((h.slot, h.generation, s, pid))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    for t in burners:
        t.start()
    w = threading.Thread(target=waiter)
    w.start()
    w.join(120)
    stop.set()
    for t in burners:
        t.join()
    assert not errors and not w.is_alive()
    assert len(results) == 150
    # A noop may be over before its registrant wakes: STARTED and STOPPED are both right.
    # A lost wakeup would surface as a wait that ran into its timeout -- which returns the
    # current status, by then STOPPED: only the elapsed time tells a wakeup from a timeout.
    assert all(s in (STARTED, STOPPED) and s2 is STOPPED for s, s2, _, _ in results)
    slowest = max(max(d1, d2) for _, _, d1, d2 in results)
    assert slowest < WAIT_S, f"a wait ran into its {WAIT_S} s timeout: a lost wakeup"

    # Each startup verdict against the event log: STARTED names the pid the postmaster
    # forked for that (slot, generation); STOPPED means that worker had exited already.
    def wrong_verdicts():
        forked, exited = {}, set()
        for e in cluster.events():
            if e.kind == "forked":
                forked.setdefault((e.slot, e.generation), set()).add(e.detail["worker_pid"])
            elif e.kind == "exited":
                exited.add((e.slot, e.generation))
        return [v for v in verdicts
                if not (v[3] in forked.get(v[:2], ()) if v[2] is STARTED else v[:2] in exited)]

    wait_until(lambda: not wrong_verdicts(), timeout=10,
               what="every verdict to match the event log")  # "forked" is logged after the signal


def test_concurrent_waiters_in_one_process_are_all_woken(cluster, backend):
    handles = [backend.register_dynamic_worker(WorkerSpec(name=f"c{i}", entry="bgwlab.examples:sleep_forever"))
               for i in range(6)]
    started = {}
    stopped = {}

    def wait(h):
        started[h] = h.wait_for_startup(timeout=30)[0]
        stopped[h] = h.wait_for_shutdown(timeout=30)

    ts = [threading.Thread(target=wait, args=(h,)) for h in handles]
    for t in ts:
        t.start()
    wait_until(lambda: len(started) == len(handles), timeout=30, what="every startup wait to return")
    for h in handles:
        h.terminate()
    for t in ts:
        t.join(60)
    assert not any(t.is_alive() for t in ts)
    assert all(started[h] is STARTED and stopped[h] is STOPPED for h in handles)


def test_postmaster_kill9_wakes_every_waiter_and_workers_exit():
    c = Cluster.start(max_workers=4)
    try:
        b = c.connect()
        sleepers = [b.register_dynamic_worker(WorkerSpec(name=f"s{i}", entry="bgwlab.examples:sleep_forever"))
                    for i in range(2)]
        pids = [h.wait_for_startup()[1] for h in sleepers]
        never = b.register_dynamic_worker(NOOP.replace(fault=Fault.slow_start(60, where="postmaster")))
        out = {}

        def wait(key, fn):
            out[key] = (fn(), time.monotonic())

        threads = [threading.Thread(target=wait, args=(i, h.wait_for_shutdown)) for i, h in enumerate(sleepers)]
        threads.append(threading.Thread(target=wait, args=("startup", never.wait_for_startup)))
        # every other test's waiters have ended (the leak check sees to it): the three
        # latches counted here are these three threads'
        assert not dispatcher._latches
        for t in threads:
            t.start()
        wait_until(lambda: len(dispatcher._latches) == 3, what="waiters to block")
        t_kill = time.monotonic()
        c.kill_postmaster(signal.SIGKILL)
        for t in threads:
            t.join(30)  # the waits have no timeout: only the death can end them
        assert not any(t.is_alive() for t in threads)
        assert out[0][0] is DIED and out[1][0] is DIED and out["startup"][0] == (DIED, None)
        assert min(t for _, t in out.values()) >= t_kill
        # get_pid never reports POSTMASTER_DIED (as in PostgreSQL)
        assert never.get_pid()[0] is NOT_YET
        with pytest.raises(PostmasterDied):
            b.register_dynamic_worker(NOOP)

        def gone(pid):
            try:
                return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return True
        wait_until(lambda: all(gone(p) for p in pids), timeout=5, what="workers to exit after postmaster death")
    finally:
        c.stop()


def test_detached_backend_is_never_signalled_again(cluster, backend):
    b1 = cluster.connect()
    h = b1.register_dynamic_worker(WorkerSpec(name="d", entry="bgwlab.examples:sleep_forever"))
    assert h.wait_for_startup()[0] is STARTED  # it runs until terminated: it outlives the detach
    slot, gen = h.slot, h.generation
    t_detach = time.monotonic_ns()
    b1.detach()
    wait_until(lambda: any(e.kind == "backend_detached" and e.source == "postmaster" for e in cluster.events()),
               what="the postmaster to see the detach")
    # the worker's exit is a change b1 would be notified of: stop it through another backend
    backend.handle(slot, gen).terminate()
    wait_until(lambda: any(e.kind == "unregistered" and (e.slot, e.generation) == (slot, gen)
                           for e in cluster.events()), what="worker exit")
    ev = cluster.events()
    # the postmaster logs every signal it sends: none after the detach, and it says why
    dropped = [e for e in ev if e.kind == "notify_dropped" and (e.slot, e.generation) == (slot, gen)]
    signalled_after = [e for e in ev if e.kind == "notified" and e.t_ns > t_detach]
    assert dropped and not signalled_after


def test_notify_false_means_no_signal_and_waits_still_return(cluster, backend):
    h = backend.register_dynamic_worker(NOOP.replace(notify=False))
    assert h.wait_for_shutdown(timeout=30) is STOPPED  # falls back to looking every 10 ms
    assert not [e for e in cluster.events() if e.kind == "notified" and e.slot == h.slot]
