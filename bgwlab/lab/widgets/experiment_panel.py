"""The experiment panel: sliders for T, load and trials, and notification vs timeout re-run live.

``ExperimentController`` runs ``bgwlab.lab.experiments.run_grid`` trial by trial in a
background thread and sums up the verdicts per scenario and strategy; it never imports
ipywidgets.  ``ExperimentPanel`` is its ipywidgets view: the sliders, a run button with
a progress bar, the verdicts table and the headline figure of what ran (notebook 05).
"""

from __future__ import annotations

import io
import threading

from .common import _esc, _install_dispatcher, on_draw_thread

__all__ = ["LOAD_NAMES", "ExperimentController", "ExperimentPanel"]

LOAD_NAMES = ("idle", "hogs", "stalls", "busy")
"""The loads of ``bgwlab.lab.experiments.run_grid`` offered by the experiment panel."""


# -- the experiment panel's model ------------------------------------------------------------
class ExperimentController:
    """Re-runs a small notification-vs-timeout experiment for chosen T, load and trials.

    ``start(T, load, trials)`` runs ``bgwlab.lab.experiments.run_grid`` trial by trial in a
    background thread (the progress counters ``done``/``total`` advance after each
    trial); ``wait()`` joins it; ``results`` is the DataFrame so far.  ``cancel()`` stops
    after the current trial.
    """

    def __init__(self, scenarios=("ok", "fork_failure"), strategies=("notify", "timeout"),
                 on_progress=None):
        self.scenarios = tuple(scenarios)
        self.strategies = tuple(strategies)
        self.on_progress = on_progress
        self.results = None
        self.error: str | None = None
        self.done = 0
        self.total = 0
        self.finished = True
        self.params: dict = {}
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()
        _install_dispatcher()  # the runs connect from a background thread

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout_s: float, load: str, trials: int) -> None:
        """Run in the background: ``trials`` rounds of every scenario x strategy at (T, load).

        ``load``: a load name of ``run_grid`` (``"idle"``, ``"hogs"``, ``"stalls"``, ``"busy"``).
        """
        if self.running:
            raise RuntimeError("an experiment is already running; cancel() it or wait()")
        if trials < 1:
            raise ValueError("trials must be at least 1")
        self.params = dict(timeout_s=float(timeout_s), load=str(load), trials=int(trials))
        self.done, self.total = 0, int(trials)
        self.results, self.error = None, None
        self.finished = False
        self._cancel.clear()
        self._thread = threading.Thread(target=self._run, name="bgwlab-experiment", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import pandas as pd

        from .. import experiments

        p = self.params
        parts = []
        try:
            for trial in range(p["trials"]):
                if self._cancel.is_set():
                    break
                df = experiments.run_grid(list(self.scenarios), list(self.strategies),
                                          [p["timeout_s"]], [p["load"]], 1,
                                          progress=False, seed=trial)
                df["trial"] = trial
                parts.append(df)
                self.results = pd.concat(parts, ignore_index=True)
                self.results.attrs.update(parts[0].attrs)
                self.done = trial + 1
                self._progress()
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"
        self.finished = True
        self._progress()

    def _progress(self):
        if self.on_progress is not None:
            try:
                self.on_progress()
            except Exception:
                pass

    def wait(self, timeout: float | None = None) -> bool:
        """Join the run; True if it has finished."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running

    def cancel(self) -> None:
        self._cancel.set()

    def summary(self):
        """Per scenario x strategy: trials, median time to verdict, wrong verdicts (a timed_out
        failure counts as right), spurious timeouts, and the verdicts (a DataFrame)."""
        df = self.results
        if df is None or df.empty:
            return None
        g = df.groupby(["scenario", "strategy"])
        out = g.agg(trials=("trial", "size"),
                    median_ms=("time_to_verdict_ms", "median"),
                    wrong=("correct", lambda c: int((~c.astype(bool)).sum())),
                    spurious=("spurious_timeout", lambda c: int(c.astype(bool).sum())))
        out["verdicts"] = g["verdict"].agg(lambda v: ", ".join(f"{k}:{n}" for k, n in v.value_counts().items()))
        return out.reset_index()


# -- the view -------------------------------------------------------------------------------
class ExperimentPanel:
    """Sliders for T, load and trials; "run" re-runs the experiment in a thread with a progress bar.

    Shows the verdicts per scenario and strategy, and the headline figure of what ran.
    """

    def __init__(self, scenarios=("ok", "fork_failure"), strategies=("notify", "timeout"),
                 T=0.05, load="idle", trials=3, max_trials=30):
        import ipywidgets as w

        self.controller = ExperimentController(scenarios, strategies, on_progress=self._on_progress)
        self.T = w.FloatLogSlider(value=T, base=10, min=-2, max=1, step=0.1, description="T (s)",
                                  readout_format=".2f", continuous_update=False)
        self.load = w.SelectionSlider(options=list(LOAD_NAMES), value=load, description="load",
                                      continuous_update=False)
        self.trials = w.IntSlider(value=trials, min=1, max=max_trials, description="trials",
                                  continuous_update=False)
        self.run_button = w.Button(description="run", icon="play", button_style="primary")
        self.cancel_button = w.Button(description="cancel", icon="stop")
        self.progress = w.IntProgress(value=0, min=0, max=1, description="0 / 0")
        self.table = w.HTML()
        self.figure = w.Image(format="png", layout=w.Layout(width="100%", max_width="820px"))
        self.run_button.on_click(lambda _: self.run())
        self.cancel_button.on_click(lambda _: self.controller.cancel())
        self.widget = w.VBox([w.HBox([self.T, self.load, self.trials]),
                              w.HBox([self.run_button, self.cancel_button, self.progress]),
                              self.table, self.figure])
        self.widget.add_class("bgwlab-experiment-panel")

    def run(self):
        """Start a run with the sliders' values (returns at once; the run is in a thread)."""
        c = self.controller
        if c.running:
            return
        # The view is set up *before* the run starts: a short run may finish (and its last
        # progress report enable the button and fill the bar) before start() returns.
        trials = int(self.trials.value)
        self.progress.max = max(1, trials)
        self.progress.value = 0
        self.progress.description = f"0 / {trials}"
        self.run_button.disabled = True
        self.table.value = f"<i>running: T={self.T.value:.3f} s, load {self.load.value}…</i>"
        try:
            c.start(self.T.value, self.load.value, trials)
        except Exception:
            self.run_button.disabled = False
            raise

    def _on_progress(self):
        c = self.controller
        self.progress.value = c.done
        self.progress.description = f"{c.done} / {c.total}"
        s = c.summary()
        if s is not None:
            self.table.value = s.to_html(index=False, float_format=lambda x: f"{x:.1f}")
        if c.error:
            self.table.value += f"<p style='color:#b00020'>{_esc(c.error)}</p>"
        if c.finished:
            self.run_button.disabled = False
            if c.results is not None and not c.results.empty:
                self.figure.value = _headline_png(c.results)

    def wait(self, timeout=None) -> bool:
        return self.controller.wait(timeout)

    def close(self):
        self.controller.cancel()
        self.controller.wait(60)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


def _headline_png(df) -> bytes:
    return on_draw_thread(_render_headline, df)


def _render_headline(df) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .. import plots

    fig = Figure(figsize=(10, 3.6), dpi=90, layout="constrained")
    FigureCanvasAgg(fig)
    plots.plot_headline(df, ax=list(fig.subplots(1, 2)))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
