"""The test node keeps the networking rule and leaves the machine as it found it, also when the
run that started it is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from infisical_sync.testing.node import cleanup_stale, host_snapshot, leftovers, running_cluster
from tests.node.conftest import require_node

pytestmark = pytest.mark.node

# Starts a pod on a node: containers, a pod network namespace, CNI addresses, kubelet mounts.
RUN_A_POD = textwrap.dedent(
    """
    import time
    from kubernetes import client
    from infisical_sync.testing.controlplane import api_client

    def run_a_pod(kubeconfig):
        core = client.CoreV1Api(api_client(kubeconfig))
        pod = {"metadata": {"name": "p"},
               "spec": {"containers": [{"name": "p", "image": "registry.k8s.io/pause:3.10"}]}}
        deadline = time.monotonic() + 90
        while True:  # until the default ServiceAccount exists (the controller manager makes it)
            try:
                core.create_namespaced_pod("default", pod)
                break
            except client.exceptions.ApiException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        while core.read_namespaced_pod("p", "default").status.phase != "Running":
            assert time.monotonic() < deadline, "pod not Running"
            time.sleep(0.5)
    """
)


def run_a_pod(kubeconfig: Any) -> None:
    namespace: dict[str, Any] = {}
    exec(RUN_A_POD, namespace)
    namespace["run_a_pod"](kubeconfig)


def host_side(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The parts the node must never touch while it runs (the networking rule)."""
    keys = ("addresses", "links", "routes", "iptables", "nftables")
    return {key: snapshot[key] for key in keys} | {
        "ip_forward": snapshot["sysctls"]["net.ipv4.ip_forward"]
    }


def test_running_node_keeps_the_machines_network_and_teardown_restores_everything() -> None:
    require_node()
    before = host_snapshot()
    with running_cluster() as cluster:
        run_a_pod(cluster.kubeconfig)
        during = host_snapshot()
        assert host_side(during) == host_side(before)
        assert during["cgroups"], "the kubelet made its pod cgroups"  # the check can fail
        assert during["kubepods"] == before["kubepods"], "pods stay under the node's own root"
        # Pod network namespaces are pinned under containerd's state directory, not /run/netns.
        assert during["netns"] == sorted([*before["netns"], cluster.node.netns])
    assert host_snapshot() == before
    assert leftovers() == []


def test_a_killed_run_is_cleaned_up_by_the_next_one() -> None:
    require_node()
    before = host_snapshot()
    script = RUN_A_POD + textwrap.dedent(
        """
        from infisical_sync.testing.node import running_cluster
        with running_cluster() as cluster:
            run_a_pod(cluster.kubeconfig)
            print("RUNNING", flush=True)
            time.sleep(600)
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        seen = []
        for line in process.stdout:
            seen.append(line)
            if line.strip() == "RUNNING":
                break
        else:
            pytest.fail("the node never ran a pod:\n" + "".join(seen[-40:]))
        # Killed as CI's timeout or a Ctrl-C storm would: no teardown runs in that process.
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        time.sleep(1)  # daemons die by their parent-death signal
        left = leftovers()
        kinds = {item.split(" ", 1)[0] for item in left}
        # What a killed run really leaves (else this test proves nothing): container processes
        # (shims outlive their daemon), the pods' cgroups, mounts, the network namespace.
        assert {"process", "cgroup", "mount", "netns", "record"} <= kinds, left
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    cleaned = cleanup_stale()  # what the next node start (or `node cleanup`) does
    assert len(cleaned) == 1
    assert leftovers() == []
    assert host_snapshot() == before
