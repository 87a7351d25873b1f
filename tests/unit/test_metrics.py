"""The readiness metrics' own rules: bounded reasons, a reason series only while not Ready,
one per object."""

from __future__ import annotations

from prometheus_client import REGISTRY

from infisical_sync import metrics


def reasons(name: str) -> list[str]:
    return [
        found.labels["reason"]
        for family in REGISTRY.collect()
        if family.name == "infisical_sync_not_ready_reason"
        for found in family.samples
        if found.labels["namespace"] == "metrics-ns" and found.labels["name"] == name
    ]


def test_a_reason_outside_the_operators_vocabulary_is_not_let_into_a_label() -> None:
    metrics.set_ready("SecretSync", "metrics-ns", "odd", False, "token abc123: denied")
    assert reasons("odd") == [metrics.OTHER_REASON]
    metrics.set_ready("SecretSync", "metrics-ns", "odd", False, "Unreachable")
    assert reasons("odd") == ["Unreachable"]  # the earlier reason's series went
    metrics.set_ready("SecretSync", "metrics-ns", "odd", True, "Synced")
    assert reasons("odd") == []  # Ready: nothing to say
    assert (
        REGISTRY.get_sample_value(
            "infisical_sync_ready", {"kind": "SecretSync", "namespace": "metrics-ns", "name": "odd"}
        )
        == 1
    )
    metrics.set_ready("SecretSync", "metrics-ns", "odd", False, "Suspended")
    metrics.forget_object("SecretSync", "metrics-ns", "odd")
    assert reasons("odd") == []
    assert (
        REGISTRY.get_sample_value(
            "infisical_sync_ready", {"kind": "SecretSync", "namespace": "metrics-ns", "name": "odd"}
        )
        is None
    )


def test_readiness_and_held_deletes_read_from_a_status() -> None:
    assert metrics.ready_of({}) is None
    assert metrics.ready_of(
        {
            "conditions": [
                {"type": "Synced", "status": "True"},
                {"type": "Ready", "status": "False", "reason": "Suspended"},
            ]
        }
    ) == (False, "Suspended")
    assert metrics.held_deletes_of({"heldDeletes": None, "keyCounts": {"held": 2}}) == 0
    assert metrics.held_deletes_of({"heldDeletes": {"keys": ["A", "B"]}}) == 2
    assert (
        metrics.held_deletes_of({"heldDeletes": {"keys": ["A"]}, "keyCounts": {"held": 150}}) == 150
    )
