"""The ownership ledger of a server without secretMetadata (the fake as the 2024 generation),
past 100 keys, lives in a ConfigMap status names by digest: status stays small, deletes of
removed source keys still follow it after a restart (nothing in memory), a hand-edited or
deleted ConfigMap never makes a key ours (nothing is deleted, status says why), and a status of
the previous version (the whole list, no status.ledger) still works and moves to a ConfigMap.

Its own control plane, like the restart suite: operators are stopped and started here."""

from __future__ import annotations

import base64
import gzip
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from tests.conftest import operator_process, wait_for
from tests.kube_helpers import GROUP, VERSION, condition, create, delete, patch, put_secret, status

from infisical_sync import ledger
from infisical_sync.testing.controlplane import (
    OPERATOR_USER,
    ControlPlane,
    api_client,
    grant_operator_rbac,
    install_crds,
)
from infisical_sync.testing.fake_infisical import BackgroundFake, FakeInfisical

pytestmark = pytest.mark.controlplane
CONNECTIONS, SYNCS = "infisicalconnections", "secretsyncs"
CLIENT_ID = "77777777-7777-4777-8777-777777777777"
CLIENT_SECRET = "canary-ledger-client-secret-5b1e"
PROJECT = "p-ledger"
PATH = "/big"
# 1,500 keys of 60 characters: whole, the list alone would be over 90 KB of status.
NAMES = [f"K{i:04d}_" + "X" * 54 for i in range(1500)]


