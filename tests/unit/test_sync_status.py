"""A SecretSync's status and Events from a cycle's outcome (pure)."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any, cast

import pytest

from infisical_sync.conditions import timestamp
from infisical_sync.connection import ConnectionReconciler
from infisical_sync.kube import Kube
from infisical_sync.planner import Plan
from infisical_sync.status_patch import merge_patch, status_patch
from infisical_sync.sync import SyncEngine
from infisical_sync.sync_status import (
    DESTINATION_READ,
    SourceFacts,
    failed_status,
    succeeded_status,
    suspended_status,
    transition_events,
    transition_log,
)

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)
READ = SourceFacts(keys_read=2)


def conditions(status: dict[str, object]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}  # type: ignore[attr-defined, index]


def test_a_clean_sync_is_ready_and_counts_keys() -> None:
    result = Plan(create={"A": "1"}, unchanged=["B"], managed_after=["A", "B"])
    status = succeeded_status({}, 3, NOW, result, READ, dry_run=False)
    assert status["syncStatus"] == "Succeeded" and status["syncedKeys"] == 2
    assert status["lastSyncedAt"] == "2026-11-28T12:00:00Z" and status["observedGeneration"] == 3
    assert status["heldDeletes"] is None  # clears an earlier hold (merge patch)
    assert conditions(status)["Ready"] == ("True", "Synced")
    assert status["lastSyncMessage"].startswith("create 1, update 0, delete 0, unchanged 1")


def test_held_deletes_are_shown_with_their_id() -> None:
    result = Plan(
        held_deletes=["C", "D"], hold_reason="would delete 2 of 3", held_id="abc123", held_since="t"
    )
    status = succeeded_status({"lastSyncedAt": "x"}, 1, NOW, result, READ, dry_run=False)
    assert status["heldDeletes"] == {
        "keys": ["C", "D"],
        "reason": "would delete 2 of 3",
        "id": "abc123",
        "since": "t",
    }
    assert status["syncStatus"] == "Failed" and "lastSyncedAt" not in status
    assert conditions(status)["Synced"] == ("False", "DeletionHeld")


def test_a_cycle_that_skips_every_key_is_not_synced() -> None:
    source = SourceFacts(keys_read=0, skipped={"BIN": "value is not UTF-8 text"})
    status = succeeded_status({}, 1, NOW, Plan(), source, dry_run=False)
    assert conditions(status)["Ready"] == ("False", "AllKeysSkipped")
    assert "BIN: value is not UTF-8 text" in status["lastSyncMessage"]


def test_an_uncertain_source_is_not_ready_but_the_first_sync_is_over() -> None:
    source = SourceFacts(
        keys_read=1, problems=("Secret ns/b not found",), problem_reason="SecretNotFound"
    )
    status = succeeded_status({}, 1, NOW, Plan(create={"A": "1"}), source, dry_run=False)
    assert conditions(status)["SourceReady"] == ("False", "SecretNotFound")
    assert conditions(status)["Synced"] == ("False", "SourceUncertain")
    assert status["syncStatus"] == "Failed" and status["lastSyncedAt"]


def test_dry_run_keeps_the_sync_status_and_writes_no_counts() -> None:
    status = succeeded_status(
        {"syncStatus": "Succeeded"}, 2, NOW, Plan(create={"A": "1"}), READ, dry_run=True
    )
    assert status["syncStatus"] == "Succeeded" and "managedKeys" not in status
    assert status["plan"]["create"] == ["A"] and conditions(status)["Synced"] == ("False", "DryRun")
    assert status["lastSyncMessage"].startswith("would create 1")


def test_failed_and_suspended() -> None:
    failed = failed_status(
        {},
        4,
        NOW,
        condition="DestinationReady",
        reason="Unreachable",
        message="down",
        described={"destination": "d"},
    )
    assert conditions(failed)["DestinationReady"] == ("False", "Unreachable")
    assert failed["destination"] == "d" and failed["syncStatus"] == "Failed"
    suspended = suspended_status(failed, 5, NOW, {})
    assert (
        conditions(suspended)["Ready"] == ("False", "Suspended") and "syncStatus" not in suspended
    )


def test_events_only_on_transitions() -> None:
    ok = succeeded_status({}, 1, NOW, Plan(create={"A": "1"}), READ, dry_run=False)
    assert [e.reason for e in transition_events({}, ok)] == ["Synced"]
    assert transition_events(ok, ok) == []  # still Succeeded: nothing to say
    failed = failed_status(
        ok, 1, NOW, condition="Synced", reason="ServerError", message="500", described={}
    )
    assert [(e.type, e.reason) for e in transition_events(ok, failed)] == [
        ("Warning", "ServerError")
    ]
    conflicted = {**ok, "conflicts": ["X"]}
    assert [e.message for e in transition_events(ok, conflicted)] == ["keys left alone: X"]


@pytest.mark.parametrize(
    ("from_destination", "instance", "expected"),
    [
        (None, False, "Ledger"),  # empty destination on an instance without secretMetadata
        (None, True, "Metadata"),
        (None, None, None),  # nothing tells yet: the previous value stays
        (True, False, "Metadata"),  # the destination's own keys win
        (False, None, "Ledger"),
    ],
)
def test_ownership_tracking(
    from_destination: bool | None, instance: bool | None, expected: str | None
) -> None:
    result = Plan(create={"A": "1"}, metadata_tracking=from_destination)
    status = succeeded_status({}, 1, NOW, result, READ, dry_run=False, instance_tracking=instance)
    assert status.get("ownershipTracking") == expected


def test_a_failure_keeps_what_the_cycle_learnt_before_it() -> None:
    earlier = failed_status(
        {},
        1,
        NOW,
        condition="DestinationReady",
        reason="ConnectionNotReady",
        message="not Ready",
        described={},
    )
    later = failed_status(
        earlier,
        1,
        NOW,
        condition="SourceReady",
        reason="SecretNotFound",
        message="Secret ns/app not found",
        described={},
        known=[DESTINATION_READ],
    )
    assert conditions(later)["DestinationReady"] == ("True", "DestinationRead")
    assert conditions(later)["SourceReady"] == ("False", "SecretNotFound")
    assert conditions(later)["Ready"] == ("False", "SecretNotFound")


def failing(previous: dict[str, Any], reason: str, message: str = "down") -> dict[str, Any]:
    return failed_status(
        previous, 1, NOW, condition="Synced", reason=reason, message=message, described={}
    )


def test_the_log_says_once_when_a_sync_starts_failing_and_once_when_it_recovers() -> None:
    ok = succeeded_status({}, 1, NOW, Plan(create={"A": "1"}), READ, dry_run=False)
    first = failing(ok, "ServerError", "batch create of 1 keys: 500")
    line = transition_log("ns", "sync", ok, first)
    assert line is not None and line.level == logging.WARNING
    assert line.message == "SecretSync ns/sync failed: ServerError: batch create of 1 keys: 500"
    again = failing(first, "ServerError")
    assert transition_log("ns", "sync", first, again).level == logging.DEBUG  # type: ignore[union-attr]
    other = failing(again, "PermissionDenied")  # failing for another reason: said again
    assert transition_log("ns", "sync", again, other).level == logging.WARNING  # type: ignore[union-attr]
    recovered = succeeded_status(other, 1, NOW, Plan(unchanged=["A"]), READ, dry_run=False)
    line = transition_log("ns", "sync", other, recovered)
    assert line is not None and line.level == logging.INFO
    assert line.message.startswith("SecretSync ns/sync synced again: ")
    assert transition_log("ns", "sync", recovered, recovered) is None
    assert transition_log("ns", "sync", {}, failing({}, "InvalidSpec")).level == logging.WARNING  # type: ignore[union-attr]


class NoConnections:
    """No connection is Ready (nor known): every cycle fails with ConnectionNotReady."""

    def session(self, namespace: str, name: str) -> None:
        return None

    def state(self, namespace: str, name: str) -> None:
        return None


@dataclass
class Connections:
    """The API server's answer to whether the InfisicalConnection exists."""

    exists: bool

    async def object_exists(self, plural: str, namespace: str, name: str) -> bool:
        assert plural == "infisicalconnections"
        return self.exists


