"""Change-approval policies: a destination whose writes Infisical holds for approval. The
operator process, the real control plane, the fake Infisical."""

from __future__ import annotations

from typing import Any

import pytest
from tests.conftest import wait_for
from tests.integration import test_server_generations as generations
from tests.integration.test_secretsync import (
    CANARY_VALUE,
    PROJECT,
    SYNCS,
    next_cycle,
    remote,
    sync_spec,
    sync_status,
)
from tests.kube_helpers import condition, create, event_reasons, put_secret, status

from infisical_sync.testing.fake_infisical import FakeInfisical

pytestmark = pytest.mark.controlplane
Env = tuple[Any, str, FakeInfisical]
fake, env = generations.fake, generations.env  # on every server generation


def synced(kube: Any, namespace: str) -> tuple[str, str] | None:
    return condition(kube, namespace, SYNCS, "sync", "Synced")


def synced_message(kube: Any, namespace: str) -> str:
    found = status(kube, namespace, SYNCS, "sync")
    return next(c["message"] for c in found["conditions"] if c["type"] == "Synced")


def test_held_writes_are_reported_waited_for_and_synced_once_merged(env: Env) -> None:
    kube, namespace, fake = env
    fake.state.require_approval(PROJECT, "prod")
    put_secret(kube, namespace, "app", {"A": CANARY_VALUE, "B": "2"})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec())
    wait_for(lambda: synced(kube, namespace) == ("False", "ApprovalRequired"))
    [request] = fake.open_approvals()
    found = status(kube, namespace, SYNCS, "sync")
    assert found["syncStatus"] == "Failed" and remote(fake) == {}
    assert found["pendingApproval"]["id"] == request.id and request.id in synced_message(
        kube, namespace
    )
    assert found["pendingApproval"]["keys"] == ["A", "B"]
    assert CANARY_VALUE not in repr(found)

    # Further cycles wait for that request: the same plan opens no other.
    next_cycle(kube, namespace)
    next_cycle(kube, namespace)
    assert len(fake.state.approval_requests) == 1
    assert "waiting for approval" in synced_message(kube, namespace)
    assert event_reasons(kube, namespace, "sync").count("ApprovalRequired") == 1

    # Another value is another plan: one new request, said so.
    put_secret(kube, namespace, "app", {"A": CANARY_VALUE, "B": "3"})
    wait_for(lambda: len(fake.state.approval_requests) == 2, timeout=10)
    newer = fake.open_approvals()[-1]
    wait_for(
        lambda: (
            (status(kube, namespace, SYNCS, "sync").get("pendingApproval") or {}).get("id")
            == newer.id
        )
    )
    assert f"the plan changed since change request {request.id}" in synced_message(kube, namespace)
    next_cycle(kube, namespace)
    assert len(fake.state.approval_requests) == 2
    assert event_reasons(kube, namespace, "sync").count("ApprovalRequired") == 2

    # Approved and merged in Infisical: the next cycle finds the destination in sync.
    fake.merge_approval(newer.id)
    fake.close_approval(request.id)
    next_cycle(kube, namespace)
    wait_for(lambda: sync_status(kube, namespace) == "Succeeded")
    found = status(kube, namespace, SYNCS, "sync")
    assert remote(fake) == {"A": CANARY_VALUE, "B": "3"}
    assert "pendingApproval" not in found and found["managedKeys"] == ["A", "B"]
    assert len(fake.state.approval_requests) == 2


def test_without_metadata_keys_a_merged_request_created_are_owned(env: Env) -> None:
    kube, namespace, fake = env
    fake.metadata_supported = False  # ownership by the status ledger (managedKeys)
    put_secret(kube, namespace, "app", {"A": "1"})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec())
    wait_for(lambda: sync_status(kube, namespace) == "Succeeded")
    fake.state.require_approval(PROJECT, "prod")
    put_secret(kube, namespace, "app", {"A": "1", "B": "2"})
    wait_for(lambda: synced(kube, namespace) == ("False", "ApprovalRequired"), timeout=10)
    [request] = fake.open_approvals()
    fake.merge_approval(request.id)
    next_cycle(kube, namespace)
    wait_for(lambda: sync_status(kube, namespace) == "Succeeded")
    found = status(kube, namespace, SYNCS, "sync")
    # Not a conflict "not managed by this SecretSync": the request was ours.
    assert found["conflicts"] == [] and found["managedKeys"] == ["A", "B"]
    assert len(fake.state.approval_requests) == 1


def test_a_key_made_by_hand_after_a_closed_request(env: Env) -> None:
    """A request closed without merging, then the same key created by hand: on a server that
    keeps metadata the key carries no owner, so it is a conflict, never overwritten. A server
    without metadata cannot tell it from the request's own write (the ledger's limit)."""
    kube, namespace, fake = env
    put_secret(kube, namespace, "app", {"A": "1"})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec())
    wait_for(lambda: sync_status(kube, namespace) == "Succeeded")
    fake.state.require_approval(PROJECT, "prod")
    put_secret(kube, namespace, "app", {"A": "1", "K": "operator's"})
    wait_for(lambda: synced(kube, namespace) == ("False", "ApprovalRequired"), timeout=10)
    [request] = fake.open_approvals()
    fake.close_approval(request.id)
    fake.state.put_secret(PROJECT, "prod", "/apps/payments", "K", "by hand")
    fake.state.approval_policies.clear()
    next_cycle(kube, namespace)
    found = status(kube, namespace, SYNCS, "sync")
    if fake.server.secret_metadata:
        assert found["conflicts"] == ["K"] and remote(fake)["K"] == "by hand"
        assert found["managedKeys"] == ["A"]
    else:
        wait_for(lambda: remote(fake).get("K") == "operator's")
        assert status(kube, namespace, SYNCS, "sync")["managedKeys"] == ["A", "K"]


def test_an_import_into_an_infisical_source_under_approval_waits_too(env: Env) -> None:
    kube, namespace, fake = env
    fake.state.require_approval(PROJECT, "staging")  # the source's environment
    fake.state.put_secret(PROJECT, "staging", "/", "SHARED", "s")
    fake.state.put_secret(PROJECT, "prod", "/apps/payments", "ONLY_DEST", "d")
    spec = sync_spec(syncOptions={"initialSyncBehavior": "import-prioritize-source"})
    spec["source"] = {
        "infisical": {
            "connectionRef": {"name": "dest"},
            "projectId": PROJECT,
            "environment": "staging",
        }
    }
    create(kube, namespace, SYNCS, "SecretSync", "sync", spec)
    wait_for(lambda: synced(kube, namespace) == ("False", "ApprovalRequired"))
    [request] = fake.open_approvals()
    assert request.environment == "staging"
    assert condition(kube, namespace, SYNCS, "sync", "DestinationReady") == (
        "True",
        "DestinationRead",
    )
    next_cycle(kube, namespace)
    next_cycle(kube, namespace)
    assert len(fake.state.approval_requests) == 1  # the same import is not asked for again
    assert remote(fake) == {"ONLY_DEST": "d"}  # nothing pushed before the import
    fake.merge_approval(request.id)
    next_cycle(kube, namespace)
    wait_for(lambda: sync_status(kube, namespace) == "Succeeded")
    assert fake.state.get_secrets(PROJECT, "staging") == {"SHARED": "s", "ONLY_DEST": "d"}
    assert remote(fake) == {"SHARED": "s", "ONLY_DEST": "d"}
