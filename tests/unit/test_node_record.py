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
