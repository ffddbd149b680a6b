"""The postmaster's image stays lean: what a running postmaster has loaded when it forks.

Every module the postmaster loads before it forks is copied by every ``fork()`` -- and by
every fork a pids cgroup refuses (see "The image" in ``bgwlab/postmaster.py``).  These
tests pin the image, so that a later import cannot grow it unnoticed.

The probe is this module itself, run as a worker's entry (``test_postmaster_image:probe``):
it is not preloaded, so a worker imports it after ``fork()``, and the first thing it does
-- before any import of its own -- is to note ``sys.modules``: the postmaster's modules at
the moment it forked, plus the probe.
"""

import sys

_MODULES_AT_IMPORT = sorted(sys.modules)  # (in a worker: the postmaster's, at fork())

import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# What the postmaster may load on top of what a bare ``python -S`` has: os and the C
# modules it needs, its own package, and the default preload.
ALLOWED = {
    "os", "os.path", "posixpath", "genericpath", "stat", "_stat", "_collections_abc",
    "select", "mmap", "struct", "_struct", "__future__",
    "bgwlab", "bgwlab.postmaster", "bgwlab.shmem", "bgwlab.eventlog", "bgwlab.procinfo",
    "bgwlab.worker", "bgwlab.examples",
    "_bgwlab_forkpath",  # the C fork path (bgwlab/forkpath.py), where it builds: it pays (A/B there)
}
ENGINE_ONLY = {"preload": ()}  # the engine's own image: no preloaded module of the user's
# Named, so that a failure says which of the known heavy ones came back.
FORBIDDEN = {
    "signal", "enum", "functools", "collections", "operator", "reprlib", "keyword", "types",
    "runpy", "importlib.util", "importlib.machinery", "contextlib", "warnings",
    "zlib", "binascii", "ctypes", "_ctypes", "traceback", "linecache", "re", "json",
    "threading", "weakref", "dataclasses", "bgwlab.spec", "bgwlab.backend", "bgwlab.cluster", "bgwlab.latch",
}


def probe(arg: int = 0) -> None:
    """Worker entry: write the modules seen at import (the postmaster's) to
    ``image-<slot>.json`` in the cluster directory."""
    from bgwlab import worker

    info = worker.current()
    out = os.path.join(info.directory, f"image-{info.slot}.json")
    with open(out + ".tmp", "w") as f:
        json.dump({"modules": [m for m in _MODULES_AT_IMPORT if m != __name__]}, f)
    os.rename(out + ".tmp", out)


def shared_objects(pid) -> set:
    """Names of the shared objects mapped into process `pid`."""
    with open(f"/proc/{pid}/maps") as f:
        return {line.split()[-1].rsplit("/", 1)[-1].split(".")[0] for line in f if ".so" in line}


