"""Leader election on the real control plane: two operator processes, one Lease, one writer.

Short timings (lease 5 s, renew deadline 3 s, retry 0.5 s) keep the takeovers quick.
"""

from __future__ import annotations

import contextlib
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from tests.conftest import OperatorProcess, operator_process, wait_for
from tests.kube_helpers import GROUP, VERSION, create, delete, patch, put_secret, status

from infisical_sync.testing.controlplane import (
    OPERATOR_USER,
    ControlPlane,
    api_client,
    grant_leader_election,
    grant_operator_rbac,
    install_crds,
)
from infisical_sync.testing.fake_infisical import BackgroundFake, FakeInfisical, Fault

pytestmark = pytest.mark.controlplane
CONNECTIONS, SYNCS = "infisicalconnections", "secretsyncs"
CLIENT_ID = "77777777-7777-4777-8777-777777777777"
CLIENT_SECRET = "canary-leader-client-secret-5e1f"
PROJECT = "p-leader"
LEASE = "infisical-sync"
TIMINGS = ["--lease-duration=5", "--lease-renew-deadline=3", "--lease-retry-period=0.5"]
STANDBY = "standby: waiting for Lease"
STARTED = "infisical-sync operator started"


@pytest.fixture(scope="module")
def plane(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    """Operators started and stopped here must not share objects with the session's one."""
    with ControlPlane() as own:
        install_crds(own.kubeconfig)
        grant_operator_rbac(own.kubeconfig)
        yield own


@pytest.fixture
def fake() -> Iterator[FakeInfisical]:
    with BackgroundFake() as server:
        server.state.add_project("leader", project_id=PROJECT)
        server.state.add_identity(CLIENT_ID, CLIENT_SECRET, projects={PROJECT: {}})
        yield server


@pytest.fixture
def namespace(plane: ControlPlane) -> Iterator[str]:
    """Holds the Lease too; its objects are gone afterwards (the next test's operators must not
    find them)."""
    kube = api_client(plane.kubeconfig)
    name = f"t-{uuid.uuid4().hex[:10]}"
    client.CoreV1Api(kube).create_namespace({"metadata": {"name": name}})
    grant_leader_election(plane.kubeconfig, name)
    yield name
    for plural in (SYNCS, CONNECTIONS):
        found = client.CustomObjectsApi(kube).list_namespaced_custom_object(
            GROUP, VERSION, name, plural
        )["items"]
        for item in found:
            delete(kube, name, plural, item["metadata"]["name"])
            patch(kube, name, plural, item["metadata"]["name"], {"metadata": {"finalizers": None}})


@contextlib.contextmanager
def elected(
    plane: ControlPlane, namespace: str, log_dir: Path, pod: str, env: dict[str, str] | None = None
) -> Iterator[OperatorProcess]:
    """An operator with --leader-election, returned once it waits for the Lease."""
    with operator_process(
        plane.kubeconfig_for_user(OPERATOR_USER),
        log_dir / f"{pod}.log",
        env={"POD_NAME": pod, "INFISICAL_SYNC_BATCH_MAX_BYTES": "16384", **(env or {})},
        args=[
            "--leader-election",
            f"--lease-name={LEASE}",
            f"--lease-namespace={namespace}",
            *TIMINGS,
        ],
        ready=STANDBY,
    ) as process:
        yield process


def holder(kube: Any, namespace: str) -> str:
    """The Lease's holder's pod name ("" when released or absent)."""
    try:
        lease = client.CoordinationV1Api(kube).read_namespaced_lease(LEASE, namespace)
    except client.exceptions.ApiException as exc:
        if exc.status == 404:
            return ""
        raise
    return str(lease.spec.holder_identity or "").split("_")[0]


def start_syncing(kube: Any, namespace: str, fake: FakeInfisical, data: dict[str, str]) -> None:
    put_secret(kube, namespace, "identity", {"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET})
    connection = {
        "instanceUrl": fake.url,
        "allowInsecureHttp": True,
        "credentials": {"secretRef": {"name": "identity"}},
        "validationInterval": "1h",
    }
    create(kube, namespace, CONNECTIONS, "InfisicalConnection", "dest", connection)
    put_secret(kube, namespace, "app", data)
    sync = {
        "source": {"kubernetes": {"secrets": [{"name": "app"}]}},
        "destination": {
            "connectionRef": {"name": "dest"},
            "projectId": PROJECT,
            "environment": "prod",
            "secretPath": "/apps",
        },
        "syncInterval": "10s",
    }
    create(kube, namespace, SYNCS, "SecretSync", "app", sync)


def stored(fake: FakeInfisical) -> dict[str, str]:
    return fake.state.get_secrets(PROJECT, "prod", "/apps")


def secret_writes(fake: FakeInfisical) -> list[Any]:
    return [r for r in fake.log if r.method != "GET" and "/secrets" in r.path]


def healthz(process: OperatorProcess) -> str:
    url = f"http://127.0.0.1:{process.health_port}/healthz"
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        return str(response.read().decode())


def leader_and_standby(
    kube: Any, namespace: str, processes: dict[str, OperatorProcess]
) -> tuple[str, str]:
    leader = wait_for(lambda: holder(kube, namespace), timeout=30, message="a leader")
    (standby,) = set(processes) - {leader}
    processes[leader].logged.wait_for_line(STARTED)
    return leader, standby


def test_one_replica_writes_and_the_standby_converges_after_the_leader_is_killed_mid_sync(
    plane: ControlPlane, fake: FakeInfisical, namespace: str, tmp_path: Path
) -> None:
    kube = api_client(plane.kubeconfig)
    keys = {f"KEY_{index:04d}": f"value-{index}-" + "x" * 200 for index in range(300)}
    with (
        elected(plane, namespace, tmp_path, "op-a") as a,
        elected(plane, namespace, tmp_path, "op-b") as b,
    ):
        processes = {"op-a": a, "op-b": b}
        leader, standby = leader_and_standby(kube, namespace, processes)
        assert processes[leader].metric("infisical_sync_leader") == 1
        assert processes[standby].metric("infisical_sync_leader") == 0
        assert "standby" in healthz(processes[standby])  # the liveness probe passes
        # Slow batch writes (five of them at 16 KiB): the kill lands between two.
        fake.inject(Fault("latency", r"/secrets/batch$", method="POST", delay=0.5))
        start_syncing(kube, namespace, fake, keys)
        wait_for(lambda: secret_writes(fake), timeout=30, message="a first batch written")
        processes[leader].logged.process.kill()
        processes[leader].logged.process.wait()
        assert 0 < len(stored(fake)) < len(keys), "killed mid-sync"
        # The standby ran no watch and no handler until then: it made no request at all.
        assert STARTED not in processes[standby].log()
        assert fake.count(r"/universal-auth/login$") == 1

        wait_for(lambda: holder(kube, namespace) == standby, timeout=30, message="takeover")
        processes[standby].logged.wait_for_line(STARTED)
        assert "(expired)" in processes[standby].log()
        assert processes[standby].metric("infisical_sync_leader") == 1
        assert "standby" not in healthz(processes[standby])  # kopf's probe took the port over
        wait_for(lambda: stored(fake) == keys, timeout=60, message="converged")
        # None lost, none written twice: a second create of a key is refused (400). (The write
        # in flight when the leader was killed may be logged 500: its client went away.)
        assert [r.status for r in secret_writes(fake) if 300 <= r.status < 500] == []
        assert status(kube, namespace, SYNCS, "app").get("syncStatus") == "Succeeded"


def test_a_leader_stopped_by_sigterm_releases_the_lease_to_the_standby(
    plane: ControlPlane, fake: FakeInfisical, namespace: str, tmp_path: Path
) -> None:
    kube = api_client(plane.kubeconfig)
    with (
        elected(plane, namespace, tmp_path, "op-a") as a,
        elected(plane, namespace, tmp_path, "op-b") as b,
    ):
        processes = {"op-a": a, "op-b": b}
        leader, standby = leader_and_standby(kube, namespace, processes)
        start_syncing(kube, namespace, fake, {"A": "1"})
        wait_for(lambda: stored(fake) == {"A": "1"}, timeout=30)

        processes[leader].logged.process.terminate()
        assert processes[leader].logged.process.wait(timeout=60) == 0
        assert "released Lease" in processes[leader].log()
        wait_for(lambda: holder(kube, namespace) == standby, timeout=30, message="handover")
        processes[standby].logged.wait_for_line(STARTED)
        assert "(released)" in processes[standby].log()  # not waited out as an expiry
        put_secret(kube, namespace, "app", {"A": "2"})
        wait_for(lambda: stored(fake) == {"A": "2"}, timeout=30)


def test_a_leader_that_cannot_renew_sends_no_write_after_its_renew_deadline(
    plane: ControlPlane, fake: FakeInfisical, namespace: str, tmp_path: Path
) -> None:
    """Its Lease access is cut while a cycle waits on a slow read: when the read answers, the
    deadline has passed and the write the cycle would make is not sent."""
    kube = api_client(plane.kubeconfig)
    with elected(
        plane, namespace, tmp_path, "op-a", env={"INFISICAL_SYNC_REQUEST_TIMEOUT": "30"}
    ) as leader:
        leader.logged.wait_for_line(STARTED)
        start_syncing(kube, namespace, fake, {"A": "1"})
        wait_for(lambda: stored(fake) == {"A": "1"}, timeout=30)
        wait_for(lambda: status(kube, namespace, SYNCS, "app").get("syncStatus") == "Succeeded")
        fake.reset_log()
        # The next cycle's list answers after 8 s; the renew deadline is 3 s.
        fake.inject(Fault("latency", r"^/api/v4/secrets$", method="GET", delay=8, times=1))
        put_secret(kube, namespace, "app", {"A": "2"})
        wait_for(lambda: not fake.faults, timeout=30, message="the slow list under way")
        client.RbacAuthorizationV1Api(kube).delete_namespaced_role_binding(
            f"{OPERATOR_USER}-leader-election", namespace
        )
        try:
            code = leader.logged.process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the leader did not stop; log tail:\n{leader.log()[-3000:]}")
        assert [r.path for r in fake.log if r.method == "GET"], "the slow list was answered"
        assert secret_writes(fake) == []
        assert stored(fake) == {"A": "1"}
        assert code == 1  # lost, not released: the pod restarts as a standby
        assert "lost Lease" in leader.log()
        assert "not sent: this replica is not the leader" in leader.log()
