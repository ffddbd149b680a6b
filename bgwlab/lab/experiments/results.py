"""Results on disk, and the run metadata that says where and when they were measured.

``run_metadata()``: machine, CPUs, Python, bgwlab version and commit, date, load average.
``save_results`` writes ``NAME.csv`` + ``NAME.metadata.json`` (+ ``NAME.events.jsonl``);
``load_results`` and ``load_events`` read them back.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

from ... import __version__
from ...events import Event, read_events, write_jsonl
from ..load import cpu_info

__all__ = ["run_metadata", "save_results", "load_results", "load_events"]


def _git(*args) -> str | None:
    root = Path(__file__).resolve().parents[3]  # the checkout (this is bgwlab/lab/experiments/results.py)
    try:
        r = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_metadata() -> dict:
    """Where and when results were measured: machine, CPUs, Python, bgwlab version/commit, date, load."""
    import datetime

    import psutil

    commit = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "machine": platform.node(),
        "platform": platform.platform(),
        "arch": platform.machine(),
        "cpu_model": _cpu_model(),
        **cpu_info(),  # cpu_count (the host's), cpu_affinity, cpu_quota, usable_cpus
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "bgwlab_version": __version__,
        "commit": commit or "unknown",
        "commit_dirty": bool(dirty) if dirty is not None else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "loadavg_start": list(os.getloadavg()),
        "user_is_root": os.geteuid() == 0,
    }


def _stem(name: str) -> str:
    return name[:-4] if name.endswith(".csv") else name


def save_results(df, out_dir, events=None, *, name: str = "results") -> dict:
    """Write ``NAME.csv``, ``NAME.metadata.json`` and (if given) ``NAME.events.jsonl`` to `out_dir`.

    Returns the paths written, keyed "csv", "metadata", "events".
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = _stem(name)
    paths = {"csv": out / f"{stem}.csv", "metadata": out / f"{stem}.metadata.json"}
    df.to_csv(paths["csv"], index=False)
    meta = dict(df.attrs.get("metadata") or {})
    meta["columns"] = list(df.columns)
    paths["metadata"].write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    if events is not None:
        paths["events"] = out / f"{stem}.events.jsonl"
        write_jsonl(events, paths["events"])
    return paths


def load_results(csv_path):
    """Read a results CSV back (with its ``.metadata.json`` neighbour in ``df.attrs``)."""
    import pandas as pd

    p = Path(csv_path)
    df = pd.read_csv(p)
    for col in ("correct", "spurious_timeout"):
        if col in df.columns:
            df[col] = df[col].astype(str).str.lower().eq("true")
    meta_path = p.with_name(_stem(p.name) + ".metadata.json")
    df.attrs["metadata"] = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return df


def load_events(csv_path) -> list[Event]:
    """The raw events saved next to a results CSV (``NAME.events.jsonl``), or []."""
    p = Path(csv_path)
    return read_events(p.with_name(_stem(p.name) + ".events.jsonl"))
