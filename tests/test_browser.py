"""End to end, in a real browser: JupyterLab on loopback, Debian's Chromium driven by playwright.

The test serves a temporary copy of ``notebooks/09_cluster_panel.ipynb`` (so the real
notebooks are never modified by autosave) with ``jupyter lab`` on 127.0.0.1 (a free port,
a random token, ``--no-browser``), opens it in headless Chromium (``/usr/bin/chromium``,
installed by ``scripts/system-deps.sh``; no browser download), runs every cell from the
Run menu, chooses "sleep forever" in the panel's menu, clicks **register worker**, and waits
until the page shows the worker ``STARTED``; then a second worker whose fork fails must show
``STOPPED``; then **stop cluster**.  Screenshots and the server's log go to the test's
``tmp_path`` (pytest keeps the last three runs' under ``/tmp/pytest-of-$USER/``), never
into the checkout.

Every process it starts (the server, its kernel, the kernel's cluster, Chromium) is stopped
and waited for.  Without Chromium the test fails with instructions; set
``BGWLAB_SKIP_BROWSER=1`` to skip it on a machine without one.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest

from conftest import wait_until

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "09_cluster_panel.ipynb"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.browser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lab_environment(home: Path) -> dict:
    """Private Jupyter dirs (data, settings, workspaces, runtime), quick mode.

    With a private data dir (and no JUPYTER_PATH) the only python3 kernelspec is the venv's
    own (``sys.prefix/share/jupyter/kernels``), which runs the server's Python: this venv's.
    """
    env = dict(os.environ)
    env.pop("JUPYTER_PATH", None)
    settings = home / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    env.update(JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_DATA_DIR=str(home / "data"),
               JUPYTER_RUNTIME_DIR=str(home / "runtime"), JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
               BGWLAB_QUICK="1", JUPYTER_PLATFORM_DIRS="1")
    env.pop("MPLBACKEND", None)
    return env


class JupyterLab:
    """``jupyter lab`` in its own session, logged to a file; ``stop()`` ends it and its kernels."""

    def __init__(self, root: Path, home: Path, log_path: Path):
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.base = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
               f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={root}",
               "--LabApp.news_url=None",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        if os.geteuid() == 0:
            cmd.append("--allow-root")
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=root, env=lab_environment(home), stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.seen: dict[int, psutil.Process] = {}

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"jupyter lab exited with {self.proc.returncode}; see {self.log.name}")
        try:
            with urllib.request.urlopen(f"{self.base}/api/status?token={self.token}", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def remember_descendants(self) -> None:
        """Note every process below the server (kernel, postmaster, workers) to wait for them later."""
        try:
            for p in psutil.Process(self.proc.pid).children(recursive=True):
                self.seen.setdefault(p.pid, p)
        except psutil.NoSuchProcess:
            pass

    def stop(self) -> list:
        """SIGTERM (the server shuts its kernels down), then wait for every process it had.

        Returns the processes that had to be killed (should be none).
        """
        self.remember_descendants()
        killed = []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                killed.append(("jupyter lab", self.proc.pid))
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        _gone, alive = psutil.wait_procs(list(self.seen.values()), timeout=20)
        for p in alive:
            killed.append((p.name(), p.pid))
            p.kill()
        psutil.wait_procs(alive, timeout=5)
        return killed


@pytest.fixture
def chromium_path():
    if os.environ.get("BGWLAB_SKIP_BROWSER") == "1":
        pytest.skip("BGWLAB_SKIP_BROWSER=1")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (as root: "
                    "`bash scripts/system-deps.sh`, which `make test` runs), or set "
                    "BGWLAB_SKIP_BROWSER=1 to skip this test on this machine")
    return CHROMIUM


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cluster_panel_in_jupyterlab_in_chromium(chromium_path, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    lab = JupyterLab(root, tmp_path / "jupyter", artifacts / "jupyterlab.log")
    killed = []
    try:
        wait_until(lab.ready, timeout=90, interval=0.2, what="jupyter lab to answer /api/status")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1300})
                page.goto(f"{lab.base}/lab/tree/{NOTEBOOK.name}?token={lab.token}")
                expect(page.locator(".jp-Notebook").first).to_be_visible(timeout=90_000)
                idle = page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")
                expect(idle).to_have_count(1, timeout=90_000)

                expect(page.locator(".jp-StatusBar-Widget", has_text="| Idle")).to_have_count(
                    1, timeout=90_000)

                page.get_by_role("menuitem", name="Run", exact=True).click()
                page.get_by_role("menuitem", name="Run All Cells", exact=True).click()

                panel = page.locator(".bgwlab-cluster-panel")
                dialog_accept = page.locator(".jp-Dialog .jp-mod-accept")

                def panel_shown():
                    # If JupyterLab asks which kernel to use (it may, when "Run All" races
                    # the session's start), take the preferred one, as a user would.
                    if dialog_accept.count():
                        dialog_accept.first.click()
                    return panel.count() and panel.is_visible()

                wait_until(panel_shown, timeout=120, interval=0.25, what="the cluster panel to render")
                expect(panel.locator(".bgw-state")).to_have_text("[running]", timeout=60_000)
                lab.remember_descendants()  # kernel, postmaster
                kernels = [p for p in lab.seen.values() if "ipykernel_launcher" in " ".join(p.cmdline())]
                assert len(kernels) == 1 and Path(kernels[0].cmdline()[0]).parent == Path(sys.executable).parent, \
                    "the kernel must be this venv's Python"

                panel.locator("select").nth(0).select_option("sleep forever")
                panel.get_by_role("button", name="register worker").click()
                first = panel.locator("tr[data-worker='w1'] .bgw-status")
                expect(first).to_have_text("STARTED", timeout=30_000)
                lab.remember_descendants()  # the worker
                panel.locator("select").nth(1).select_option("fork fails (EAGAIN)")
                panel.get_by_role("button", name="register worker").click()
                expect(panel.locator("tr[data-worker='w2'] .bgw-status")).to_have_text(
                    "STOPPED", timeout=30_000)
                expect(panel.locator("tr[data-worker='w2']")).to_contain_text("STOPPED after")
                expect(panel).to_contain_text("fork_failed", timeout=10_000)
                expect(panel.locator("img")).to_have_count(1)
                page.wait_for_function(  # the live timeline has caught up with the event log
                    "() => { const q = s => document.querySelector('.bgwlab-cluster-panel ' + s);"
                    " const log = q('.bgw-events'), drawn = q('.bgw-timeline-caption'), img = q('img');"
                    " return log && drawn && img && img.naturalHeight > 200"
                    " && log.dataset.n === drawn.dataset.n; }", timeout=20_000)
                expect(first).to_have_text("STARTED")  # still running

                panel.scroll_into_view_if_needed()
                panel.screenshot(path=str(artifacts / "cluster-panel.png"))
                page.screenshot(path=str(artifacts / "jupyterlab.png"))

                panel.get_by_role("button", name="stop cluster").click()
                expect(panel.locator(".bgw-state")).to_have_text("[stopped]", timeout=30_000)
                expect(first).to_have_text("STOPPED", timeout=30_000)
            finally:
                browser.close()
    finally:
        killed = lab.stop()
    assert not killed, f"processes that did not exit by themselves: {killed}"
    assert (artifacts / "cluster-panel.png").stat().st_size > 10_000
