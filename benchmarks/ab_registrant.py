"""A/B of a change on the registrant's side (the wait path), in one process, interleaved.

    .venv/bin/python benchmarks/ab_registrant.py [--patch old_registrant_wait] [--n 1500] [--seed 1]

``ab.py`` A/Bs the *postmaster*: each side has a cluster whose postmaster preloads the old
code.  A change to what the registrant runs -- ``WorkerHandle`` waits, the signal
dispatcher -- lives in the measuring process itself, so here one cluster serves both
sides and the methods are swapped before every trial: A runs the patch's old methods
(``ab_patches/NAME.py``: ``DISPATCHER`` for ``SignalDispatcher``, ``HANDLE`` for
``WorkerHandle``), B the code as it is.  Every round runs one trial of each side, in a
shuffled order.  A trial: ``register_dynamic_worker()`` -> ``wait_for_startup()``
returned STARTED (``start``, the benchmark's pair of instants), then
``wait_for_shutdown()`` returned STOPPED (``startup_to_stopped``: the worker runs
``bgwlab.examples:noop``).  Prints medians, p99 and B / A.
"""

from __future__ import annotations

import argparse
import importlib
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "ab_patches"))

import report  # noqa: E402

import bgwlab  # noqa: E402
from bgwlab import backend as _backend  # noqa: E402
from bgwlab import latch as _latch  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patch", default="old_registrant_wait")
    ap.add_argument("--n", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    old = importlib.import_module(args.patch)
    sides = {
        "A": {_latch.SignalDispatcher: old.DISPATCHER, _backend.WorkerHandle: old.HANDLE},
        "B": {_latch.SignalDispatcher: {n: _latch.SignalDispatcher.__dict__[n] for n in old.DISPATCHER},
              _backend.WorkerHandle: {n: _backend.WorkerHandle.__dict__[n] for n in old.HANDLE}},
    }

    def use(side):
        for cls, methods in sides[side].items():
            for name, fn in methods.items():
                setattr(cls, name, fn)

    rng = random.Random(args.seed)
    samples = {f"{s}.{k}": [] for s in "AB" for k in ("start", "startup_to_stopped")}
    spec = bgwlab.WorkerSpec(name="ab-registrant", entry="bgwlab.examples:noop")
    try:
        with bgwlab.Cluster.start(max_workers=8) as cluster:
            backend = bgwlab.attach(cluster.directory)
            for rnd in range(args.n + 20):  # 20 warm-up rounds, unrecorded
                for side in rng.sample("AB", 2):
                    use(side)
                    t0 = time.monotonic_ns()
                    h = backend.register_dynamic_worker(spec)
                    status, _pid = h.wait_for_startup()
                    t1 = time.monotonic_ns()
                    if status is not bgwlab.HandleStatus.STARTED:
                        raise RuntimeError(f"{side}: {status}")
                    if h.wait_for_shutdown() is not bgwlab.HandleStatus.STOPPED:
                        raise RuntimeError(f"{side}: did not stop")
                    t2 = time.monotonic_ns()
                    if rnd >= 20:
                        samples[f"{side}.start"].append((t1 - t0) / 1e6)
                        samples[f"{side}.startup_to_stopped"].append((t2 - t1) / 1e6)
    finally:
        use("B")
    print(f"A = {args.patch} (the old code), B = the code as it is; n = {args.n} each, interleaved")
    print(f"{'kind':<20} {'A median':>9} {'B median':>9} {'B/A':>6}   {'A p99':>8} {'B p99':>8} {'B/A':>6}")
    for kind in ("start", "startup_to_stopped"):
        a, b = samples[f"A.{kind}"], samples[f"B.{kind}"]
        am, bm = report.percentile(a, 0.5), report.percentile(b, 0.5)
        ap99, bp99 = report.percentile(a, 0.99), report.percentile(b, 0.99)
        print(f"{kind:<20} {am:>9.3f} {bm:>9.3f} {bm / am:>6.2f}   {ap99:>8.3f} {bp99:>8.3f} {bp99 / ap99:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
