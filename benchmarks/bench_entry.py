"""Worker entry points for the benchmarks (they run inside bgwlab workers).

The postmaster preloads this module (``Cluster.start(preload=...)`` in ``run.py``), so a
forked worker pays no import for it; it is the only module the benchmark's postmasters
preload (not ``bgwlab.examples``, a teaching module: the postmaster's image is measured as
the engine makes it, see "The image" in ``bgwlab/postmaster.py``).  ``WorkerSpec.extra`` carries the path of a
directory with two FIFOs that the registrant holds open read-write (so that no
``open()`` here can block):

* ``stamp`` -- the worker writes 8-byte stamps into it: when it reached its entry function
  (``time.monotonic_ns()``, then the CPU time it had used so far, ``time.process_time_ns()``:
  its start-up work since fork, whatever the machine's load), and its *last instruction*
  before returning;
* ``go``    -- the worker blocks on one byte from the registrant before finishing, so
  that the registrant's "worker started" and "worker stopped" measurements stay apart.
"""

import os
import time

from bgwlab import worker


def noop(arg: int = 0) -> None:
    """Return at once (exit 0): the failed starts' and the cycles' entry.  (The crash trial
    names ``bench_entry:no_such_entry``: the module is loaded, the function is missing.)"""


def sleep_forever(arg: int = 0) -> None:
    """The busy phase's sleepers: run until terminated or the postmaster dies."""
    while worker.sleep(3600):
        pass
    raise SystemExit(1)


def timed(arg: int = 0) -> None:
    """Stamp 'running', wait for 'go', stamp the last instruction, return (exit 0)."""
    t_main = time.monotonic_ns()
    cpu = time.process_time_ns()
    d = worker.current().extra.decode()
    out = os.open(d + "/stamp", os.O_WRONLY | os.O_CLOEXEC)
    os.write(out, t_main.to_bytes(8, "little") + cpu.to_bytes(8, "little"))
    go = os.open(d + "/go", os.O_RDONLY | os.O_CLOEXEC)
    os.read(go, 1)
    t_last = time.monotonic_ns()
    os.write(out, t_last.to_bytes(8, "little"))  # the one instruction after the stamp
