"""A node's undo record tells root what to kill and delete: only well-formed records are acted on."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from infisical_sync.testing.node import NodeRecord

TEMP = os.path.realpath(tempfile.gettempdir())


def record(**changes: object) -> NodeRecord:
    fields: dict[str, object] = {
        "owner_pid": 1,
        "owner_start": "0",
        "netns": "infisync-0123abcd",
        "workdir": f"{TEMP}/infisical-node-x1y2z3",
        "sysctls": {"kernel.panic": "1"},
        "absent_paths": ["/var/lib/kubelet", "/run/netns"],
        "plane_workdir": f"{TEMP}/infisical-cp-a1b2c3",
    }
    fields.update(changes)
    return NodeRecord(**fields)  # type: ignore[arg-type]


def test_a_record_written_by_a_node_is_acted_on() -> None:
    assert record().problems() == []
    assert record(plane_workdir="").problems() == []


@pytest.mark.parametrize(
    "changes",
    [
        {"workdir": ""},  # would match every process and every mount
        {"workdir": "/"},
        {"workdir": f"{TEMP}/infisical-node-"},
        {"workdir": f"{TEMP}/other-dir"},
        {"workdir": "/home/user/infisical-node-abc"},
        {"workdir": f"{TEMP}/infisical-node-abc/../../etc"},
        {"plane_workdir": "/etc"},
        {"netns": "cni-1234"},
        {"netns": "infisync-../../x"},
        {"absent_paths": ["/etc"]},
        {"sysctls": {"net.ipv4.ip_forward": "1"}},
    ],
    ids=repr,
)
def test_a_tampered_or_malformed_record_is_refused(changes: dict[str, object]) -> None:
    assert record(**changes).problems()


def test_a_record_whose_owner_is_this_process_is_alive() -> None:
    stat = Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()
    assert record(owner_pid=os.getpid(), owner_start=stat[19]).owner_alive()
    # Same pid, another start time: the pid was reused, the owner is gone.
    assert not record(owner_pid=os.getpid(), owner_start="1").owner_alive()


def test_only_unused_and_unchanged_control_plane_dirs_are_stale() -> None:
    """`node cleanup` removes what an interrupted run left: a plane's directory that no process
    names and nothing changed for a while; never one in use or just made."""
    import shutil
    import subprocess
    import sys
    import time

    from infisical_sync.testing.node import STALE_PLANE_SECONDS, stale_plane_dirs

    made = [Path(tempfile.mkdtemp(prefix="infisical-cp-")) for _ in range(3)]
    abandoned, in_use, fresh = made
    old = time.time() - STALE_PLANE_SECONDS - 5
    for path in (abandoned, in_use):
        os.utime(path, (old, old))
    user = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", f"--data-dir={in_use}/etcd"]
    )
    try:
        cmdline = Path(f"/proc/{user.pid}/cmdline")
        for _ in range(200):  # until the child has exec'd (before that it shows our cmdline)
            if str(in_use).encode() in cmdline.read_bytes():
                break
            time.sleep(0.01)
        stale = stale_plane_dirs()
        assert abandoned in stale
        assert in_use not in stale
        assert fresh not in stale
    finally:
        user.kill()
        user.wait()
        for path in made:
            shutil.rmtree(path, ignore_errors=True)