def bare_modules() -> set:
    """The modules of a bare ``python -S`` here (they vary with the locale, the build ...)."""
    r = subprocess.run([sys.executable, "-S", "-c", "import sys; print(' '.join(sys.modules))"],
                       capture_output=True, text=True, timeout=60,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"})
    assert r.returncode == 0, r.stderr
    return set(r.stdout.split())


def postmaster_image(cluster, backend, entry=f"{__name__}:probe"):
    from bgwlab import NEVER_RESTART, HandleStatus, WorkerSpec

    h = backend.register_dynamic_worker(WorkerSpec(name="image", entry=entry, restart=NEVER_RESTART))
    assert h.wait_for_shutdown(timeout=30) is HandleStatus.STOPPED
    return json.loads((Path(cluster.directory) / f"image-{h.slot}.json").read_text())


def check_image(loaded: set) -> None:
    assert not loaded & FORBIDDEN, (
        f"the postmaster loads {sorted(loaded & FORBIDDEN)}: every fork() copies them "
        f"(see 'The image' in bgwlab/postmaster.py)")
    extra = loaded - bare_modules() - ALLOWED - set(sys.builtin_module_names)  # (built in: no mapping)
    assert not extra, (f"the postmaster loads {sorted(extra)} beyond its allowed set: if it must, "
                       f"add it to ALLOWED here with the A/B that shows it costs nothing")
    assert "bgwlab.postmaster" in loaded


def image_after_every_path(cluster, backend) -> set:
    """The postmaster's modules when it forks after a start, an exit, an injected fork
    failure and an early crash: the paths it runs, and anything they might import lazily."""
    from bgwlab import NEVER_RESTART, Fault, WorkerSpec

    for spec in (WorkerSpec(name="ok", entry="bgwlab.examples:noop", restart=NEVER_RESTART),
                 WorkerSpec(name="fail", entry="bgwlab.examples:noop", restart=NEVER_RESTART,
                            fault=Fault.fork_failure()),
                 WorkerSpec(name="crash", entry="bgwlab.examples:no_such_entry", restart=NEVER_RESTART)):
        backend.register_dynamic_worker(spec).wait_for_shutdown(timeout=30)
    return set(postmaster_image(cluster, backend)["modules"])


def test_a_running_postmaster_loads_only_what_it_needs():
    from bgwlab import Cluster

    with Cluster.start(**ENGINE_ONLY) as c:
        b = c.connect()
        try:
            check_image(image_after_every_path(c, b))
        finally:
            b.detach()


def test_the_default_preload_keeps_the_image_lean(cluster, backend):
    check_image(image_after_every_path(cluster, backend))


def test_the_postmaster_maps_only_the_shared_objects_it_needs():
    from bgwlab import Cluster

    bare = subprocess.Popen([sys.executable, "-S", "-c", "import sys; print(flush=True); sys.stdin.read()"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert bare.stdout.readline() == b"\n"  # up: its libraries are mapped
        baseline = shared_objects(bare.pid)
    finally:
        bare.communicate(b"")
    with Cluster.start(**ENGINE_ONLY) as c:
        extra = shared_objects(c.postmaster_pid) - baseline
    # the C modules it needs (no zlib and libz: the slot's checksum is Python's integers)
    # and the C fork path's own extension, where it builds (bgwlab/forkpath.py)
    assert extra <= {"select", "mmap", "_struct", "_bgwlab_forkpath"}, extra


def test_the_postmaster_is_not_run_through_runpy(cluster):
    # python -m would leave runpy's imports in the heap; Cluster.start() runs main through -c
    with open(f"/proc/{cluster.postmaster_pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    assert b"-m" not in argv and b"-c" in argv and b"-S" in argv, argv


def test_python_m_still_runs_the_postmaster(tmp_path):
    """``python -m bgwlab.postmaster DIR`` (by hand, as the docs say) is the same main()."""
    import select

    d = tmp_path / "c"
    d.mkdir(mode=0o700)
    (d / "postmaster.conf").write_text(f"max_workers=2\nmax_backends=4\npath={ROOT}\n")
    r, w = os.pipe()
    p = subprocess.Popen([sys.executable, "-S", "-u", "-m", "bgwlab.postmaster", str(d), str(w)],
                         pass_fds=(w,), cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    os.close(w)
    try:
        assert select.select([r], [], [], 30)[0] and os.read(r, 1) == b"R", "no ready byte"
        assert (d / "shmem").exists() and (d / "postmaster.pid").exists()
    finally:
        os.close(r)
        p.terminate()
        out = p.communicate(timeout=30)[0]
    assert p.returncode == 0, out


@pytest.mark.parametrize("kw", [{"log_events": False}, {"max_workers": 64}])
def test_the_image_does_not_depend_on_the_cluster_options(kw):
    from bgwlab import Cluster

    with Cluster.start(**ENGINE_ONLY, **kw) as c:
        b = c.connect()
        try:
            check_image(set(postmaster_image(c, b)["modules"]))
        finally:
            b.detach()


def test_the_slot_checksum_catches_what_the_crc_caught():
    """shmem.spec_checksum (Python's integers, no zlib): every single-byte change of the
    spec, a torn 8-byte field, and the same bytes under another generation are caught."""
    from bgwlab import NEVER_RESTART, WorkerSpec, shmem

    raw = shmem.encode_spec(WorkerSpec(name="w", entry="m:f", main_arg=7, extra=b"x" * 100,
                                       restart=NEVER_RESTART), 41, (3, 1234, 99))
    assert len(raw) == shmem.SLOT_SPEC.size + shmem.SLOT_CHECKSUM.size
    assert shmem.CHECKSUM_OFF + shmem.SLOT_CHECKSUM.size <= shmem.SLOT_SIZE
    assert shmem.decode_spec(raw, 41).extra == b"x" * 100
    assert shmem.decode_spec(raw, 42) == "checksum mismatch"
    body = raw[: shmem.SLOT_SPEC.size]
    for i in range(len(body)):
        for flip in (0x01, 0x80, 0xFF):
            bad = bytearray(raw)
            bad[i] ^= flip
            assert shmem.decode_spec(bytes(bad), 41) == "checksum mismatch", (i, flip)
    for i in range(0, len(body) - 8, 8):  # an 8-byte field half written (its low half new)
        bad = bytearray(raw)
        bad[i : i + 4] = b"\xa5\x5a\xa5\x5a"
        if bytes(bad) != raw:
            assert shmem.decode_spec(bytes(bad), 41) == "checksum mismatch", i
