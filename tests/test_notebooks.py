"""Every teaching notebook runs top to bottom, headless, in quick mode -- and is stored right.

* Each ``notebooks/NN_name.ipynb`` (what JupyterLab opens) is executed with nbclient in a
  kernel of *this* venv (a kernelspec pointing at ``sys.executable``, put first on
  ``JUPYTER_PATH``), with ``BGWLAB_QUICK=1``; any error fails the test.  A last cell checks
  that the kernel really ran this venv's Python.
* Each pair is in sync: the ``.py`` (py:percent, the reviewable source) and the ``.ipynb``
  hold the same cells, and the committed ``.ipynb`` has no outputs.
* Each teaching notebook (00-09) is a lesson a student *does*: a "predict first" that a
  ``predictions(...)`` cell sets beside the measurement, a code exercise whose worked
  solution is a cell tagged ``solution`` followed by a check cell (``check``/``check_value``),
  and its key claim asserted on the run's data in a cell tagged ``check`` (``claim(...)``),
  which therefore runs here, in CI: a notebook whose data contradict its text fails.

Execution times are written to ``notebook-times.txt`` and printed at the end of the
module; the executed notebooks (with outputs) go to ``notebooks/`` -- both in
``$BGWLAB_TEST_ARTIFACTS`` (default: ``bgwlab-test-artifacts`` in the temp directory, never
inside the checkout).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
ARTIFACTS = Path(os.environ.get("BGWLAB_TEST_ARTIFACTS")
                 or Path(tempfile.gettempdir()) / "bgwlab-test-artifacts")
SOURCES = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))
TIMES: dict[str, float] = {}

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
jupytext = pytest.importorskip("jupytext")


def test_the_sequence_is_complete():
    numbers = [p.name[:2] for p in SOURCES]
    assert numbers[:10] == [f"{i:02d}" for i in range(10)], numbers


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """JUPYTER_PATH with a python3 kernelspec of this venv first, and BGWLAB_QUICK=1.

    Also warms nbclient up once (zmq context, event loop), so that the per-test fd check
    of conftest's ``no_leaks`` sees only what a notebook run leaves behind.
    """
    home = tmp_path_factory.mktemp("jupyter")
    spec_dir = home / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (bgwlab venv)", "language": "python"}))
    saved = {k: os.environ.get(k) for k in ("JUPYTER_PATH", "BGWLAB_QUICK", "MPLBACKEND")}
    os.environ["JUPYTER_PATH"] = str(home) + os.pathsep + os.environ.get("JUPYTER_PATH", "")
    os.environ["BGWLAB_QUICK"] = "1"
    os.environ.pop("MPLBACKEND", None)  # the kernel picks its inline backend itself
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("1 + 1")]
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=60).execute()
    yield
    # nbclient leaves this thread's event loop (an epoll fd and a socketpair) open for
    # reuse; close it so the module leaves nothing behind (jupyter_core makes a new one).
    from jupyter_core.utils import ensure_event_loop

    loop = ensure_event_loop()
    if not loop.is_running():
        loop.close()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module", autouse=True)
def report_times(request):
    yield
    if not TIMES:
        return
    lines = [f"{name:<36} {secs:6.1f} s" for name, secs in sorted(TIMES.items())]
    lines.append(f"{'total':<36} {sum(TIMES.values()):6.1f} s")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "notebook-times.txt").write_text("\n".join(lines) + "\n")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            reporter.write_line("notebook execution times (BGWLAB_QUICK=1):")
            for line in lines:
                reporter.write_line("  " + line)


def _cells(nb):
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_pair_in_sync_and_outputs_stripped(source):
    ipynb = source.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} is missing: run .venv/bin/jupytext --sync {source}"
    from_py = jupytext.read(source)
    from_ipynb = nbformat.read(ipynb, as_version=4)
    assert _cells(from_py) == _cells(from_ipynb), (
        f"{source.name} and {ipynb.name} differ: run .venv/bin/jupytext --sync {source} "
        "(the newer file wins)")
    for c in from_ipynb.cells:
        if c.cell_type == "code":
            assert not c.outputs and c.execution_count is None, (
                f"{ipynb.name} was saved with outputs: run "
                f".venv/bin/jupyter nbconvert --clear-output --inplace {ipynb}")
    assert from_ipynb.metadata.get("kernelspec", {}).get("name") == "python3"


LESSONS = [p for p in SOURCES if p.name[:2] < "10"]


def _tags(cell) -> set:
    return set(cell.get("metadata", {}).get("tags", []))


@pytest.mark.parametrize("source", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_has_exercise_predictions_and_key_claim(source):
    nb = jupytext.read(source)
    cells = nb.cells
    code = [c for c in cells if c.cell_type == "code"]
    solutions = [i for i, c in enumerate(cells) if "solution" in _tags(c)]
    assert solutions, f"{source.name}: no code exercise with a cell tagged 'solution'"
    for i in solutions:
        assert cells[i].cell_type == "code"
        before = [c for c in cells[:i] if c.cell_type == "code"]
        assert before and "..." in before[-1].source, (
            f"{source.name}: the cell before a solution must be the student's, with a ...")
        after = next(c for c in cells[i + 1:] if c.cell_type == "code")
        assert "check" in after.source and not _tags(after) & {"solution", "check"}, (
            f"{source.name}: a solution must be followed by an untagged check cell")
    claims = [c for c in code if "check" in _tags(c)]
    assert claims and all("claim(" in c.source for c in claims), (
        f"{source.name}: no key claim asserted in a cell tagged 'check'")
    text = "\n".join(c.source for c in cells if c.cell_type == "markdown")
    if "Predict first" in text:
        first_predict = next(i for i, c in enumerate(cells) if "Predict first" in c.source)
        assert any("my_prediction" in c.source for c in cells[first_predict:first_predict + 3]), (
            f"{source.name}: 'Predict first' without a cell to write the prediction in")
        assert any("predictions(my_prediction" in c.source for c in code), (
            f"{source.name}: the prediction is never set beside the measurement")
    assert "2015" not in text or "terminate" in text, f"{source.name}: the fork-failure fix was 2017"


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_notebook_runs_clean_in_quick_mode(source, kernel_env):
    nb = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=180,
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    t0 = time.monotonic()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:
        pytest.fail(f"{source.name} failed in quick mode:\n{e}")
    finally:
        (ARTIFACTS / "notebooks").mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, ARTIFACTS / "notebooks" / source.with_suffix(".ipynb").name)
    TIMES[source.stem] = time.monotonic() - t0
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors, errors
    executable = nb.cells[-1].outputs[0]["text"].strip()
    assert Path(executable) == Path(sys.executable), (executable, sys.executable)
    # Every code cell ran (none skipped), and the notebook drew at least one figure.
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)
    images = [o for c in code for o in c.outputs
              if o.output_type in ("display_data", "execute_result")
              and ("image/png" in o.get("data", {})
                   or "application/vnd.jupyter.widget-view+json" in o.get("data", {}))]
    assert images, f"{source.name} produced no figure or widget"