@pytest.fixture(scope="module")
def plane(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    with ControlPlane() as own:
        install_crds(own.kubeconfig)
        grant_operator_rbac(own.kubeconfig)  # the chart's rules: configmaps included
        yield own


@pytest.fixture
def fake() -> Iterator[FakeInfisical]:
    with BackgroundFake(FakeInfisical(profile="2024")) as server:
        server.state.add_project("ledger", project_id=PROJECT)
        server.state.add_identity(CLIENT_ID, CLIENT_SECRET, projects={PROJECT: {}})
        yield server


@pytest.fixture
def namespace(plane: ControlPlane) -> Iterator[str]:
    kube = api_client(plane.kubeconfig)
    name = f"t-{uuid.uuid4().hex[:10]}"
    client.CoreV1Api(kube).create_namespace({"metadata": {"name": name}})
    yield name
    for plural in (SYNCS, CONNECTIONS):
        found = client.CustomObjectsApi(kube).list_namespaced_custom_object(
            GROUP, VERSION, name, plural
        )["items"]
        for item in found:
            delete(kube, name, plural, item["metadata"]["name"])
            patch(kube, name, plural, item["metadata"]["name"], {"metadata": {"finalizers": None}})


def remote(fake: FakeInfisical) -> dict[str, str]:
    return fake.state.get_secrets(PROJECT, "prod", PATH)


def source(names: list[str]) -> dict[str, str]:
    return {name: "v" for name in names}


def configmap(kube: Any, namespace: str) -> Any:
    return client.CoreV1Api(kube).read_namespaced_config_map("sync-ledger", namespace)


def listed(cm: Any) -> list[str]:
    names: list[str] = json.loads(gzip.decompress(base64.b64decode(cm.binary_data[ledger.KEYS])))
    return names


def start(kube: Any, namespace: str, fake: FakeInfisical) -> None:
    put_secret(kube, namespace, "identity", {"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET})
    connection = {
        "instanceUrl": fake.url,
        "allowInsecureHttp": True,
        "credentials": {"secretRef": {"name": "identity"}},
        "validationInterval": "1h",
    }
    create(kube, namespace, CONNECTIONS, "InfisicalConnection", "dest", connection)
    put_secret(kube, namespace, "app", source(NAMES))
    sync = {
        "source": {"kubernetes": {"secrets": [{"name": "app"}]}},
        "destination": {
            "connectionRef": {"name": "dest"},
            "projectId": PROJECT,
            "environment": "prod",
            "secretPath": PATH,
        },
        "deletionPolicy": "Delete",
        "syncInterval": "10s",  # a restart spreads first runs over at most this
    }
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync)


def test_a_large_ledger_lives_in_a_configmap_and_is_only_believed_with_its_digest(
    plane: ControlPlane, fake: FakeInfisical, namespace: str, tmp_path: Path
) -> None:
    kube = api_client(plane.kubeconfig)
    kubeconfig = plane.kubeconfig_for_user(OPERATOR_USER)
    with operator_process(kubeconfig, tmp_path / "first.log"):
        start(kube, namespace, fake)
        wait_for(lambda: status(kube, namespace, SYNCS, "sync").get("ledger"), timeout=60)
        assert remote(fake) == source(NAMES)
        found = status(kube, namespace, SYNCS, "sync")
        assert found["ownershipTracking"] == "Ledger"
        assert found["managedKeys"] == NAMES[:100] and found["keyCounts"]["managed"] == 1500
        assert found["ledger"] == {
            "configMap": "sync-ledger",
            "count": 1500,
            "digest": ledger.digest(NAMES),
        }
        assert len(json.dumps(found)) < 32 * 1024
        cm = configmap(kube, namespace)
        assert listed(cm) == NAMES and cm.data["count"] == "1500"
        uid = client.CustomObjectsApi(kube).get_namespaced_custom_object(
            GROUP, VERSION, namespace, SYNCS, "sync"
        )["metadata"]["uid"]
        assert [(o.kind, o.name, o.uid) for o in cm.metadata.owner_references] == [
            ("SecretSync", "sync", uid)
        ]

    # A restart: nothing in memory. Keys removed from the source go, by the ConfigMap's ledger.
    kept = NAMES[10:]
    put_secret(kube, namespace, "app", source(kept))
    with operator_process(kubeconfig, tmp_path / "second.log"):
        wait_for(lambda: remote(fake) == source(kept), timeout=60)
        wait_for(lambda: status(kube, namespace, SYNCS, "sync")["ledger"]["count"] == 1490)
        assert listed(configmap(kube, namespace)) == kept
        assert status(kube, namespace, SYNCS, "sync")["ledger"]["digest"] == ledger.digest(kept)

    # Someone adds a key of theirs to the ConfigMap's list: believed, it would be deleted (the
    # source does not name it). Not believed: nothing is deleted, status says why.
    fake.state.put_secret(PROJECT, "prod", PATH, "THEIRS", "t")
    cm = configmap(kube, namespace)
    forged = gzip.compress(json.dumps(sorted([*kept, "THEIRS"])).encode())
    cm.binary_data[ledger.KEYS] = base64.b64encode(forged).decode()
    client.CoreV1Api(kube).replace_namespaced_config_map("sync-ledger", namespace, cm)
    fewer = kept[10:]
    put_secret(kube, namespace, "app", source(fewer))
    with operator_process(kubeconfig, tmp_path / "third.log"):
        wait_for(
            lambda: (
                condition(kube, namespace, SYNCS, "sync", "Synced")
                == ("False", "LedgerUnavailable")
            ),
            timeout=60,
        )
        message = status(kube, namespace, SYNCS, "sync")["lastSyncMessage"]
        assert "ConfigMap sync-ledger does not hold the list" in message
        assert remote(fake) == {**source(kept), "THEIRS": "t"}  # nothing deleted
        # Deleted instead: the same, with its reason.
        client.CoreV1Api(kube).delete_namespaced_config_map("sync-ledger", namespace)
        wait_for(
            lambda: (
                "sync-ledger does not exist"
                in status(kube, namespace, SYNCS, "sync")["lastSyncMessage"]
            ),
            timeout=30,
        )
        assert condition(kube, namespace, SYNCS, "sync", "Synced") == ("False", "LedgerUnavailable")
        assert remote(fake) == {**source(kept), "THEIRS": "t"}

    # A status as the previous version wrote it: the whole list, no status.ledger. It is the
    # ledger (the removed keys go, THEIRS stays) and it moves to a ConfigMap.
    client.CustomObjectsApi(kube).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, SYNCS, "sync", {"status": {"managedKeys": kept, "ledger": None}}
    )
    with operator_process(kubeconfig, tmp_path / "fourth.log"):
        wait_for(lambda: remote(fake) == {**source(fewer), "THEIRS": "t"}, timeout=60)
        wait_for(
            lambda: (
                (status(kube, namespace, SYNCS, "sync").get("ledger") or {}).get("count") == 1480
            )
        )
        found = status(kube, namespace, SYNCS, "sync")
        assert found["managedKeys"] == fewer[:100] and found["syncStatus"] == "Succeeded"
        assert listed(configmap(kube, namespace)) == fewer
