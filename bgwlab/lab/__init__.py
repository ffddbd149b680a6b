"""The lab: what stands on the engine to study it and to measure it.

* ``strategies`` -- how a registrant waits for its worker (notify, timeout(T), poll_pid),
  and the sentinel worker every trial runs;
* ``load`` -- a busy machine on demand: CPU hogs, postmaster stalls;
* ``experiments`` -- scenarios x strategies x T x load, judged against the event log;
  results files and their run metadata;
* ``plots`` -- the figures;
* ``widgets`` -- the notebooks' controls: cluster panel, live timeline, experiment panel;
* ``teaching`` -- small helpers that keep the notebooks' cells short;
* ``cli`` -- the ``bgwlab`` command.

The engine stays at the top of the package, and so do its public names (``from bgwlab
import Cluster``).  This package imports nothing by itself: the postmaster preloads
``bgwlab.lab.strategies``, so ``import bgwlab.lab`` must stay cheap; matplotlib, pandas
and ipywidgets load only with the modules (or the calls) that draw and tabulate.
"""