@pytest.mark.parametrize(
    ("exists", "detail", "stalled"),
    [(True, "not validated yet", "False"), (False, "it does not exist", "True")],
)
async def test_a_connection_this_process_never_validated_is_stalled_only_when_missing(
    exists: bool, detail: str, stalled: str
) -> None:
    """Just created (its first validation comes): Reconciling. Not there (a typo in
    connectionRef): Stalled, someone must act."""
    engine = SyncEngine(
        cast(Kube, Connections(exists=exists)),
        cast(ConnectionReconciler, NoConnections()),
        post_event=lambda *_: None,
        cluster_id="c",
    )
    body = {
        "metadata": {"name": "sync", "generation": 1, "uid": "u"},
        "spec": {
            "source": {"kubernetes": {"secrets": [{"name": "app"}]}},
            "destination": {
                "connectionRef": {"name": "dest"},
                "projectId": "p",
                "environment": "prod",
            },
        },
    }
    result = await engine.run("ns", "sync", body, None)
    conditions = {c["type"]: c for c in result.status["conditions"]}
    assert conditions["Ready"]["reason"] == "ConnectionNotReady"
    assert conditions["Ready"]["message"].endswith(f"is not Ready: {detail}")
    assert conditions["Stalled"]["status"] == stalled
    assert conditions["Reconciling"]["status"] == ("False" if stalled == "True" else "True")


