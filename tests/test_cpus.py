"""CPU hogs and default parallelism follow the CPUs this process may use (issue 14 item 4).

``bgwlab.lab.load.usable_cpus()`` = the affinity (``os.sched_getaffinity``) capped by the
cgroup's CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), never
``os.cpu_count()``.  Checked three ways: a real subprocess with a restricted affinity, fake
cgroup trees (v1, v2, hybrid, nested, a container's mount), and -- as root, where the
machine allows it -- a real cgroup with a CPU quota.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from bgwlab.lab.load import LOADS, CpuHogs, cgroup_cpu_quota, cpu_info, usable_cpus

_CHILD = (
    "import json, psutil\n"
    "from bgwlab.lab.load import CpuHogs, LOADS, usable_cpus, cpu_info\n"
    "with CpuHogs() as hogs:\n"
    "    children = len(psutil.Process().children())\n"
    "print(json.dumps({'usable': usable_cpus(), 'hogs': hogs.n, 'children': children,\n"
    "                  'busy': LOADS['busy'].n_hogs, 'info': cpu_info()}))\n"
)


def _run_child(preexec=None, argv_prefix=()):
    out = subprocess.run([*argv_prefix, sys.executable, "-c", _CHILD], capture_output=True,
                         text=True, timeout=60, preexec_fn=preexec, check=True)
    return json.loads(out.stdout)


def test_the_lab_asks_usable_cpus_not_cpu_count():
    root = Path(__file__).resolve().parent.parent
    offenders = [f"{p.relative_to(root)}:{i}"
                 for d in ("bgwlab/lab", "notebooks") for p in (root / d).rglob("*.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if "os.cpu_count()" in line and p.name != "load.py"
                 and "results.py" not in p.name]  # run metadata records both counts
    assert not offenders, f"use bgwlab.lab.load.usable_cpus(): {offenders}"


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity")
def test_a_process_pinned_to_one_cpu_starts_two_hogs():
    cpu = min(os.sched_getaffinity(0))
    got = _run_child(preexec=lambda: os.sched_setaffinity(0, {cpu}))
    assert got["usable"] == 1
    assert got["hogs"] == 2 and got["children"] == 2 and got["busy"] == 2
    assert got["info"]["cpu_affinity"] == 1 and got["info"]["cpu_count"] == os.cpu_count()


def test_unrestricted_here_follows_the_affinity():
    n = len(os.sched_getaffinity(0))
    quota = cgroup_cpu_quota()
    expected = n if quota is None else max(1, min(n, -(-quota // 1)))
    assert usable_cpus() == expected <= os.cpu_count()
    assert CpuHogs().n == 2 * expected == LOADS["hogs"].n_hogs
    assert cpu_info()["usable_cpus"] == expected


# --- fake cgroup trees ---------------------------------------------------------------------

V2_MOUNT = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
V1_MOUNTS = ("40 25 0:30 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
             "41 25 0:31 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n"
             "42 25 0:32 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n")


def _tree(tmp_path, cgroup: str, mountinfo: str | None, files: dict[str, str]) -> str:
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text(cgroup)
    if mountinfo is not None:
        (tmp_path / "proc/self/mountinfo").write_text(mountinfo)
    for path, text in files.items():
        f = tmp_path / path.lstrip("/")
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    return str(tmp_path)


def test_v2_quota(tmp_path):
    root = _tree(tmp_path, "0::/user.slice/lab.scope\n", V2_MOUNT, {
        "/sys/fs/cgroup/cpu.max": "max 100000\n",
        "/sys/fs/cgroup/user.slice/cpu.max": "max 100000\n",
        "/sys/fs/cgroup/user.slice/lab.scope/cpu.max": "150000 100000\n"})
    assert cgroup_cpu_quota(root) == 1.5
    assert usable_cpus(root) == min(2, len(os.sched_getaffinity(0)))  # 1.5 rounds up


def test_v2_no_quota(tmp_path):
    root = _tree(tmp_path, "0::/lab\n", V2_MOUNT, {"/sys/fs/cgroup/lab/cpu.max": "max 100000\n"})
    assert cgroup_cpu_quota(root) is None
    assert usable_cpus(root) == len(os.sched_getaffinity(0))


def test_a_parents_quota_binds_its_children(tmp_path):
    root = _tree(tmp_path, "0::/class/student7\n", V2_MOUNT, {
        "/sys/fs/cgroup/class/cpu.max": "100000 100000\n",
        "/sys/fs/cgroup/class/student7/cpu.max": "800000 100000\n"})
    assert cgroup_cpu_quota(root) == 1.0 and usable_cpus(root) == 1


def test_v1_quota_and_no_quota(tmp_path):
    cg = "12:pids:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n"
    root = _tree(tmp_path / "a", cg, V1_MOUNTS, {
        "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "50000\n",
        "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
        "/sys/fs/cgroup/unified/cpu.max": "800000 100000\n"})  # hybrid: v1 holds cpu
    assert cgroup_cpu_quota(root) == 0.5 and usable_cpus(root) == 1
    root = _tree(tmp_path / "b", cg, V1_MOUNTS, {
        "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "-1\n",
        "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n"})
    assert cgroup_cpu_quota(root) is None


def test_a_container_sees_its_own_cgroup_at_the_mount(tmp_path):
    # Docker without a cgroup namespace: /proc/self/cgroup names the host's path, the
    # mount shows only the container's cgroup (mountinfo's root field).
    mount = "30 25 0:26 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    root = _tree(tmp_path, "0::/docker/abc\n", mount, {
        "/sys/fs/cgroup/cpu.max": "200000 100000\n"})
    assert cgroup_cpu_quota(root) == 2.0
    # A 64-core host's container limited to 2 CPUs: 4 hogs, not 128.
    assert usable_cpus(root) <= 2


def test_without_mountinfo_the_usual_places_are_read(tmp_path):
    root = _tree(tmp_path, "0::/lab\n", None, {"/sys/fs/cgroup/lab/cpu.max": "100000 50000\n"})
    assert cgroup_cpu_quota(root) == 2.0


def test_nothing_to_read_means_no_quota(tmp_path):
    assert cgroup_cpu_quota(str(tmp_path)) is None
    root = _tree(tmp_path, "0::/lab\n", V2_MOUNT, {"/sys/fs/cgroup/lab/cpu.max": "garbage\n"})
    assert cgroup_cpu_quota(root) is None
    assert usable_cpus(root) == len(os.sched_getaffinity(0))


# --- a real cgroup with a CPU quota (root only) ------------------------------------------

def _real_cpu_cgroup_parent() -> tuple[str, Path] | None:
    if os.geteuid() != 0:
        return None
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        fstype, _src, opts = line.split(" - ", 1)[1].split()[:3]
        if fstype == "cgroup" and "cpu" in opts.split(","):
            mp = Path(fields[4])
            if (mp / "cpu.cfs_quota_us").exists() and os.access(mp, os.W_OK):
                return "v1", mp
    v2 = Path("/sys/fs/cgroup")
    ctrl = v2 / "cgroup.subtree_control"
    if ctrl.exists() and "cpu" in ctrl.read_text().split() and os.access(v2, os.W_OK):
        return "v2", v2
    return None


@pytest.mark.skipif(_real_cpu_cgroup_parent() is None,
                    reason="needs root and a writable cpu cgroup controller")
def test_a_process_in_a_real_cgroup_with_half_a_cpu_starts_two_hogs():
    version, parent = _real_cpu_cgroup_parent()
    cg = parent / f"bgwlab-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    cg.mkdir()
    try:
        if version == "v1":
            (cg / "cpu.cfs_period_us").write_text("100000")
            (cg / "cpu.cfs_quota_us").write_text("50000")
        else:
            (cg / "cpu.max").write_text("50000 100000")
        # The child moves itself into the cgroup, then becomes Python.
        got = _run_child(argv_prefix=("sh", "-c", f'echo $$ > {cg}/cgroup.procs && exec "$@"', "sh"))
        assert got["info"]["cpu_quota"] == 0.5
        assert got["usable"] == 1 and got["hogs"] == 2 and got["children"] == 2
    finally:
        cg.rmdir()
