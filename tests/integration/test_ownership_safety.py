"""Safety of writes and deletes (issue: hardening): where removal acts, what a partly unreadable
source pushes, owner identity across clusters, Retain releasing ownership, and the one-shot
mass-delete confirmation. The operator process, the real control plane, the fake Infisical."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from tests.conftest import wait_for
from tests.integration import test_secretsync as base
from tests.integration.test_secretsync import (
    CONNECTIONS,
    PROJECT,
    SYNCS,
    next_cycle,
    remote,
    request_sync,
    sync_spec,
    sync_status,
)
from tests.kube_helpers import condition, create, delete, get, patch, put_secret, status

from infisical_sync.planner import OWNER_CLUSTER_KEY, OWNER_KEY, OWNER_UID_KEY
from infisical_sync.testing.fake_infisical import BackgroundFake, FakeInfisical

pytestmark = pytest.mark.controlplane
Env = tuple[Any, str, FakeInfisical]
ALLOW = "infisical-sync.dev/allow-mass-delete"
fake, env = base.fake, base.env  # the SecretSync suite's fixtures: a fake, a Ready connection


def annotations(kube: Any, namespace: str, name: str = "sync") -> dict[str, str]:
    return dict(((get(kube, namespace, SYNCS, name) or {})["metadata"].get("annotations")) or {})


def encrypted_keys(fake: FakeInfisical, key: str, path: str = "/apps/payments") -> set[str]:
    secret = fake.state.folder(PROJECT, "prod", path)[key]  # type: ignore[index]
    return {item["key"] for item in secret.metadata or [] if item.get("isEncrypted")}


def metadata_keys(fake: FakeInfisical, key: str, path: str = "/apps/payments") -> dict[str, str]:
    secret = fake.state.folder(PROJECT, "prod", path)[key]  # type: ignore[index]
    return {item["key"]: item["value"] for item in secret.metadata or []}


def test_removal_acts_where_the_last_sync_wrote(env: Env) -> None:
    kube, namespace, fake = env
    fake.metadata_supported = False  # ledger mode: status.managedKeys is all that says "ours"
    put_secret(kube, namespace, "app", {"A": "1", "B": "2"})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec(deletionPolicy="Delete"))
    wait_for(lambda: status(kube, namespace, SYNCS, "sync").get("managedKeys") == ["A", "B"])
    fake.state.put_secret(PROJECT, "prod", "/other", "A", "someone else's")
    fake.state.put_secret(PROJECT, "prod", "/other", "B", "someone else's too")
    # The destination moves while suspended: no sync records the new place before deletion.
    patch(kube, namespace, SYNCS, "sync", {"spec": {"suspend": True}})
    wait_for(lambda: condition(kube, namespace, SYNCS, "sync", "Ready") == ("False", "Suspended"))
    patch(kube, namespace, SYNCS, "sync", {"spec": {"destination": {"secretPath": "/other"}}})
    delete(kube, namespace, SYNCS, "sync")
    wait_for(lambda: get(kube, namespace, SYNCS, "sync") is None, timeout=30)
    assert remote(fake, "/other") == {"A": "someone else's", "B": "someone else's too"}
    assert remote(fake) == {}  # removed where they were written


def test_a_partly_unreadable_source_pushes_no_value_it_may_override(env: Env) -> None:
    kube, namespace, fake = env
    put_secret(kube, namespace, "app", {"K": "from-app", "A": "1"})
    put_secret(kube, namespace, "extra", {"K": "from-extra"})
    spec = sync_spec()
    spec["source"]["kubernetes"]["secrets"] = [{"name": "app"}, {"name": "extra", "keys": ["K"]}]
    create(kube, namespace, SYNCS, "SecretSync", "sync", spec)
    wait_for(lambda: remote(fake) == {"K": "from-extra", "A": "1"})
    client.CoreV1Api(kube).delete_namespaced_secret("extra", namespace)
    put_secret(kube, namespace, "app", {"K": "from-app", "A": "2", "NEW": "n"})
    # What app alone decides is written; K, which the unreadable extra would override, is not.
    wait_for(lambda: remote(fake) == {"K": "from-extra", "A": "2", "NEW": "n"}, timeout=15)
    found = wait_for(
        lambda: (
            status(kube, namespace, SYNCS, "sync").get("skippedKeys")
            and status(kube, namespace, SYNCS, "sync")
        )
    )
    assert found["skippedKeys"] == [
        f"K: held: Secret {namespace}/extra could not be read and may override it"
    ]
    assert condition(kube, namespace, SYNCS, "sync", "SourceReady") == ("False", "SecretNotFound")
    assert condition(kube, namespace, SYNCS, "sync", "Synced") == ("False", "SourceUncertain")


def test_a_same_named_sync_of_another_cluster_is_a_conflict(env: Env) -> None:
    kube, namespace, fake = env
    twin = [
        {"key": OWNER_KEY, "value": f"{namespace}/sync"},
        {"key": OWNER_UID_KEY, "value": "uid-on-the-other-cluster"},
        {"key": OWNER_CLUSTER_KEY, "value": "the-other-cluster"},
    ]
    fake.state.put_secret(PROJECT, "prod", "/apps/payments", "SHARED", "theirs", twin)
    fake.state.put_secret(PROJECT, "prod", "/apps/payments", "THEIRS_ONLY", "t", twin)
    put_secret(kube, namespace, "app", {"SHARED": "mine", "MINE": "m"})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec(deletionPolicy="Delete"))
    wait_for(lambda: status(kube, namespace, SYNCS, "sync").get("conflicts") == ["SHARED"])
    assert remote(fake) == {"SHARED": "theirs", "THEIRS_ONLY": "t", "MINE": "m"}
    found = status(kube, namespace, SYNCS, "sync")
    assert found["managedKeys"] == ["MINE"]
    assert "another cluster (the-other-cluster)" in found["lastSyncMessage"]
    ours = metadata_keys(fake, "MINE")
    assert ours[OWNER_KEY] == f"{namespace}/sync" and ours[OWNER_CLUSTER_KEY]
    assert ours[OWNER_CLUSTER_KEY] != "the-other-cluster"
    # This cluster's identity is the kube-system namespace UID (no --cluster-id given).
    kube_system = client.CoreV1Api(kube).read_namespace("kube-system")
    assert ours[OWNER_CLUSTER_KEY] == kube_system.metadata.uid
    delete(kube, namespace, SYNCS, "sync")
    wait_for(lambda: get(kube, namespace, SYNCS, "sync") is None, timeout=30)
    assert remote(fake) == {"SHARED": "theirs", "THEIRS_ONLY": "t"}


def test_retain_releases_ownership_so_another_sync_can_adopt(env: Env) -> None:
    kube, namespace, fake = env
    fake.state.put_secret(
        PROJECT,
        "prod",
        "/apps/payments",
        "A",
        "a",
        [{"key": "team", "value": "payments", "isEncrypted": True}],
    )
    put_secret(kube, namespace, "app", {"A": "1", "B": "2"})
    create(kube, namespace, SYNCS, "SecretSync", "first", sync_spec())  # Retain by default
    wait_for(lambda: status(kube, namespace, SYNCS, "first").get("managedKeys") == ["A", "B"])
    delete(kube, namespace, SYNCS, "first")
    wait_for(lambda: get(kube, namespace, SYNCS, "first") is None, timeout=30)
    assert remote(fake) == {"A": "1", "B": "2"}  # kept, values and all
    assert metadata_keys(fake, "A") == {"team": "payments"}  # only our entries went
    assert encrypted_keys(fake, "A") == {"team"}  # written back twice, still encrypted
    assert metadata_keys(fake, "B") == {}
    create(kube, namespace, SYNCS, "SecretSync", "second", sync_spec())
    wait_for(lambda: sync_status(kube, namespace, "second") == "Succeeded")
    found = status(kube, namespace, SYNCS, "second")
    assert found["managedKeys"] == ["A", "B"] and found["conflicts"] == []
    assert metadata_keys(fake, "A")[OWNER_KEY] == f"{namespace}/second"


def test_allow_mass_delete_lets_one_held_plan_through_once(env: Env) -> None:
    kube, namespace, fake = env
    put_secret(kube, namespace, "app", {k: k for k in "ABCDEF"})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec())
    wait_for(lambda: len(remote(fake)) == 6)
    put_secret(kube, namespace, "app", {"A": "A", "B": "B"})
    wait_for(lambda: (status(kube, namespace, SYNCS, "sync").get("heldDeletes") or {}).get("id"))
    held = status(kube, namespace, SYNCS, "sync")["heldDeletes"]
    assert held["keys"] == ["C", "D", "E", "F"]
    assert condition(kube, namespace, SYNCS, "sync", "Synced") == ("False", "DeletionHeld")
    # "true" is not a standing permission any more: the operator drops it, nothing is deleted.
    patch(kube, namespace, SYNCS, "sync", {"metadata": {"annotations": {ALLOW: "true"}}})
    wait_for(lambda: ALLOW not in annotations(kube, namespace))
    next_cycle(kube, namespace)
    assert status(kube, namespace, SYNCS, "sync")["heldDeletes"]["id"] == held["id"]
    assert len(remote(fake)) == 6
    patch(kube, namespace, SYNCS, "sync", {"metadata": {"annotations": {ALLOW: held["id"]}}})
    wait_for(lambda: remote(fake) == {"A": "A", "B": "B"}, timeout=15)
    # Used once: the operator removes the annotation and the next mass delete is held again.
    wait_for(lambda: ALLOW not in annotations(kube, namespace))
    wait_for(lambda: status(kube, namespace, SYNCS, "sync").get("heldDeletes") is None)
    put_secret(kube, namespace, "app", {k: k for k in "ABCDEF"})
    wait_for(lambda: len(remote(fake)) == 6)
    put_secret(kube, namespace, "app", {"A": "A"})
    wait_for(lambda: (status(kube, namespace, SYNCS, "sync").get("heldDeletes") or {}).get("id"))
    assert len(remote(fake)) == 6


def test_an_emptied_source_is_confirmed_the_same_way(env: Env) -> None:
    kube, namespace, fake = env
    put_secret(kube, namespace, "app", {"A": "1"})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec())
    wait_for(lambda: remote(fake) == {"A": "1"})
    put_secret(kube, namespace, "app", {})
    wait_for(lambda: (status(kube, namespace, SYNCS, "sync").get("heldDeletes") or {}).get("id"))
    held = status(kube, namespace, SYNCS, "sync")["heldDeletes"]
    assert "source is empty" in held["reason"] and remote(fake) == {"A": "1"}
    patch(kube, namespace, SYNCS, "sync", {"metadata": {"annotations": {ALLOW: held["id"]}}})
    wait_for(lambda: remote(fake) == {}, timeout=15)
    request_sync(kube, namespace, "after")
    wait_for(lambda: sync_status(kube, namespace) == "Succeeded")


def test_a_ledger_says_nothing_about_another_instance(env: Env) -> None:
    kube, namespace, fake = env
    fake.metadata_supported = False  # ledger mode: status.managedKeys is all that says "ours"
    put_secret(kube, namespace, "app", {"A": "1", "B": "2"})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec(deletionPolicy="Delete"))
    wait_for(lambda: status(kube, namespace, SYNCS, "sync").get("managedKeys") == ["A", "B"])
    patch(kube, namespace, SYNCS, "sync", {"spec": {"suspend": True}})
    wait_for(lambda: condition(kube, namespace, SYNCS, "sync", "Ready") == ("False", "Suspended"))
    # The connection now points at another instance (say, staging restored from a prod dump:
    # same project IDs) whose keys of the same names are someone else's.
    with BackgroundFake() as other:
        other.metadata_supported = False
        other.state.add_project("payments", project_id=PROJECT)
        other.state.add_identity(base.CLIENT_ID, base.CLIENT_SECRET, projects={PROJECT: {}})
        other.state.put_secret(PROJECT, "prod", "/apps/payments", "A", "theirs")
        other.state.put_secret(PROJECT, "prod", "/apps/payments", "B", "theirs too")
        patch(kube, namespace, CONNECTIONS, "dest", {"spec": {"instanceUrl": other.url}})
        wait_for(
            lambda: (
                status(kube, namespace, CONNECTIONS, "dest").get("instanceUrl") == other.url
                and condition(kube, namespace, CONNECTIONS, "dest", "Ready")
                == ("True", "Validated")
            )
        )
        delete(kube, namespace, SYNCS, "sync")
        wait_for(lambda: get(kube, namespace, SYNCS, "sync") is None, timeout=30)
        assert other.state.get_secrets(PROJECT, "prod", "/apps/payments") == {
            "A": "theirs",
            "B": "theirs too",
        }


def test_removal_works_after_the_credentials_secret_is_gone(env: Env) -> None:
    """A namespace deletion deletes the credentials Secret with everything else: the connection
    is no longer Ready, yet its session still removes the keys of a SecretSync being deleted."""
    kube, namespace, fake = env
    put_secret(kube, namespace, "app", {"A": "1"})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec(deletionPolicy="Delete"))
    wait_for(lambda: remote(fake) == {"A": "1"})
    client.CoreV1Api(kube).delete_namespaced_secret("dest-identity", namespace)
    wait_for(
        lambda: (
            condition(kube, namespace, CONNECTIONS, "dest", "Ready") == ("False", "SecretNotFound")
        )
    )
    delete(kube, namespace, SYNCS, "sync")
    wait_for(lambda: get(kube, namespace, SYNCS, "sync") is None, timeout=30)
    assert remote(fake) == {}
    delete(kube, namespace, CONNECTIONS, "dest")  # no longer in use: it goes too
    wait_for(lambda: get(kube, namespace, CONNECTIONS, "dest") is None, timeout=30)