async def test_a_failing_sync_logs_one_warning_then_stays_quiet(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="infisical_sync")
    engine = SyncEngine(
        cast(Kube, Connections(exists=True)),
        cast(ConnectionReconciler, NoConnections()),
        post_event=lambda *_: None,
        cluster_id="c",
    )
    body = {
        "metadata": {"name": "sync", "generation": 1, "uid": "u"},
        "spec": {
            "source": {"kubernetes": {"secrets": [{"name": "app"}]}},
            "destination": {
                "connectionRef": {"name": "dest"},
                "projectId": "p",
                "environment": "prod",
            },
        },
    }
    previous: dict[str, Any] | None = None
    for _ in range(3):
        result = await engine.run("ns", "sync", body, previous)
        previous = {**(previous or {}), **result.status}
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if "ns/sync" in r.getMessage()]
    assert [level for level, _ in lines] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    assert lines[0][1] == (
        "SecretSync ns/sync failed: ConnectionNotReady: InfisicalConnection ns/dest is not Ready:"
        " not validated yet"
    )


# --- quiet status (issue 10) --------------------------------------------------------------------

LATER = NOW + dt.timedelta(minutes=5)
EVEN_LATER = NOW + dt.timedelta(minutes=10)


def test_a_sync_that_changes_nothing_leaves_the_status_as_it_was() -> None:
    first = succeeded_status(
        {}, 1, NOW, Plan(create={"A": "1"}, managed_after=["A"]), READ, dry_run=False
    )
    idle = Plan(unchanged=["A"], managed_after=["A"])
    second = merge_patch(first, succeeded_status(first, 1, LATER, idle, READ, dry_run=False))
    assert second["lastSyncedAt"] == timestamp(NOW)  # nothing was synced: no new time
    assert "lastSyncAttemptAt" not in second  # a heartbeat: liveness is in the metrics
    assert (
        status_patch(second, succeeded_status(second, 1, EVEN_LATER, idle, READ, dry_run=False))
        == {}
    )


def test_lastsyncedat_moves_when_keys_are_written_or_the_sync_recovers() -> None:
    before = {"syncStatus": "Succeeded", "lastSyncedAt": "x"}
    wrote = succeeded_status(before, 1, LATER, Plan(update={"A": "2"}), READ, dry_run=False)
    assert wrote["lastSyncedAt"] == timestamp(LATER)
    recovered = {**before, "syncStatus": "Failed"}
    idle = succeeded_status(recovered, 1, LATER, Plan(unchanged=["A"]), READ, dry_run=False)
    assert idle["lastSyncedAt"] == timestamp(LATER)


def test_a_failure_that_repeats_itself_writes_nothing() -> None:
    def failure(at: dt.datetime, previous: dict[str, Any]) -> dict[str, Any]:
        return failed_status(
            previous,
            1,
            at,
            condition="DestinationReady",
            reason="Forbidden",
            message="no access",
            described={"source": "secret:app"},
        )

    first = merge_patch({"lastSyncAttemptAt": "old"}, failure(NOW, {}))
    assert "lastSyncAttemptAt" not in first  # cleared from a status an older version wrote
    assert status_patch(first, failure(LATER, first)) == {}
    assert status_patch(first, suspended_status(first, 1, LATER, {})) != {}


@pytest.mark.parametrize("tracking", [True, False])
def test_status_stays_small_at_ten_thousand_keys(tracking: bool) -> None:
    """Name lists are capped with totals in keyCounts; only the ledger a server without
    secretMetadata depends on stays whole."""
    import json

    names = [f"SERVICE_{i:05d}_DATABASE_PASSWORD" for i in range(10_000)]
    result = Plan(
        create={name: "v" for name in names[:4000]},
        update={name: "v" for name in names[4000:8000]},
        conflicts={name: "owned by SecretSync ns/other" for name in names[8000:9000]},
        managed_after=names[:8000],
        metadata_tracking=tracking,
    )
    status = succeeded_status({}, 1, NOW, result, READ, dry_run=False)
    assert status["keyCounts"] == {
        "create": 4000,
        "update": 4000,
        "delete": 0,
        "conflicts": 1000,
        "skipped": 0,
        "held": 0,
        "managed": 8000,
    }
    assert len(status["plan"]["create"]) == len(status["conflicts"]) == 100
    size = len(json.dumps(status))
    if tracking:
        assert len(status["managedKeys"]) == 100 and size <= 64 * 1024
    else:
        assert status["managedKeys"] == names[:8000]  # the ledger: ownership depends on it
