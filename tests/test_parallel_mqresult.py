"""MqResult (shm_mq_result) without the enum module: every public behaviour it had as an
``enum.Enum`` is kept, compared here with an Enum of the same members; and a process that
imports the worker side of bgwlab.parallel no longer loads enum and what enum brings."""

from __future__ import annotations

import copy
import enum
import os
import pickle
import subprocess
import sys

from bgwlab.parallel import DETACHED, SUCCESS, WOULD_BLOCK, MqResult


class Old(enum.Enum):  # MqResult as it was
    SUCCESS = "success"
    WOULD_BLOCK = "would_block"
    DETACHED = "detached"


def _same_text(new, old):
    return (repr(new).replace("MqResult", "Old") == repr(old) and str(new).replace("MqResult", "Old") == str(old)
            and f"{new}".replace("MqResult", "Old") == f"{old}")


def test_members_compare_print_and_look_up_as_the_enum_did():
    assert [m.name for m in MqResult] == [m.name for m in Old]
    assert [m.value for m in MqResult] == [m.value for m in Old]
    assert (SUCCESS, WOULD_BLOCK, DETACHED) == tuple(MqResult) and len(MqResult) == 3
    for new, old in zip(MqResult, Old):
        assert _same_text(new, old)
        assert MqResult(old.value) is new and MqResult[old.name] is new
        assert getattr(MqResult, old.name) is new and isinstance(new, MqResult)
        assert new in MqResult and MqResult.__members__[old.name] is new
        assert new == new and new is not None and (new != SUCCESS) == (old is not Old.SUCCESS)
        assert pickle.loads(pickle.dumps(new)) is new and copy.copy(new) is new and copy.deepcopy(new) is new
        assert bool(new) and {new: 1}[new] == 1
    assert repr(MqResult) == "<enum 'MqResult'>"
    assert SUCCESS != "success" and SUCCESS != Old.SUCCESS  # a member equals only itself


def test_members_are_read_only_and_unknown_values_raise():
    for bad in (lambda: setattr(SUCCESS, "value", "x"), lambda: delattr(SUCCESS, "name")):
        try:
            bad()
        except AttributeError:
            pass
        else:
            raise AssertionError("a member changed")
    for call, exc in ((lambda: MqResult("nope"), ValueError), (lambda: MqResult["NOPE"], KeyError)):
        try:
            call()
        except exc:
            pass
        else:
            raise AssertionError("no error")


def test_the_worker_side_does_not_load_enum():
    """``python -S`` importing what a parallel cluster's postmaster preloads: no enum (nor
    collections, functools, ... that it brings)."""
    code = ("import sys; import bgwlab.parallel.worker, bgwlab.parallel.examples; "
            "print(' '.join(m for m in ('enum', 'collections', 'functools', 'reprlib', 'types') "
            "if m in sys.modules))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=root, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": root}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
