"""The cost of one event: ``bgwlab.eventlog.EventWriter.emit``.

    .venv/bin/python benchmarks/bench_events.py [-n N]

Appends N events of each shape to a temporary file (``O_APPEND``, one ``write()`` per
event, as in a cluster) and reports the median and p99 cost per call in microseconds:

* ``forked``  -- the shape the postmaster writes on every start (one int of detail);
* ``registered`` -- the registrant's event (strings, a bool, a None);
* ``disabled`` -- ``Cluster.start(log_events=False)``: the call still returns a timestamp.

Timed in batches of 100 calls, so the clock's own cost is spread out.  ``run.py`` calls
``measure()`` and puts the results in its table.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

BATCH = 100

SHAPES = {
    "forked": ("forked", 3, 17, {"worker_pid": 123456}),
    "registered": ("registered", 3, 17, {"name": "bench-timed", "entry": "bench_entry:timed",
                                         "notify": True, "fault": None}),
}


def _percentile(xs, q):
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def _time_batches(writer, kind, slot, gen, detail, n) -> list[float]:
    per_call_us = []
    emit = writer.emit
    for _ in range(max(1, n // BATCH)):
        t = time.perf_counter_ns()
        for _ in range(BATCH):
            emit(kind, slot, gen, **detail)
        per_call_us.append((time.perf_counter_ns() - t) / BATCH / 1000)
    return per_call_us


def measure(n: int = 20_000) -> dict[str, list[float]]:
    """Per-call costs in microseconds (one value per batch of 100 calls), by shape."""
    from bgwlab.eventlog import EventWriter

    out = {}
    with tempfile.TemporaryDirectory(prefix="bgwbench-events-") as d:
        path = os.path.join(d, "events.jsonl")
        on = EventWriter(path, "postmaster")
        off = EventWriter(path, "postmaster", enabled=False)
        try:
            for name, (kind, slot, gen, detail) in SHAPES.items():
                _time_batches(on, kind, slot, gen, detail, 1000)  # warm up
                out[name] = _time_batches(on, kind, slot, gen, detail, n)
            kind, slot, gen, detail = SHAPES["forked"]
            out["disabled"] = _time_batches(off, kind, slot, gen, detail, n)
        finally:
            on.close()
            off.close()
    return out


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20_000, help="events per shape")
    args = ap.parse_args(argv)
    res = measure(args.n)
    print(f"{'event shape':<12} {'median us':>10} {'p99 us':>10}")
    for name, xs in res.items():
        print(f"{name:<12} {_percentile(xs, 0.5):>10.2f} {_percentile(xs, 0.99):>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
