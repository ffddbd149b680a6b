"""The cost of one event: ``bgwlab.eventlog.EventWriter.emit``.

    .venv/bin/python benchmarks/bench_events.py [-n N] [--ab]

Appends N events of each shape to a temporary file (``O_APPEND``, one ``write()`` per
event, as in a cluster) and reports the median and p99 cost per call in microseconds:

* ``forked``  -- the shape the postmaster writes on every start (one int of detail);
* ``registered`` -- the registrant's event (strings, a bool, a None);
* ``disabled`` -- ``Cluster.start(log_events=False)``: the call still returns a timestamp;
* ``start4`` -- per event, the postmaster's four events of a start (request_seen,
  fork_attempted, forked, notified) formatted with ``line()`` and appended in one ``write()``,
  as ``start_worker`` does after the signal.

``--ab`` times the writer before issue 12's encoder change (``ab_patches/old_event_encoder``,
A) against the current one (B), batch by batch in alternation, and prints B / A.

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
START4 = (("request_seen", {"name": "bench-timed"}), ("fork_attempted", {"attempt": 1}),
          ("forked", {"worker_pid": 123456}), ("notified", {"target_pid": 4242, "reason": "forked"}))


def _percentile(xs, q):
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def _batch(writer, shape) -> float:
    """Microseconds per event over one batch of BATCH events of `shape`."""
    if shape == "start4":
        line, write = writer.line, writer.write
        t = time.perf_counter_ns()
        for _ in range(BATCH // 4):
            now = time.monotonic_ns()
            write(b"".join([line(kind, 3, 17, t_ns=now, **d) for kind, d in START4]))
        return (time.perf_counter_ns() - t) / (BATCH // 4 * 4) / 1000
    kind, slot, gen, detail = SHAPES[shape]
    emit = writer.emit
    t = time.perf_counter_ns()
    for _ in range(BATCH):
        emit(kind, slot, gen, **detail)
    return (time.perf_counter_ns() - t) / BATCH / 1000


def _time_batches(writer, shape, n) -> list[float]:
    return [_batch(writer, shape) for _ in range(max(1, n // BATCH))]


def measure(n: int = 20_000) -> dict[str, list[float]]:
    """Per-call costs in microseconds (one value per batch of 100 calls), by shape."""
    from bgwlab.eventlog import EventWriter

    out = {}
    with tempfile.TemporaryDirectory(prefix="bgwbench-events-") as d:
        path = os.path.join(d, "events.jsonl")
        on = EventWriter(path, "postmaster")
        off = EventWriter(path, "postmaster", enabled=False)
        try:
            for name in ("forked", "registered", "start4"):
                _time_batches(on, name, 1000)  # warm up
                out[name] = _time_batches(on, name, n)
            out["disabled"] = _time_batches(off, "forked", n)
        finally:
            on.close()
            off.close()
    return out


def measure_ab(n: int = 20_000) -> dict[str, list[float]]:
    """A (old encoder) and B (current), alternating batch by batch on one file."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "ab_patches"))
    from old_event_encoder import OldEventWriter

    from bgwlab.eventlog import EventWriter

    out: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bgwbench-events-") as d:
        path = os.path.join(d, "events.jsonl")
        writers = {"A": OldEventWriter(path, "postmaster"), "B": EventWriter(path, "postmaster")}
        try:
            for shape in ("forked", "registered"):
                for w in writers.values():
                    _time_batches(w, shape, 1000)  # warm up
                for i in range(max(1, n // BATCH)):
                    for v in (("A", "B") if i % 2 == 0 else ("B", "A")):
                        out.setdefault(f"{v}.{shape}", []).append(_batch(writers[v], shape))
        finally:
            for w in writers.values():
                w.close()
    return out


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20_000, help="events per shape")
    ap.add_argument("--ab", action="store_true", help="old encoder (A) against the current one (B)")
    args = ap.parse_args(argv)
    if args.ab:
        res = measure_ab(args.n)
        print(f"A = old_event_encoder, B = the writer as it is; {args.n} events per shape and side, "
              f"alternating batches of {BATCH}")
        print(f"{'event shape':<12} {'A median':>9} {'B median':>9} {'B/A':>6} {'A p99':>8} {'B p99':>8}")
        for shape in ("forked", "registered"):
            a, b = res[f"A.{shape}"], res[f"B.{shape}"]
            am, bm = _percentile(a, 0.5), _percentile(b, 0.5)
            print(f"{shape:<12} {am:>9.2f} {bm:>9.2f} {bm / am:>6.2f} {_percentile(a, 0.99):>8.2f} "
                  f"{_percentile(b, 0.99):>8.2f}")
        print(f"load average at end: {os.getloadavg()}")
        return 0
    res = measure(args.n)
    print(f"{'event shape':<12} {'median us':>10} {'p99 us':>10}")
    for name, xs in res.items():
        print(f"{name:<12} {_percentile(xs, 0.5):>10.2f} {_percentile(xs, 0.99):>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
