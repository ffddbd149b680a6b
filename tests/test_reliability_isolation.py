"""Isolation (issue 5, item 5): a cluster is private to the user who started it.

The directory is 0700 and the segment, lock and event log 0600.  A process of another
user -- a test child that drops privileges to ``nobody`` -- cannot attach, register,
read, or signal the postmaster or a worker, and gets a clear error: ``NotACluster``
saying the cluster belongs to another user, or the kernel's PermissionError.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat

import pytest

import bgwlab

from reliability_helpers import finish, helper, make_spec, read_msg


def _nobody():
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        return None


needs_root = pytest.mark.skipif(os.geteuid() != 0 or _nobody() is None,
                                reason="needs root (to drop privileges to nobody in a child)")


def test_directory_and_files_are_private_to_their_owner(cluster, backend):
    d = cluster.directory
    st = os.stat(d)
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
    for name in ("shmem", "registration.lock", "events.jsonl", "postmaster.pid"):
        st = os.stat(d / name)
        assert stat.S_IMODE(st.st_mode) & 0o077 == 0, f"{name} is {oct(st.st_mode)}"
        assert st.st_uid == os.geteuid()
    assert stat.S_IMODE(os.stat(d / "shmem").st_mode) == 0o600


def test_cluster_in_a_directory_of_another_user_is_refused(tmp_path):
    if os.geteuid() != 0 or _nobody() is None:
        pytest.skip("needs root to make a directory owned by nobody")
    d = tmp_path / "theirs"
    d.mkdir(mode=0o700)
    os.chown(d, _nobody().pw_uid, _nobody().pw_gid)
    with pytest.raises(bgwlab.BgwError, match="another user"):
        bgwlab.Cluster.start(max_workers=1, directory=d)
    assert os.listdir(d) == []


@needs_root
def test_another_user_cannot_attach_register_read_or_signal(cluster, backend):
    h = backend.register_dynamic_worker(make_spec("forever"))
    status, worker_pid = h.wait_for_startup(timeout=10)
    assert status.value == "started"
    events_before = len(cluster.events())
    p = helper("foreign", cluster.directory, cluster.postmaster_pid, worker_pid, "nobody")
    try:
        out = read_msg(p, timeout=60)
    finally:
        finish(p)
    assert out["uid"] == out["euid"] == _nobody().pw_uid and out["groups"] == []
    # Joining: a clear, typed error that says whose cluster it is and what to do.
    for name in ("attach", "backend"):
        r = out[name]
        assert not r["ok"] and r["type"] == "NotACluster", r
        assert "another user" in r["message"] and "Cluster.start()" in r["message"], r
    # Reading or mapping anything in the directory: the kernel says no.
    for name in ("open_segment", "open_lock", "read_events", "list_directory"):
        r = out[name]
        assert not r["ok"] and r["type"] == "PermissionError" and r["errno"] == errno.EACCES, (name, r)
    # Signalling the postmaster or a worker, by pid or by pidfd: EPERM.
    for name in ("signal_postmaster", "terminate_postmaster", "signal_worker", "pidfd_signal_postmaster"):
        r = out[name]
        assert not r["ok"] and r["type"] == "PermissionError" and r["errno"] == errno.EPERM, (name, r)
    # Taking over the directory with a cluster of its own: refused with a clear message.
    r = out["start_cluster_in_directory"]
    assert not r["ok"] and "another user" in r["message"], r
    # Nothing happened to the cluster: same worker, running, no event from the intruder.
    assert cluster.alive and cluster.state() == "running"
    assert h.get_pid() == (status, worker_pid)
    evs = cluster.events()
    assert not [e for e in evs[events_before:] if e.pid == p.pid]
    assert not [e for e in evs if e.kind in ("postmaster_stopping", "terminate_seen")]
    h.terminate()
    assert h.wait_for_shutdown(timeout=10).value == "stopped"
