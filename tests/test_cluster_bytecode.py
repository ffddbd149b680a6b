"""The postmaster loads bgwlab from bytecode, in a private cache, where the user set
PYTHONDONTWRITEBYTECODE (compiling at every start leaves ~1 MB more heap for every fork()
to copy); nothing is written next to the sources, and an explicit prefix is respected."""

from __future__ import annotations

from pathlib import Path

import bgwlab
from bgwlab import Cluster
from bgwlab.cluster import _bytecode_to_private_cache

SOURCES = Path(bgwlab.__file__).resolve().parent


def _cached(cache: Path, module: str) -> list[Path]:
    """PYTHONPYCACHEPREFIX mirrors the source directory's absolute path, without __pycache__."""
    return list((cache / str(SOURCES).lstrip("/")).glob(f"{module}.*.pyc"))


def test_the_postmaster_writes_its_bytecode_to_the_private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.delenv("PYTHONPYCACHEPREFIX", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache = tmp_path / "bgwlab" / "pycache"
    c = Cluster.start(max_workers=1)
    try:
        assert c.state() == "running"
    finally:
        c.stop()
    assert _cached(cache, "shmem"), f"no bytecode of bgwlab.shmem under {cache}"
    assert oct(cache.stat().st_mode & 0o777) == oct(0o700)


def test_an_explicit_choice_is_left_alone(tmp_path):
    env = {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": str(tmp_path / "mine")}
    _bytecode_to_private_cache(env)
    assert env == {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": str(tmp_path / "mine")}
    env = {"XDG_CACHE_HOME": str(tmp_path)}  # bytecode allowed: Python's own __pycache__ rules
    _bytecode_to_private_cache(env)
    assert env == {"XDG_CACHE_HOME": str(tmp_path)}
    assert not (tmp_path / "bgwlab").exists()


def test_an_unwritable_cache_falls_back_to_compiling(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    env = {"PYTHONDONTWRITEBYTECODE": "1", "XDG_CACHE_HOME": str(blocker)}
    _bytecode_to_private_cache(env)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and "PYTHONPYCACHEPREFIX" not in env
