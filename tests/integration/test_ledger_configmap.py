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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from tests.conftest import operator_process, wait_for
from tests.integration.test_secretsync import resource_version
from tests.kube_helpers import (
    GROUP,
    VERSION,
    condition,
    create,
    delete,
    get,
    patch,
    put_secret,
    status,
)
from tests.own_plane import own_plane, scratch_namespace, seeded_fake

from infisical_sync import ledger
from infisical_sync.sync import ABANDON
from infisical_sync.testing.controlplane import (
    OPERATOR_USER,
    ControlPlane,
    api_client,
)
from infisical_sync.testing.fake_infisical import FakeInfisical

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
    with own_plane() as own:
        yield own


@pytest.fixture
def fake() -> Iterator[FakeInfisical]:
    with seeded_fake("ledger", PROJECT, CLIENT_ID, CLIENT_SECRET, profile="2024") as server:
        yield server


@pytest.fixture
def namespace(plane: ControlPlane) -> Iterator[str]:
    with scratch_namespace(api_client(plane.kubeconfig)) as name:
        yield name


def remote(fake: FakeInfisical) -> dict[str, str]:
    return fake.state.get_secrets(PROJECT, "prod", PATH)


def source(names: list[str]) -> dict[str, str]:
    return {name: "v" for name in names}


def configmap(kube: Any, namespace: str) -> Any:
    return client.CoreV1Api(kube).read_namespaced_config_map("sync-ledger", namespace)


def listed(cm: Any) -> list[str]:
    names: list[str] = json.loads(gzip.decompress(base64.b64decode(cm.binary_data[ledger.KEYS])))
    return names


