"""Events from all three sources, their JSONL export, and the postmaster's lean import set."""

import json
import subprocess
import sys

from bgwlab import Event, WorkerSpec, read_events
from bgwlab.eventlog import EventWriter, encode_value
from bgwlab.events import KINDS, to_dataframe, write_jsonl


def test_one_start_is_recorded_by_all_three_sources_in_causal_order(cluster, backend):
    h = backend.register_dynamic_worker(WorkerSpec(name="e", entry="bgwlab.examples:noop"))
    h.wait_for_startup()
    assert h.wait_for_shutdown().name == "STOPPED"
    ev = [e for e in cluster.events() if e.slot == h.slot and e.generation == h.generation]
    by_kind = {e.kind: e for e in ev}
    assert {e.source for e in ev} == {"backend", "postmaster", "worker"}
    assert by_kind["registered"].source == "backend"
    assert by_kind["forked"].source == "postmaster"
    assert by_kind["reached_main"].source == "worker"
    assert by_kind["reached_main"].pid == by_kind["forked"].detail["worker_pid"]
    t = [by_kind[k].t_ns for k in ("registered", "request_seen", "forked", "reached_main", "exited",
                                   "unregistered")]
    assert t == sorted(t)  # CLOCK_MONOTONIC is comparable across processes
    assert all(e.kind in KINDS for e in cluster.events())


def test_jsonl_export_round_trips(cluster, backend, tmp_path):
    h = backend.register_dynamic_worker(WorkerSpec(name='quote"and\\slash\n', entry="bgwlab.examples:noop"))
    h.wait_for_shutdown()
    snapshot = cluster.events()  # the postmaster may still be appending: compare to one snapshot
    path = tmp_path / "ev.jsonl"
    write_jsonl(snapshot, path)
    lines = path.read_text().splitlines()
    assert len(lines) == len(snapshot)
    first = json.loads(lines[0])
    assert set(first) == {"t_ns", "kind", "source", "pid", "slot", "generation", "detail"}
    again = read_events(path)
    assert again == snapshot
    exported = iter(read_events(cluster.export_events(tmp_path / "ev2.jsonl")))
    # events logged since the snapshot may be interleaved (by time), none changes or goes
    assert all(e in exported for e in snapshot)  # a subsequence, in the same order
    reg = next(e for e in again if e.kind == "registered")
    assert reg.detail["name"] == 'quote"and\\slash\n'
    df = to_dataframe(again)
    assert list(df.columns)[:3] == ["t_ns", "kind", "source"] and len(df) == len(again)


def test_encoder_matches_json_and_torn_lines_are_skipped(tmp_path):
    value = {"s": "tab\t\x00é", "n": -3, "f": 0.5, "b": False, "none": None, "l": [1, "x"]}
    assert json.loads(encode_value(value)) == value
    p = tmp_path / "e.jsonl"
    w = EventWriter(str(p), "backend")
    w.emit("registered", 1, 2, name="x")
    w.close()
    with open(p, "a") as f:
        f.write('{"t_ns": 5, "kind": "torn"\n')  # a line cut short
    evs = read_events(p)
    assert [e.kind for e in evs] == ["registered"] and isinstance(evs[0], Event)


def test_events_are_still_readable_after_stop(cluster, backend, tmp_path):
    h = backend.register_dynamic_worker(WorkerSpec(name="x", entry="bgwlab.examples:noop"))
    h.wait_for_shutdown()
    cluster.stop()
    kinds = [e.kind for e in cluster.events()]
    assert "postmaster_stopped" in kinds and "unregistered" in kinds
    # after stop() the log is final: the export holds exactly those events, in order
    assert cluster.export_events(tmp_path / "after.jsonl") == tmp_path / "after.jsonl"
    assert read_events(tmp_path / "after.jsonl") == cluster.events()
    mine = [e for e in cluster.events() if (e.slot, e.generation) == (h.slot, h.generation)]
    assert mine[0].kind == "registered" and "unregistered" in [e.kind for e in mine]


def test_postmaster_imports_stay_small():
    """Every MB the postmaster touches costs each fork ~20 us: keep heavy modules out."""
    code = ("import sys; before = set(sys.modules); import bgwlab.postmaster, bgwlab.examples; "
            "print(' '.join(sorted(set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": str(__import__("pathlib").Path(__file__).parents[1])}, timeout=60)
    assert out.returncode == 0, out.stderr
    loaded = set(out.stdout.split())
    heavy = {"json", "re", "threading", "asyncio", "psutil", "numpy", "pandas", "matplotlib",
             "dataclasses", "inspect", "subprocess", "bgwlab.backend", "bgwlab.cluster", "bgwlab.spec"}
    assert not loaded & heavy, loaded & heavy
