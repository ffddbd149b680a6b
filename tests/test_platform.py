"""Off Linux, or on a Linux older than 5.3, the engine refuses with what to do.

macOS, Windows and an old kernel are simulated in a subprocess, before ``import
bgwlab``: ``sys.platform`` is changed, the Linux-only calls are taken away
(``os.pipe2``, ``os.pidfd_open``, ``os.eventfd``; ``fcntl`` on Windows), or
``os.uname()`` reports an old release.  Then ``import bgwlab`` and the pure-Python
names must work, the engine must raise ``UnsupportedPlatform`` with the advice, and
nothing Linux-only may have been imported.  The Makefile's guard is run with
``UNAME_S`` overridden, and must print the same words.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import bgwlab
from bgwlab import platform_check

ROOT = Path(__file__).resolve().parent.parent
LINUX_ONLY = ("bgwlab.cluster", "bgwlab.backend", "bgwlab.latch", "bgwlab.procinfo",
              "bgwlab.postmaster", "bgwlab.worker", "fcntl")

# Runs in a fresh interpreter: pretend to be another system, then use bgwlab.
SIMULATE = r'''
import json, os, sys
system, action = sys.argv[1], sys.argv[2]
if system == "darwin":
    sys.platform = "darwin"
    for name in ("pipe2", "pidfd_open", "eventfd", "eventfd_read", "eventfd_write"):
        delattr(os, name)
elif system == "win32":
    sys.platform = "win32"
    sys.modules["fcntl"] = None          # import fcntl -> ImportError, as on Windows
    for name in ("pipe2", "pidfd_open", "eventfd", "fork", "getuid"):
        delattr(os, name)
elif system.startswith("linux-"):        # linux-RELEASE: an old kernel
    real = os.uname()
    fake = os.uname_result((real.sysname, real.nodename, system[6:], real.version, real.machine))
    os.uname = lambda: fake
if action == "submodule" and system != "win32":
    import subprocess  # imports fcntl on POSIX (macOS has it): not the engine's doing
preloaded = {m for m in ("fcntl",) if sys.modules.get(m) is not None}

out = {}
import bgwlab
spec = bgwlab.WorkerSpec(name="hello", entry="bgwlab.examples:sleep_ms", main_arg=5,
                         restart=bgwlab.NEVER_RESTART)
out["spec"] = spec.name
out["event"] = bgwlab.Event(t_ns=1, kind="forked", source="postmaster", pid=2).kind
out["read_events"] = bgwlab.read_events("/nonexistent/events.jsonl")
out["is_bgw_error"] = issubclass(bgwlab.UnsupportedPlatform, bgwlab.BgwError)
try:
    if action == "attr":
        bgwlab.Cluster
    elif action == "from-import":
        from bgwlab import attach
    elif action == "submodule":
        from bgwlab.lab.experiments import run_grid
    elif action == "fault":
        out["fault"] = bgwlab.Fault.crash_before_main(exit_code=1).describe()
        raise SystemExit
except bgwlab.UnsupportedPlatform as e:
    out["error"] = str(e)
except SystemExit:
    pass
try:                                     # a second use: the same refusal, from the cache
    bgwlab.Backend
except bgwlab.UnsupportedPlatform as e:
    out["second_error"] = str(e)
out["imported"] = sorted(m for m in sys.modules
                         if m.startswith("bgwlab.") or (m == "fcntl" and sys.modules[m] is not None))
out["preloaded"] = sorted(preloaded)
print(json.dumps(out))
'''


def simulate(system: str, action: str = "attr") -> dict:
    r = subprocess.run([sys.executable, "-c", SIMULATE, system, action], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"simulated {system}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def assert_no_linux_only_import(out: dict) -> None:
    leaked = [m for m in LINUX_ONLY if m in out["imported"] and m not in out["preloaded"]]
    assert not leaked, f"imported although the platform is unsupported: {leaked}"


@pytest.mark.parametrize("action", ["attr", "from-import", "submodule"])
def test_macos_refuses_the_engine_with_advice(action):
    out = simulate("darwin", action)
    assert out["spec"] == "hello" and out["event"] == "forked" and out["read_events"] == []
    assert out["is_bgw_error"]
    msg = out["error"]
    assert msg == platform_check.MACOS
    assert "Linux" in msg and "kernel >= 5.3" in msg and "macOS" in msg
    assert ".devcontainer/" in msg and "Linux VM" in msg
    assert out["second_error"] == msg
    assert_no_linux_only_import(out)


@pytest.mark.parametrize("action", ["attr", "from-import", "submodule"])
def test_windows_refuses_the_engine_with_advice(action):
    out = simulate("win32", action)
    assert out["spec"] == "hello" and out["event"] == "forked" and out["read_events"] == []
    msg = out["error"]
    assert msg == platform_check.WINDOWS
    assert "Linux" in msg and "kernel >= 5.3" in msg and "Windows" in msg
    assert "WSL 2" in msg and "wsl --install" in msg and ".devcontainer/" in msg
    assert out["second_error"] == msg
    assert_no_linux_only_import(out)


@pytest.mark.parametrize("release, words", [
    ("4.19.0-21-amd64", ["this kernel is 4.19.0-21-amd64", "newer kernel"]),
    ("3.10.0-1160.el7.x86_64", ["this kernel is 3.10.0-1160.el7.x86_64"]),
    ("5.2.21", ["this kernel is 5.2.21"]),
    ("4.4.0-19041-Microsoft", ["WSL 1", "wsl --set-version"]),
    ("4.19.128-microsoft-standard", ["WSL 2 with an old kernel", "wsl --update"]),
])
@pytest.mark.parametrize("action", ["attr", "submodule"])
def test_old_kernel_refuses_the_engine_with_advice(release, words, action):
    out = simulate(f"linux-{release}", action)
    assert out["spec"] == "hello"
    msg = out["error"]
    assert "Linux" in msg and "kernel >= 5.3" in msg
    for w in words:
        assert w in msg
    assert out["second_error"] == msg
    assert_no_linux_only_import(out)


@pytest.mark.parametrize("release", ["5.3.0", "5.3-rc1", "5.10.16.3-microsoft-standard-WSL2", "6.8.0-45-generic",
                                     "10.0.0", "weird"])
def test_new_enough_kernel_is_accepted(release):
    assert platform_check.problem(platform="linux", release=release) is None


def test_python_without_pidfd_open_is_refused():
    class NoPidfd:
        def __getattr__(self, name):
            if name == "pidfd_open":
                raise AttributeError(name)
            return getattr(os, name)

    msg = platform_check.problem(platform="linux", release="6.1.0", osmod=NoPidfd())
    assert "has no os.pidfd_open" in msg and "kernel >= 5.3" in msg


def test_seccomp_refusing_pidfd_open_is_explained():
    class Seccomp:
        def pidfd_open(self, pid):
            raise PermissionError(1, "Operation not permitted")

        def __getattr__(self, name):
            return getattr(os, name)

    assert platform_check.problem(platform="linux", release="6.1.0", osmod=Seccomp()) is None  # no probe
    msg = platform_check.problem(platform="linux", release="6.1.0", osmod=Seccomp(), probe=True)
    assert "EPERM" in msg and "seccomp" in msg and "Docker" in msg


def test_the_import_time_gate_agrees_with_the_check():
    for release in ("4.4.0-19041-Microsoft", "4.19.0", "5.2.99", "5.3.0", "5.3-rc1", "6.8.0+",
                    "10.1", "", "x.y", "5"):
        version = bgwlab._kernel_version(release)
        gate = version is None or version >= platform_check.MIN_KERNEL
        assert gate == (platform_check.problem(platform="linux", release=release) is None), release


def test_fault_works_on_windows():
    r = subprocess.run([sys.executable, "-c", SIMULATE.replace(
        'sys.modules["fcntl"] = None',
        'sys.modules["fcntl"] = None\n    import signal\n'
        '    for name in ("SIGSTOP", "SIGCONT", "SIGCHLD", "SIGURG", "SIGWINCH", "SIGKILL", "SIGUSR1"):\n'
        '        delattr(signal, name)'), "win32", "fault"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["fault"] == "exit(1) before main"


def test_fault_works_on_macos():
    out = simulate("darwin", "fault")
    assert out["fault"] == "exit(1) before main"
    assert_no_linux_only_import(out)


def test_postmaster_and_cli_print_the_advice_not_a_traceback():
    script = r'''
import os, runpy, sys
sys.platform = "darwin"
for name in ("pipe2", "pidfd_open", "eventfd"):
    delattr(os, name)
if sys.argv[1] == "postmaster":
    sys.argv = ["bgwlab.postmaster", "/nonexistent"]
    runpy.run_module("bgwlab.postmaster", run_name="__main__", alter_sys=True)
else:
    from bgwlab.lab.cli import main
    sys.exit(main(["list"]))
'''
    for what in ("postmaster", "cli"):
        r = subprocess.run([sys.executable, "-c", script, what], cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 1, (what, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr, (what, r.stderr)
        assert r.stderr.strip() == f"UnsupportedPlatform: {platform_check.MACOS}", (what, r.stderr)


def test_this_linux_runs_the_engine():
    if not sys.platform.startswith("linux"):
        pytest.skip("not Linux")
    assert platform_check.problem(probe=True) is None
    assert platform_check.supported()
    platform_check.check()  # does not raise
    assert bgwlab.Cluster.__name__ == "Cluster" and bgwlab.attach and bgwlab.Backend
    assert "UnsupportedPlatform" in bgwlab.__all__ and "UnsupportedPlatform" in dir(bgwlab)
    assert platform_check.EngineGuard not in sys.meta_path


def test_the_postmaster_does_not_load_the_check():
    # python -S -m bgwlab.postmaster imports the package: on a good Linux the gate is a
    # uname(), and neither platform_check nor a meta_path finder is loaded.
    r = subprocess.run([sys.executable, "-S", "-c",
                        "import sys, bgwlab.postmaster; print('bgwlab.platform_check' in sys.modules, "
                        "any(type(f).__name__ == 'EngineGuard' or getattr(f, '__name__', '') == 'EngineGuard' "
                        "for f in sys.meta_path))"],
                       cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False"]


def test_unsupported_platform_is_exported_and_a_bgw_error():
    assert bgwlab.UnsupportedPlatform.__module__ == "bgwlab.errors"
    assert issubclass(bgwlab.UnsupportedPlatform, bgwlab.BgwError)
    e = bgwlab.UnsupportedPlatform(platform_check.MACOS)
    assert e._render_traceback_() == [f"UnsupportedPlatform: {platform_check.MACOS}"]


# --- the Makefile -------------------------------------------------------------------

def make(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("make") is None:
        pytest.skip("no make")
    # A venv and a Python that cannot work: if the guard let anything through, it fails loudly.
    return subprocess.run(["make", "--no-print-directory", *args, "VENV=/nonexistent/venv",
                           "PYTHON=/nonexistent/python"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("uname, expected", [
    ("Darwin", platform_check.MACOS),
    ("Windows_NT", platform_check.WINDOWS),
    ("MINGW64_NT-10.0-19045", platform_check.WINDOWS),
    ("MSYS_NT-10.0-22631", platform_check.WINDOWS),
    ("CYGWIN_NT-10.0", platform_check.WINDOWS),
])
@pytest.mark.parametrize("target", ["lab", "test", "setup"])
@pytest.mark.parametrize("jobs", ["-j1", "-j4"])
def test_makefile_refuses_with_the_same_words(uname, expected, target, jobs):
    r = make(jobs, f"UNAME_S={uname}", target)
    assert r.returncode != 0
    assert r.stdout.strip() == expected  # nothing else ran: no venv, no pip, no jupyter
    assert "platform-check" in r.stderr and "/nonexistent" not in r.stderr


def test_makefile_refuses_other_systems():
    r = make("UNAME_S=FreeBSD", "lab")
    assert r.returncode != 0
    assert "needs Linux, kernel >= 5.3" in r.stdout and "this is FreeBSD." in r.stdout


def test_makefile_lab_command_on_linux():
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    if shutil.which("make") is None:
        pytest.skip("no make")

    def lab(*args, **extra_env):
        r = subprocess.run(["make", "--no-print-directory", "-n", "UNAME_S=Linux", "lab", *args],
                           cwd=ROOT, env={**env, **extra_env}, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip().splitlines()[-1].split()

    cmd = lab()
    assert cmd[0].endswith("/bin/jupyter") and cmd[1] == "lab" and cmd[-1] == "notebooks/"
    assert "--ip=localhost" in cmd and "--no-browser" in cmd
    assert ("--allow-root" in cmd) == (os.geteuid() == 0)
    assert "--no-browser" not in lab(DISPLAY=":0")
    assert "--no-browser" not in lab(WAYLAND_DISPLAY="wayland-0")
    cmd = lab("LAB_IP=0.0.0.0", "LAB_ARGS=--port=9999")
    assert "--ip=0.0.0.0" in cmd and "--port=9999" in cmd


def test_makefile_words_are_the_modules_words():
    # The Makefile keeps its own copy (it must work without Python): the same text.
    text = (ROOT / "Makefile").read_text()
    blocks = re.findall(r"define PLATFORM_HELP\n(.*?)\nendef", text, re.S)
    assert platform_check.MACOS in blocks and platform_check.WINDOWS in blocks