def start(kube: Any, namespace: str, fake: FakeInfisical, names: list[str] = NAMES) -> None:
    put_secret(kube, namespace, "identity", {"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET})
    connection = {
        "instanceUrl": fake.url,
        "allowInsecureHttp": True,
        "credentials": {"secretRef": {"name": "identity"}},
        "validationInterval": "1h",
    }
    create(kube, namespace, CONNECTIONS, "InfisicalConnection", "dest", connection)
    put_secret(kube, namespace, "app", source(names))
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
        # Deleted instead (and our finalizer, which keeps it for the removal, taken off by
        # hand): the same, with its reason.
        client.CoreV1Api(kube).delete_namespaced_config_map("sync-ledger", namespace)
        client.CoreV1Api(kube).patch_namespaced_config_map(
            "sync-ledger", namespace, {"metadata": {"finalizers": None}}
        )
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


def held_listed(cm: Any) -> list[str]:
    packed = base64.b64decode(cm.binary_data[ledger.APPROVAL_KEYS])
    names: list[str] = json.loads(gzip.decompress(packed))
    return names


def merge_all(fake: FakeInfisical) -> None:
    for request in fake.open_approvals():
        fake.merge_approval(request.id)


def test_a_large_plan_held_for_approval_keeps_its_keys_in_the_configmap(
    plane: ControlPlane, fake: FakeInfisical, namespace: str, tmp_path: Path
) -> None:
    """1,500 keys held by a change-approval policy: status shows the first 100 and the digest
    of the whole list, kept in the ConfigMap; waiting cycles write nothing; after a restart the
    merged request's keys are ours by that list. A list without status's digest makes none of
    them ours: the cycle stops with LedgerUnavailable and writes nothing."""
    kube = api_client(plane.kubeconfig)
    kubeconfig = plane.kubeconfig_for_user(OPERATOR_USER)
    fake.state.require_approval(PROJECT, "prod")
    with operator_process(kubeconfig, tmp_path / "first.log"):
        start(kube, namespace, fake)
        wait_for(
            lambda: (
                condition(kube, namespace, SYNCS, "sync", "Synced") == ("False", "ApprovalRequired")
            ),
            timeout=60,
        )
        found = status(kube, namespace, SYNCS, "sync")
        held = found["pendingApproval"]
        assert held["keys"] == NAMES[:100] and held["keyCount"] == 1500
        assert held["keyList"] == {
            "configMap": "sync-ledger",
            "count": 1500,
            "digest": ledger.digest(NAMES),
        }
        assert len(json.dumps(found)) < 32 * 1024
        cm = configmap(kube, namespace)
        assert held_listed(cm) == NAMES and ledger.FINALIZER in cm.metadata.finalizers

        # Cycles that wait for the request write nothing: neither status nor ConfigMap.
        def waits() -> int:  # each waiting cycle lists the destination: unchanged, a 304
            return fake.count(r"secrets", method="GET", status=304)

        # The first waiting cycle may still record that it waits (its 304 is counted before
        # its status patch lands); once a second one has listed, the first has finished.
        wait_for(lambda: waits() >= 2, timeout=40, message="two waiting cycles")
        versions = (
            resource_version(kube, namespace, SYNCS, "sync"),
            configmap(kube, namespace).metadata.resource_version,
        )
        seen = waits()
        wait_for(lambda: waits() >= seen + 2, timeout=40, message="two more waiting cycles")
        assert (
            resource_version(kube, namespace, SYNCS, "sync"),
            configmap(kube, namespace).metadata.resource_version,
        ) == versions
        assert len(fake.open_approvals()) == 1

    # Merged while the operator is down: the keys exist without an owner; only the list the
    # ConfigMap keeps (nothing in memory) makes them ours.
    merge_all(fake)
    fake.state.approval_policies.clear()
    with operator_process(kubeconfig, tmp_path / "second.log"):
        wait_for(
            lambda: status(kube, namespace, SYNCS, "sync").get("syncStatus") == "Succeeded",
            timeout=60,
        )
        found = status(kube, namespace, SYNCS, "sync")
        assert found["conflicts"] == [] and found["ledger"]["count"] == 1500
        assert found.get("pendingApproval") is None
        assert remote(fake) == source(NAMES)

    # Another held plan (200 new keys); its list in the ConfigMap is edited, then the request
    # is merged: those of its keys status does not show cannot be told from someone else's.
    fake.state.require_approval(PROJECT, "prod")
    added = [f"N{i:04d}" for i in range(200)]
    put_secret(kube, namespace, "app", source(NAMES + added))
    with operator_process(kubeconfig, tmp_path / "third.log"):
        wait_for(
            lambda: (
                (status(kube, namespace, SYNCS, "sync").get("pendingApproval") or {}).get(
                    "keyCount"
                )
                == 200
            ),
            timeout=60,
        )
    cm = configmap(kube, namespace)
    forged = gzip.compress(json.dumps(added[:150]).encode())
    cm.binary_data[ledger.APPROVAL_KEYS] = base64.b64encode(forged).decode()
    client.CoreV1Api(kube).replace_namespaced_config_map("sync-ledger", namespace, cm)
    merge_all(fake)
    fake.state.approval_policies.clear()
    merged = remote(fake)
    with operator_process(kubeconfig, tmp_path / "fourth.log"):
        wait_for(
            lambda: (
                condition(kube, namespace, SYNCS, "sync", "Synced")
                == ("False", "LedgerUnavailable")
            ),
            timeout=60,
        )
        message = status(kube, namespace, SYNCS, "sync")["lastSyncMessage"]
        assert "status.pendingApproval" in message and "N0100" in message
        assert "N0099" not in message  # shown in status: believed
        assert remote(fake) == merged
        assert status(kube, namespace, SYNCS, "sync")["ledger"]["count"] == 1500


def test_the_configmap_outlives_the_namespace_until_the_keys_are_removed(
    plane: ControlPlane, fake: FakeInfisical, namespace: str, tmp_path: Path
) -> None:
    """Deleting a namespace deletes the SecretSync (held by its finalizer) and its ledger's
    ConfigMap at once. Our finalizer keeps the ConfigMap readable until the removal (after a
    restart: nothing in memory) has used it, then lets it go. This control plane runs no
    namespace controller: the test deletes both, as it would."""
    kube = api_client(plane.kubeconfig)
    kubeconfig = plane.kubeconfig_for_user(OPERATOR_USER)
    with operator_process(kubeconfig, tmp_path / "first.log"):
        start(kube, namespace, fake)
        wait_for(lambda: status(kube, namespace, SYNCS, "sync").get("ledger"), timeout=60)
        assert configmap(kube, namespace).metadata.finalizers == [ledger.FINALIZER]
    fake.state.put_secret(PROJECT, "prod", PATH, "THEIRS", "t")
    delete(kube, namespace, SYNCS, "sync")
    client.CoreV1Api(kube).delete_namespaced_config_map("sync-ledger", namespace)
    with operator_process(kubeconfig, tmp_path / "second.log"):
        wait_for(lambda: get(kube, namespace, SYNCS, "sync") is None, timeout=60)
        assert remote(fake) == {"THEIRS": "t"}
        wait_for(lambda: not configmap_exists(kube, namespace), message="the ConfigMap gone")


def test_a_configmap_no_longer_needed_is_let_go(
    plane: ControlPlane, fake: FakeInfisical, namespace: str, tmp_path: Path
) -> None:
    """A ledger that shrinks to 100 keys is whole in status again: the ConfigMap stays (its
    list never believed without status's digest) without our finalizer. An abandoned
    SecretSync lets it go too."""
    kube = api_client(plane.kubeconfig)
    kubeconfig = plane.kubeconfig_for_user(OPERATOR_USER)
    with operator_process(kubeconfig, tmp_path / "first.log"):
        start(kube, namespace, fake, NAMES[:150])
        wait_for(lambda: status(kube, namespace, SYNCS, "sync").get("ledger"), timeout=60)
        put_secret(kube, namespace, "app", source(NAMES[:100]))  # a third goes: not held
        wait_for(lambda: status(kube, namespace, SYNCS, "sync").get("ledger") is None, timeout=60)
        assert status(kube, namespace, SYNCS, "sync")["managedKeys"] == NAMES[:100]
        wait_for(lambda: not configmap(kube, namespace).metadata.finalizers)
        # Past 100 again: the ConfigMap is written again, with our finalizer.
        put_secret(kube, namespace, "app", source(NAMES[:300]))
        wait_for(
            lambda: (
                (status(kube, namespace, SYNCS, "sync").get("ledger") or {}).get("count") == 300
            ),
            timeout=60,
        )
        assert configmap(kube, namespace).metadata.finalizers == [ledger.FINALIZER]
        patch(kube, namespace, SYNCS, "sync", {"metadata": {"annotations": {ABANDON: "true"}}})
        delete(kube, namespace, SYNCS, "sync")
        wait_for(lambda: get(kube, namespace, SYNCS, "sync") is None, timeout=30)
        assert not configmap(kube, namespace).metadata.finalizers
        assert remote(fake) == source(NAMES[:300])  # abandoned: left as they are


def configmap_exists(kube: Any, namespace: str) -> bool:
    try:
        configmap(kube, namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def test_a_secretsync_deleted_with_its_namespace_removes_its_keys_and_goes(
    plane: ControlPlane,
    fake: FakeInfisical,
    namespace: str,
    tmp_path: Path,
) -> None:
    """A namespace deletion (or a foreground cascade) deletes the ledger ConfigMap at once while
    the SecretSync waits on its finalizer, here with the operator down (a restart or a hand-over:
    nothing in memory). Our finalizer on the ConfigMap keeps it readable: the keys are removed
    and the SecretSync goes. The control plane runs no namespace controller: the test deletes."""
    kube = api_client(plane.kubeconfig)
    kubeconfig = plane.kubeconfig_for_user(OPERATOR_USER)
    with operator_process(kubeconfig, tmp_path / "first.log"):
        start(kube, namespace, fake)
        wait_for(lambda: status(kube, namespace, SYNCS, "sync").get("ledger"), timeout=60)
        assert len(remote(fake)) == 1500
    # The namespace is deleted while the operator is down (or hands over to a standby): the
    # SecretSync stays (finalizer), its ledger ConfigMap does not.
    delete(kube, namespace, SYNCS, "sync")
    client.CoreV1Api(kube).delete_namespaced_config_map("sync-ledger", namespace)
    with operator_process(kubeconfig, tmp_path / "second.log") as operator:
        try:
            wait_for(lambda: get(kube, namespace, SYNCS, "sync") is None, timeout=60)
        except Exception:
            found = status(kube, namespace, SYNCS, "sync")
            raise AssertionError(
                f"SecretSync never goes: {found.get('lastSyncMessage')}; "
                f"{len(remote(fake))} keys left"
            ) from None
        assert remote(fake) == {}
        del operator
