"""Leader election on the real control plane: two operator processes, one Lease, one writer.

Short timings (lease 5 s, renew deadline 3 s, retry 0.5 s) keep the takeovers quick.
"""

from __future__ import annotations

import contextlib
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from tests.conftest import OperatorProcess, operator_process, wait_for
from tests.kube_helpers import create, get, put_secret, status
from tests.own_plane import own_plane, scratch_namespace, seeded_fake

from infisical_sync.lease import SHARDS_ANNOTATION
from infisical_sync.shards import Shard, slot_of
from infisical_sync.testing.controlplane import (
    OPERATOR_USER,
    ControlPlane,
    api_client,
    grant_leader_election,
)
from infisical_sync.testing.fake_infisical import FakeInfisical, Fault

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
    with own_plane() as own:
        yield own


@pytest.fixture
def fake() -> Iterator[FakeInfisical]:
    with seeded_fake("leader", PROJECT, CLIENT_ID, CLIENT_SECRET) as server:
        yield server


@pytest.fixture
def namespace(plane: ControlPlane) -> Iterator[str]:
    """Holds the Lease too."""
    with scratch_namespace(api_client(plane.kubeconfig)) as name:
        grant_leader_election(plane.kubeconfig, name)
        yield name


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


def serving(process: OperatorProcess) -> str:
    """/healthz's answer; "standby" while nothing listens (between the standby's server and
    kopf's)."""
    try:
        return healthz(process)
    except OSError:
        return "standby"


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
        # Five batch writes of 16 KiB: the first is stored, the second hangs until the kill
        # (whatever the host's load), so the leader dies mid-sync.
        fake.inject(Fault("hang", r"/secrets/batch$", method="POST", skip=1))
        start_syncing(kube, namespace, fake, keys)
        wait_for(lambda: secret_writes(fake), timeout=60, message="a first batch written")
        processes[leader].logged.process.kill()
        processes[leader].logged.process.wait()
        fake.clear_faults()
        assert 0 < len(stored(fake)) < len(keys), "killed mid-sync"
        # The standby ran no watch and no handler until then: it made no request at all.
        assert STARTED not in processes[standby].log()
        assert fake.count(r"/universal-auth/login$") == 1

        wait_for(lambda: holder(kube, namespace) == standby, timeout=30, message="takeover")
        processes[standby].logged.wait_for_line(STARTED)
        assert "(expired)" in processes[standby].log()
        assert processes[standby].metric("infisical_sync_leader") == 1
        # kopf's probe took the port over (it may start listening just after the startup log)
        wait_for(lambda: "standby" not in serving(processes[standby]), message="kopf's /healthz")
        wait_for(lambda: stored(fake) == keys, timeout=60, message="converged")
        # None lost, none written twice: a second create of a key is refused (400). (The write
        # in flight when the leader was killed may be logged 500: its client went away.)
        assert [r.status for r in secret_writes(fake) if 300 <= r.status < 500] == []
        # The keys are stored before the status says so.
        wait_for(lambda: status(kube, namespace, SYNCS, "app").get("syncStatus") == "Succeeded")


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


def one_per_shard(namespace: str, count: int) -> list[str]:
    """SecretSync names, the i-th owned by shard i of `count` in this namespace."""
    names: dict[int, str] = {}
    for index in range(100):
        names.setdefault(slot_of(namespace, f"app-{index}", count), f"app-{index}")
    return [names[slot] for slot in range(count)]


def lease_of(kube: Any, namespace: str, name: str) -> tuple[str, str | None]:
    """(holder's pod name, the configuration annotated on it)."""
    lease = client.CoordinationV1Api(kube).read_namespaced_lease(name, namespace)
    holder = str(lease.spec.holder_identity or "").split("_")[0]
    return holder, (lease.metadata.annotations or {}).get(SHARDS_ANNOTATION)


def sync_to(kube: Any, namespace: str, fake: FakeInfisical, names: list[str]) -> None:
    put_secret(kube, namespace, "identity", {"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET})
    connection = {
        "instanceUrl": fake.url,
        "allowInsecureHttp": True,
        "credentials": {"secretRef": {"name": "identity"}},
        "validationInterval": "1h",
    }
    create(kube, namespace, CONNECTIONS, "InfisicalConnection", "dest", connection)
    for name in names:
        put_secret(kube, namespace, name, {"A": "1"})
        sync = {
            "source": {"kubernetes": {"secrets": [{"name": name}]}},
            "destination": {
                "connectionRef": {"name": "dest"},
                "projectId": PROJECT,
                "environment": "prod",
                "secretPath": f"/{name}",
            },
            "syncInterval": "1h",
        }
        create(kube, namespace, SYNCS, "SecretSync", name, sync)


def at(fake: FakeInfisical, name: str) -> dict[str, str]:
    return fake.state.get_secrets(PROJECT, "prod", f"/{name}")


def test_a_new_shard_configuration_starts_only_once_the_old_one_stopped(
    plane: ControlPlane, fake: FakeInfisical, namespace: str, tmp_path: Path
) -> None:
    """1 → 2 shards (the chart renames the Deployments: old and new run at once, on different
    Leases). The shards hold their Leases but neither starts while the unsharded leader runs;
    once it stopped (SIGTERM, released) both take over."""
    kube = api_client(plane.kubeconfig)
    names = one_per_shard(namespace, 2)
    with elected(plane, namespace, tmp_path, "unsharded") as old:
        old.logged.wait_for_line(STARTED)
        assert lease_of(kube, namespace, LEASE) == ("unsharded", "1")
        sync_to(kube, namespace, fake, names)
        for name in names:
            wait_for(lambda n=name: at(fake, n) == {"A": "1"}, timeout=30)
        waiting = f"waits for Lease {namespace}/{LEASE} of configuration shards=1"
        with contextlib.ExitStack() as stack:
            new = [
                stack.enter_context(
                    elected(
                        plane,
                        namespace,
                        tmp_path,
                        f"shard-{index}",
                        env={"INFISICAL_SYNC_SHARD": f"{index}/2"},
                    )
                )
                for index in range(2)
            ]
            for index, process in enumerate(new):
                process.logged.wait_for_line(waiting)
                # Each holds its own Lease meanwhile (a standby of its shard cannot take it).
                assert lease_of(kube, namespace, f"{LEASE}-shard-{index}") == (
                    f"shard-{index}",
                    "2",
                )
            # The old configuration goes on syncing; the new one has not started.
            for name in names:
                put_secret(kube, namespace, name, {"A": "2"})
            for name in names:
                wait_for(lambda n=name: at(fake, n) == {"A": "2"}, timeout=30)
            for process in new:
                assert STARTED not in process.log()
                assert process.metric("infisical_sync_leader") == 0
            assert fake.count(r"/universal-auth/login$") == 1  # the old leader's only

            old.logged.process.terminate()
            assert old.logged.process.wait(timeout=60) == 0
            assert "released Lease" in old.log()
            for process in new:
                process.logged.wait_for_line(STARTED)
                assert process.metric("infisical_sync_leader") == 1
            for index, name in enumerate(names):
                mine = Shard(index, 2).finalizer
                wait_for(
                    lambda n=name, f=mine: (
                        (get(kube, namespace, SYNCS, n) or {}).get("metadata", {}).get("finalizers")
                        == [f]
                    ),
                    timeout=30,
                    message=f"{name} taken over by its shard",
                )
                put_secret(kube, namespace, name, {"A": "3"})
            for name in names:
                wait_for(lambda n=name: at(fake, n) == {"A": "3"}, timeout=30)
