"""The Argo CD health checks (deploy/argocd/*.lua) on hand-written statuses, and the argocd-cm
patch that ships them. The integration test runs them on statuses the operator wrote."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from tests.argocd_health import ARGOCD, SCRIPTS, argocd_health


def obj(kind: str, generation: int, status: dict[str, Any] | None, **spec: Any) -> dict[str, Any]:
    found: dict[str, Any] = {
        "apiVersion": "infisical-sync.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "x", "namespace": "ns", "generation": generation},
        "spec": spec,
    }
    if status is not None:
        found["status"] = status
    return found


def status(
    observed: int, ready: str, reason: str, *, reconciling: str = "False", stalled: str = "False"
) -> dict[str, Any]:
    def condition(type_: str, value: str) -> dict[str, Any]:
        return {"type": type_, "status": value, "reason": reason, "observedGeneration": observed}

    return {
        "observedGeneration": observed,
        "conditions": [
            {**condition("Ready", ready), "message": f"{reason} message"},
            condition("Reconciling", reconciling),
            condition("Stalled", stalled),
        ],
    }


@pytest.mark.parametrize("kind", sorted(SCRIPTS))
def test_the_argocd_cm_patch_holds_every_script_as_it_is(kind: str) -> None:
    patch = yaml.safe_load((ARGOCD / "argocd-cm-patch.yaml").read_text())
    key = f"resource.customizations.health.infisical-sync.dev_{kind}"
    assert patch["data"][key] == SCRIPTS[kind].read_text(), (
        f"copy {SCRIPTS[kind].name} into argocd-cm-patch.yaml"
    )
    assert set(patch) == {"data"}
    assert {key.rsplit("_", 1)[1] for key in patch["data"]} == set(SCRIPTS)


@pytest.mark.parametrize("kind", sorted(SCRIPTS))
@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, "Progressing"),  # the operator has not written anything yet
        ({}, "Progressing"),
        ({"observedGeneration": -1}, "Progressing"),  # the CRD's default
        (status(2, "True", "Synced"), "Healthy"),
        (status(1, "True", "Synced"), "Progressing"),  # an edit not reached yet
        (status(2, "False", "Unreachable", reconciling="True"), "Progressing"),
        (status(2, "False", "SecretNotFound", stalled="True"), "Degraded"),
        (status(1, "False", "SecretNotFound", stalled="True"), "Progressing"),  # maybe fixed
        # Not Ready, and written before the operator wrote Reconciling and Stalled.
        (
            {"observedGeneration": 2, "conditions": [status(2, "False", "X")["conditions"][0]]},
            "Degraded",
        ),
        ({"observedGeneration": 2, "conditions": []}, "Progressing"),
    ],
)
def test_health(kind: str, given: dict[str, Any] | None, expected: str) -> None:
    assert argocd_health(obj(kind, 2, given))[0] == expected


def test_a_ready_condition_of_an_older_generation_is_progressing() -> None:
    found = status(2, "True", "Synced")
    found["conditions"][0]["observedGeneration"] = 1
    assert argocd_health(obj("SecretSync", 2, found))[0] == "Progressing"


@pytest.mark.parametrize("reason", ["Suspended", "ApprovalRequired"])
def test_a_deliberate_hold_is_suspended(reason: str) -> None:
    health, message = argocd_health(obj("SecretSync", 2, status(2, "False", reason)))
    assert (health, message) == ("Suspended", f"{reason} message")


def test_the_message_names_the_reason_and_the_generations() -> None:
    degraded = status(3, "False", "InvalidCredentials", stalled="True")
    assert argocd_health(obj("InfisicalConnection", 3, degraded)) == (
        "Degraded",
        "InvalidCredentials: InvalidCredentials message",
    )
    stale = status(2, "True", "Synced")
    assert argocd_health(obj("SecretSync", 3, stale)) == (
        "Progressing",
        "Generation 3 is not synced yet (status is for generation 2)",
    )


@pytest.mark.parametrize("kind", sorted(SCRIPTS))
@pytest.mark.parametrize("with_stalled", [True, False])
def test_a_ready_condition_without_a_reason_is_not_a_lua_error(
    kind: str, with_stalled: bool
) -> None:
    """The CRD does not require a condition's reason (Stalled True, or Ready alone as an
    earlier version wrote it: Degraded either way)."""
    found = status(2, "False", "X", stalled="True")
    del found["conditions"][0]["reason"]
    if not with_stalled:
        found["conditions"] = found["conditions"][:1]
    assert argocd_health(obj(kind, 2, found)) == ("Degraded", "NotReady: X message")


def test_a_cluster_connection_with_denied_secret_syncs_is_still_healthy() -> None:
    """SecretSyncs outside its namespaceSelector are Degraded themselves (ConnectionNotAllowed);
    the connection they name is not."""
    found = {
        **status(2, "True", "Validated"),
        "secretSyncs": 3,
        "namespaces": 2,
        "deniedSecretSyncs": 1,
    }
    cluster = obj("ClusterInfisicalConnection", 2, found)
    del cluster["metadata"]["namespace"]
    assert argocd_health(cluster) == ("Healthy", "Validated message")
    refused = status(2, "False", "ConnectionNotAllowed", stalled="True")
    assert argocd_health(obj("SecretSync", 2, refused)) == (
        "Degraded",
        "ConnectionNotAllowed: ConnectionNotAllowed message",
    )
