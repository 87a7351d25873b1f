"""Shards: two operators `--shard 0/2` and `--shard 1/2` split the SecretSyncs between them
(each synced by one, carrying one finalizer: its shard's), one writes the connection's status,
and a change from 1 shard to 2 leaves no object undeletable."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import OperatorProcess, operator_process, wait_for
from tests.kube_helpers import (
    create,
    delete,
    event_reasons,
    get,
    put_secret,
    status,
)
from tests.own_plane import own_plane, scratch_namespace, seeded_fake

from infisical_sync.shards import LEGACY_FINALIZER, Shard, slot_of
from infisical_sync.testing.controlplane import (
    OPERATOR_USER,
    ControlPlane,
    api_client,
)
from infisical_sync.testing.fake_infisical import FakeInfisical

pytestmark = pytest.mark.controlplane
CONNECTIONS, SYNCS = "infisicalconnections", "secretsyncs"
CLIENT_ID = "77777777-7777-4777-8777-777777777777"
CLIENT_SECRET = "canary-shard-client-secret-51c2"
PROJECT = "p-shards"
LAST_SUCCESS = "infisical_sync_last_success_timestamp_seconds"
KEYS_CHANGED = "infisical_sync_keys_changed_total"


@pytest.fixture(scope="module")
def plane(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    with own_plane() as own:
        yield own


@pytest.fixture
def fake() -> Iterator[FakeInfisical]:
    with seeded_fake("shards", PROJECT, CLIENT_ID, CLIENT_SECRET) as server:
        yield server


@pytest.fixture
def namespace(plane: ControlPlane) -> Iterator[str]:
    with scratch_namespace(api_client(plane.kubeconfig)) as name:
        yield name


@contextlib.contextmanager
def shards(plane: ControlPlane, tmp_path: Path, count: int) -> Iterator[list[OperatorProcess]]:
    kubeconfig = plane.kubeconfig_for_user(OPERATOR_USER)
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(
                operator_process(
                    kubeconfig,
                    tmp_path / f"shard-{index}-of-{count}.log",
                    {"INFISICAL_SYNC_SHARD": f"{index}/{count}"},
                )
            )
            for index in range(count)
        ]


def owner(namespace: str, name: str, count: int) -> int:
    return slot_of(namespace, name, count)


def finalizers(kube: Any, namespace: str, plural: str, name: str) -> list[str] | None:
    found = get(kube, namespace, plural, name)
    return None if found is None else sorted(found["metadata"].get("finalizers") or [])


def keys(fake: FakeInfisical, name: str) -> dict[str, str]:
    return fake.state.get_secrets(PROJECT, "prod", f"/{name}")


def create_syncs(kube: Any, namespace: str, fake: FakeInfisical, names: list[str]) -> None:
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
            "deletionPolicy": "Delete",
            "syncInterval": "1h",
        }
        create(kube, namespace, SYNCS, "SecretSync", name, sync)
    for name in names:
        wait_for(
            lambda n=name: status(kube, namespace, SYNCS, n).get("syncStatus") == "Succeeded",
            timeout=40,
        )
        assert keys(fake, name) == {"A": "1"}


def test_two_shards_split_the_secretsyncs_and_one_writes_the_connections_status(
    plane: ControlPlane, fake: FakeInfisical, namespace: str, tmp_path: Path
) -> None:
    kube = api_client(plane.kubeconfig)
    names = [f"app-{i}" for i in range(8)]
    owners = {name: owner(namespace, name, 2) for name in names}
    assert set(owners.values()) == {0, 1}, "both shards own some (else pick other names)"
    with shards(plane, tmp_path, 2) as operators:
        create_syncs(kube, namespace, fake, names)
        for name in names:
            mine = Shard(owners[name], 2)
            assert finalizers(kube, namespace, SYNCS, name) == [mine.finalizer]
            # Only the owner ran it: the other shard has no series for it.
            for index, process in enumerate(operators):
                seen = process.metric(
                    LAST_SUCCESS, kind="SecretSync", namespace=namespace, name=name
                )
                assert (seen is not None) == (index == owners[name]), (name, index)
                ready = process.metric(
                    "infisical_sync_ready", kind="SecretSync", namespace=namespace, name=name
                )
                assert ready == (1 if index == owners[name] else None), (name, index)
        # Every shard logged in for its own SecretSyncs; the connection carries both finalizers.
        assert finalizers(kube, namespace, CONNECTIONS, "dest") == sorted(
            Shard(i, 2).finalizer for i in range(2)
        )
        assert fake.count(r"/universal-auth/login$") == 2
        # One shard wrote the connection's status (and said Ready once).
        assert status(kube, namespace, CONNECTIONS, "dest")["conditions"][0]["status"] == "True"
        assert event_reasons(kube, namespace, "dest") == ["Ready"]
        said_ready = [
            index
            for index, process in enumerate(operators)
            if f"InfisicalConnection {namespace}/dest is Ready" in process.log()
        ]
        assert said_ready == [owner(namespace, "dest", 2)]
        # Its readiness series comes from that shard only; each shard's own validation from both.
        for index, process in enumerate(operators):
            wait_for(
                lambda p=process: (
                    p.metric("infisical_sync_connection_ready", namespace=namespace, name="dest")
                    == 1
                )
            )
            ready = process.metric(
                "infisical_sync_ready", kind="InfisicalConnection", namespace=namespace, name="dest"
            )
            assert ready == (1 if index == owner(namespace, "dest", 2) else None), index
        for index, process in enumerate(operators):
            assert process.metric("infisical_sync_shard_info", shard=str(index), shards="2") == 1

        # A change is written once, by its owner.
        before = [process.metric(KEYS_CHANGED, action="update") or 0.0 for process in operators]
        for name in names:
            put_secret(kube, namespace, name, {"A": "2"})
        for name in names:
            wait_for(lambda n=name: keys(fake, n) == {"A": "2"}, timeout=30)
        for index, process in enumerate(operators):
            expected = before[index] + sum(1 for n in names if owners[n] == index)
            wait_for(
                lambda p=process, e=expected: (p.metric(KEYS_CHANGED, action="update") or 0.0) >= e
            )
            assert (process.metric(KEYS_CHANGED, action="update") or 0.0) == expected, index

        # Deleting a SecretSync of each shard removes its keys, and it goes.
        for index in (0, 1):
            name = next(n for n in names if owners[n] == index)
            delete(kube, namespace, SYNCS, name)
            wait_for(lambda n=name: get(kube, namespace, SYNCS, n) is None, timeout=30)
            assert keys(fake, name) == {}


def test_from_one_shard_to_two_every_object_moves_to_its_shards_finalizer_and_can_be_deleted(
    plane: ControlPlane, fake: FakeInfisical, namespace: str, tmp_path: Path
) -> None:
    kube = api_client(plane.kubeconfig)
    names = [f"svc-{i}" for i in range(6)]
    gone_meanwhile = names[0]
    with shards(plane, tmp_path, 1):
        create_syncs(kube, namespace, fake, names)
        for name in names:
            assert finalizers(kube, namespace, SYNCS, name) == [LEGACY_FINALIZER]
        assert finalizers(kube, namespace, CONNECTIONS, "dest") == [LEGACY_FINALIZER]
    # Deleted between the two configurations: no handler of the new one was ever called for it.
    delete(kube, namespace, SYNCS, gone_meanwhile)
    assert finalizers(kube, namespace, SYNCS, gone_meanwhile) == [LEGACY_FINALIZER]

    with shards(plane, tmp_path, 2):
        wait_for(lambda: get(kube, namespace, SYNCS, gone_meanwhile) is None, timeout=40)
        assert keys(fake, gone_meanwhile) == {}  # its deletion policy was carried out
        for name in names[1:]:
            mine = Shard(owner(namespace, name, 2), 2).finalizer
            wait_for(
                lambda n=name, f=mine: finalizers(kube, namespace, SYNCS, n) == [f],
                timeout=30,
                message=f"{name} carries only {mine}",
            )
        wait_for(
            lambda: (
                finalizers(kube, namespace, CONNECTIONS, "dest")
                == sorted(Shard(i, 2).finalizer for i in range(2))
            ),
            timeout=30,
        )
        for name in names[1:]:
            delete(kube, namespace, SYNCS, name)
        for name in names[1:]:
            wait_for(lambda n=name: get(kube, namespace, SYNCS, n) is None, timeout=30)
            assert keys(fake, name) == {}
        delete(kube, namespace, CONNECTIONS, "dest")
        wait_for(lambda: get(kube, namespace, CONNECTIONS, "dest") is None, timeout=30)
