"""What the widgets share: following an events file, the drawing thread, the refresh thread.

* ``EventTail`` reads the events appended to a cluster's ``events.jsonl`` since the last
  call (the cluster panel and the live timeline follow a running cluster with it).
* ``on_draw_thread`` runs a drawing on this process's one matplotlib thread.
* ``_Refresher`` redraws a view from a daemon thread a few times a second;
  ``_install_dispatcher`` lets a controller's threads connect; ``_esc`` escapes HTML.
"""

from __future__ import annotations

import html
import os
import threading

from ...events import Event, parse_line


# -- reading events as they arrive -----------------------------------------------------------
class EventTail:
    """Reads the events appended to a cluster's ``events.jsonl`` since the last call.

    Keeps a byte offset and holds back a trailing partial line until it is complete.
    A missing file (cluster not started yet, or removed at stop) reads as no new events.
    """

    def __init__(self, path):
        self.path = str(path)
        self._offset = 0
        self._partial = b""

    def read_new(self) -> list[Event]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        out = []
        for line in lines:
            if line.strip():
                e = parse_line(line.decode("utf-8", errors="replace"))
                if e is not None:
                    out.append(e)
        return out


def _install_dispatcher() -> None:
    """Install bgwlab's SIGUSR1 dispatcher now, if this is the main thread.

    A process's first ``connect()`` must run in its main thread (only it may set signal
    handlers).  Controllers are built in a notebook cell -- the main thread -- while their
    work later runs in other threads: installing here makes that work.
    """
    if threading.current_thread() is threading.main_thread():
        from ...latch import dispatcher

        dispatcher.install()


# -- one drawing thread --------------------------------------------------------------------
_drawer = None
_drawer_pid = None
_drawer_lock = threading.Lock()


def on_draw_thread(fn, *args, **kwargs):
    """Run `fn` on this process's one drawing thread and return its result.

    matplotlib is not thread-safe, and it caches open font files per thread: every
    widget therefore draws on one long-lived thread, whichever thread asks.
    """
    global _drawer, _drawer_pid
    from concurrent.futures import ThreadPoolExecutor

    with _drawer_lock:
        if _drawer is None or _drawer_pid != os.getpid():
            _drawer = ThreadPoolExecutor(1, thread_name_prefix="bgwlab-draw")
            _drawer_pid = os.getpid()
        drawer = _drawer
    return drawer.submit(fn, *args, **kwargs).result()


def _esc(x) -> str:
    return html.escape("" if x is None else str(x))


# -- refreshing views -----------------------------------------------------------------------
class _Refresher:
    """A daemon thread that calls `tick()` every `period` seconds until stopped."""

    def __init__(self, tick, period: float):
        self._tick, self._period = tick, period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bgwlab-widget-refresh", daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(self._period):
            try:
                self._tick()
            except Exception:
                pass

    def stop(self):
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()
