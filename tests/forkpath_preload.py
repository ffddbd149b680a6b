"""Preloaded by tests/test_forkpath.py into a postmaster (not imported by the tests).

* ``BGWLAB_TEST_ATFORK_LOG=PATH``: at-fork hooks that append ``before:PID``,
  ``parent:PID`` and ``child:PID`` lines to PATH (one ``O_APPEND`` write each).
* ``BGWLAB_TEST_RAISE_ON=NAME``: ``Postmaster.start_worker`` raises RuntimeError for
  workers named NAME, before anything is forked (a bug in the start path).
"""

import os
import sys

_log = os.environ.get("BGWLAB_TEST_ATFORK_LOG")
if _log:
    def _note(what: str) -> None:
        fd = os.open(_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{what}:{os.getpid()}\n".encode())
        finally:
            os.close(fd)

    os.register_at_fork(before=lambda: _note("before"), after_in_parent=lambda: _note("parent"),
                        after_in_child=lambda: _note("child"))

_raise_on = os.environ.get("BGWLAB_TEST_RAISE_ON")
if _raise_on:
    from bgwlab import postmaster as _imported

    _pm = sys.modules["__main__"] if hasattr(sys.modules["__main__"], "Postmaster") else _imported
    _start_worker = _pm.Postmaster.start_worker

    def _start_worker_with_a_bug(self, rw):
        if rw.spec.name == _raise_on:
            raise RuntimeError("a bug in the start path (tests/forkpath_preload.py)")
        return _start_worker(self, rw)

    _pm.Postmaster.start_worker = _start_worker_with_a_bug
