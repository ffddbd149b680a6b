"""The worker's side of bgwlab.parallel stays lean: what a postmaster preloads for it is
copied by every fork() and faulted in, page by page, by every worker (issue 13 item 7).

Pinned in a real worker: a cluster that preloads ``bgwlab.parallel.worker`` (as
bench_parallel's does) forks workers whose image holds none of the leader's modules
(context.py's ``bgwlab.spec`` -> dataclasses, inspect, ast, ...) and none of what the old
dsm.py and worker.py pulled in (secrets -> hmac, hashlib, random; traceback; importlib).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from bgwlab import Cluster
from bgwlab.parallel import ParallelContext
from parallel_support import no_segment_left  # noqa: F401

# Leader-only or error-path modules: a worker that attaches and reports must not hold them.
NOT_IN_A_WORKER = ("bgwlab.parallel.context", "bgwlab.spec", "dataclasses", "inspect", "ast",
                   "dis", "tokenize", "secrets", "hmac", "hashlib", "_hashlib", "random",
                   "base64", "traceback", "linecache", "weakref",
                   # the leader's latch side: bgwlab.latch -> threading (an at-fork hook in
                   # every child), and platform (-> re) for one machine name
                   "bgwlab.latch", "threading", "platform", "re")


@pytest.fixture
def lean_cluster():
    c = Cluster.start(max_workers=2, preload=("bgwlab.parallel.worker",))
    b = c.connect()
    try:
        yield c, b
    finally:
        b.detach()
        c.stop()


def test_a_real_worker_holds_none_of_the_leaders_modules(lean_cluster):
    _c, b = lean_cluster
    with ParallelContext(b, "parallel_import_probe:report_modules", nworkers=1) as pcxt:
        assert pcxt.launch() == 1
        [(number, msg)] = list(pcxt.messages())
        pcxt.wait_for_finish()
    held = set(msg.decode().split())
    assert number == 0 and "bgwlab.parallel.worker" in held and "parallel_import_probe" in held
    assert sorted(held.intersection(NOT_IN_A_WORKER)) == []


def test_importing_the_worker_side_does_not_load_the_leader_side():
    code = ("import sys; import bgwlab.parallel.worker; "
            "print(' '.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         check=True, cwd=str(__import__("pathlib").Path(__file__).parent.parent))
    held = set(out.stdout.split())
    assert "bgwlab.parallel.worker" in held
    # (importlib too: a worker that imports its entry's module from a file may load it
    # through the import system, but the preloaded worker side itself does not)
    assert sorted(held.intersection(NOT_IN_A_WORKER + ("importlib",))) == []


def test_the_public_api_is_unchanged():
    import bgwlab.parallel as P

    for name in P.__all__:
        assert getattr(P, name) is not None
    assert P.ParallelContext is ParallelContext and P.WorkerState.__name__ == "WorkerState"
    assert {"ParallelContext", "WorkerState", "dsm"} <= set(dir(P)) | {"dsm"}
    with pytest.raises(AttributeError):
        P.no_such_name  # noqa: B018
