"""The wakeup fd is the process's, not only ours: a wait must survive other code taking it.

Found in CI: after nbclient's asyncio loop closed (it had handled a signal, so it set the
wakeup fd to -1), a leader in the same process waited for ever -- the SIGUSR1 that should
have woken it went to another thread and left no byte in any pipe (latch.py's essay).
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time

from bgwlab import Fault, HandleStatus, WorkerSpec
from conftest import value_in_child


def _current_wakeup_fd() -> int:
    fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(fd)
    return fd


def test_a_main_thread_wait_wakes_after_asyncio_took_the_wakeup_fd(cluster, backend):
    from bgwlab.latch import dispatcher

    loop = asyncio.new_event_loop()  # as nbclient's: a signal handler, then close()
    loop.add_signal_handler(signal.SIGUSR2, lambda: None)
    loop.close()
    assert _current_wakeup_fd() == -1
    # The kernel must deliver our SIGUSR1 to another thread: block it here, and give it
    # a thread asleep in C with it unblocked.
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, name="asleep-in-C")
    other.start()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        # the postmaster waits 0.2 s before the fork: the waiter is surely asleep by then
        h = backend.register_dynamic_worker(WorkerSpec(
            name="w", entry="bgwlab.examples:sleep_forever",
            fault=Fault.slow_start(0.2, where="postmaster")))
        t0 = time.monotonic()
        status, pid = h.wait_for_startup(timeout=30)
        waited = time.monotonic() - t0
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
        stop.set()
        other.join()
    assert status is HandleStatus.STARTED and pid
    assert waited < 15, f"the wait ran into its timeout ({waited:.1f} s): the wakeup was lost"
    assert _current_wakeup_fd() == dispatcher._w  # taken back
    h.terminate()
    assert h.wait_for_shutdown(timeout=10) is HandleStatus.STOPPED


def test_a_forked_child_does_not_write_into_its_parents_wakeup_pipe():
    """After fork() the child's signals must not wake the parent: the wakeup fd it
    inherited names the parent's pipe, so the dispatcher drops it in the child."""
    from bgwlab.latch import dispatcher

    dispatcher.install()
    got = int(value_in_child(_current_wakeup_fd))  # the wakeup fd a child has
    assert got == -1, f"the child kept the parent's wakeup fd {got}"
    assert _current_wakeup_fd() == dispatcher._w
