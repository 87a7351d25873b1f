"""The pure decision of a restarted operator's first cycle: send the recorded ETag or not."""

from __future__ import annotations

from typing import Any

import pytest

from infisical_sync.infisical.models import SecretLocation
from infisical_sync.resume import (
    LastRead,
    etag_to_resume,
    infisical_versions,
    inputs_digest,
    kubernetes_versions,
    to_record,
)

URL = "https://infisical.example"
HERE = SecretLocation(project_id="p1", environment="prod", secret_path="/app")
ETAG = '"0123abcd"'


def digest(**overrides: Any) -> str:
    fields: dict[str, Any] = {
        "generation": 3,
        "requested_at": None,
        "source_versions": kubernetes_versions({"app": "101", "db": "7"}),
        "cluster_id": "cluster-a",
        "operator_version": "1.0.0",
        **overrides,
    }
    return inputs_digest(**fields)


def clean(**overrides: Any) -> dict[str, Any]:
    """A status as a clean cycle that wrote nothing leaves it."""
    status: dict[str, Any] = {
        "syncStatus": "Succeeded",
        "observedGeneration": 3,
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "Synced"},
            {"type": "Synced", "status": "True", "reason": "Synced"},
        ],
        "conflicts": [],
        "heldDeletes": None,
        "pendingApproval": None,
        "skippedKeys": [],
        "lastRead": LastRead(URL, HERE, ETAG, digest()).status(),
    }
    status.update(overrides)
    return status


def resume(previous: dict[str, Any], **overrides: Any) -> str | None:
    fields: dict[str, Any] = {
        "instance_url": URL,
        "location": HERE,
        "inputs": digest(),
        "mass_delete_confirmation": None,
        **overrides,
    }
    return etag_to_resume(previous, **fields)


def test_a_clean_outcome_with_the_same_inputs_at_the_same_place_sends_its_etag() -> None:
    assert resume(clean()) == ETAG


@pytest.mark.parametrize(
    "place",
    [
        {"instance_url": "https://other.example"},  # the connection's URL changed
        {"location": SecretLocation(project_id="p2", environment="prod", secret_path="/app")},
        {"location": SecretLocation(project_id="p1", environment="dev", secret_path="/app")},
        {"location": SecretLocation(project_id="p1", environment="prod", secret_path="/other")},
    ],
)
def test_an_etag_is_never_sent_to_another_place(place: dict[str, Any]) -> None:
    assert resume(clean(), **place) is None


@pytest.mark.parametrize(
    "changed",
    [
        {"generation": 4},  # the spec changed
        {"requested_at": "2026-01-01T00:00:00Z"},  # a sync was requested while we were away
        {"source_versions": kubernetes_versions({"app": "102", "db": "7"})},  # a Secret changed
        {"source_versions": kubernetes_versions({"app": "101"})},  # a selector matches fewer
        {"source_versions": kubernetes_versions({"app": "101", "db": "7", "new": "1"})},
        {"cluster_id": "cluster-b"},  # another owner identity
        {"owner_uid": "uid-restored"},  # the object was deleted and restored (same name)
        {"operator_version": "1.1.0"},  # another planner
    ],
)
def test_anything_the_outcome_depends_on_changing_means_a_full_cycle(
    changed: dict[str, Any],
) -> None:
    assert resume(clean(), inputs=digest(**changed)) is None


@pytest.mark.parametrize(
    "last",
    [
        {"syncStatus": "Failed"},
        {"syncStatus": "Running"},  # stopped mid-write
        {"conflicts": ["SHARED"]},
        {"heldDeletes": {"keys": ["A"], "reason": "mass delete", "id": "x", "since": "t"}},
        {"pendingApproval": {"id": "cr-1"}},
        {"skippedKeys": ["BIN: value is not UTF-8 text"]},
        {"conditions": [{"type": "Synced", "status": "True", "reason": "SyncedWithConflicts"}]},
        {"conditions": [{"type": "Synced", "status": "False", "reason": "DryRun"}]},
        {"conditions": []},
        {"lastRead": None},
        {"lastRead": {"instanceUrl": URL, "etag": ETAG}},  # not all of it (pruned, edited)
    ],
)
def test_only_a_clean_last_outcome_is_resumed(last: dict[str, Any]) -> None:
    assert resume(clean(**last)) is None


def test_a_mass_delete_confirmation_always_plans() -> None:
    assert resume(clean(), mass_delete_confirmation="held-1") is None


def test_an_infisical_source_without_an_etag_has_no_version() -> None:
    assert infisical_versions(URL, '{"path": "/"}', None) is None
    one = infisical_versions(URL, '{"path": "/"}', '"a"')
    assert one is not None and one != infisical_versions(
        "https://b.example", '{"path": "/"}', '"a"'
    )
    assert digest(source_versions=one) != digest(source_versions={"infisical": "x"})


def test_only_a_clean_cycle_that_wrote_nothing_is_recorded() -> None:
    status = clean(lastRead=None)
    recorded = to_record(
        status, instance_url=URL, location=HERE, etag=ETAG, inputs=digest(), wrote=False
    )
    assert recorded == {
        "instanceUrl": URL,
        "projectId": "p1",
        "environment": "prod",
        "secretPath": "/app",
        "etag": ETAG,
        "inputs": digest(),
    }
    assert resume({**status, "lastRead": recorded}) == ETAG
    # After writes, the ETag describes the destination before them: reverted to that state, it
    # would answer 304 while our writes are missing.
    assert (
        to_record(status, instance_url=URL, location=HERE, etag=ETAG, inputs=digest(), wrote=True)
        is None
    )
    assert (
        to_record(status, instance_url=URL, location=HERE, etag=None, inputs=digest(), wrote=False)
        is None
    )
    assert (
        to_record(status, instance_url=URL, location=HERE, etag=ETAG, inputs=None, wrote=False)
        is None
    )
    failed = {**status, "syncStatus": "Failed"}
    assert (
        to_record(failed, instance_url=URL, location=HERE, etag=ETAG, inputs=digest(), wrote=False)
        is None
    )
