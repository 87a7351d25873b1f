"""Change-approval policies: which open request a plan waits for, and the status it shows (pure)."""

from __future__ import annotations

import datetime as dt

from infisical_sync.approvals import (
    PendingApproval,
    awaited,
    fingerprint,
    opened,
    shown_approval,
)
from infisical_sync.planner import Plan
from infisical_sync.sync_status import (
    SourceFacts,
    approval_status,
    succeeded_status,
    transition_events,
)

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)
WHERE = "https://infisical.example dest/p-1/prod:/apps"
VALUE = "hunter2"  # low entropy: must not be checkable from anything shown


def plan(**values: str) -> Plan:
    return Plan(create=dict(values), delete=["OLD"], managed_after=sorted(values))


def test_the_same_plan_has_the_same_fingerprint_and_values_only_change_the_digest() -> None:
    first = fingerprint(WHERE, plan(A=VALUE, B="2"))
    assert first == fingerprint(WHERE, plan(A=VALUE, B="2"))
    other_value = fingerprint(WHERE, plan(A="other", B="2"))
    assert other_value.plan_id == first.plan_id and other_value.digest != first.digest
    assert fingerprint(WHERE, plan(A=VALUE)).plan_id != first.plan_id  # other keys
    assert fingerprint(WHERE + "/x", plan(A=VALUE, B="2")).plan_id != first.plan_id
    update = Plan(update={"A": VALUE, "B": "2"}, delete=["OLD"])
    assert fingerprint(WHERE, update).plan_id != first.plan_id  # other actions
    assert first.keys == ("A", "B", "OLD")


def test_the_status_names_requests_and_keys_never_values() -> None:
    pending = opened(("req-1", "req-2"), fingerprint(WHERE, plan(A=VALUE)), "2026-11-28T12:00:00Z")
    shown = pending.status()
    assert shown == {
        "id": "req-1",
        "ids": ["req-1", "req-2"],
        "keys": ["A", "OLD"],
        "since": "2026-11-28T12:00:00Z",
        "planId": pending.plan_id,
    }
    assert VALUE not in repr(shown) and pending.digest not in repr(shown)
    many = opened(("r",), fingerprint(WHERE, plan(**{f"K{i}": "v" for i in range(150)})), "t")
    assert len(many.status()["keys"]) == 151  # all (150 created, OLD deleted): a restart needs them


def test_a_remembered_request_is_awaited_only_by_the_same_values() -> None:
    planned = fingerprint(WHERE, plan(A=VALUE))
    remembered = opened(("req-1",), planned, "t")
    assert awaited(remembered, shown_approval({}), planned) == remembered
    changed = fingerprint(WHERE, plan(A="new value"))
    # Same keys, other values: another plan, even though status shows the same plan id.
    assert (
        awaited(remembered, shown_approval({"pendingApproval": remembered.status()}), changed)
        is None
    )


def test_after_a_restart_the_key_level_plan_in_status_is_awaited() -> None:
    planned = fingerprint(WHERE, plan(A=VALUE))
    status = {"pendingApproval": opened(("req-1",), planned, "t").status()}
    adopted = awaited(None, shown_approval(status), planned)
    assert adopted is not None and adopted.ids == ("req-1",) and adopted.since == "t"
    assert adopted.digest == planned.digest  # remembered with these values from now on
    assert awaited(None, shown_approval(status), fingerprint(WHERE, plan(B="1"))) is None
    assert shown_approval({"pendingApproval": None}) is None
    assert shown_approval({"pendingApproval": {"id": "x"}}) is None  # no plan id: not trusted


def test_approval_status_waiting_opened_and_replaced() -> None:
    result = plan(A=VALUE)
    first = opened(("req-1",), fingerprint(WHERE, result), "2026-11-28T11:00:00Z")
    status = approval_status({}, 2, NOW, result, first, waiting=False, replaced=None, described={})
    synced = next(c for c in status["conditions"] if c["type"] == "Synced")
    assert (synced["status"], synced["reason"]) == ("False", "ApprovalRequired")
    assert "Infisical opened change request req-1" in synced["message"]
    assert status["syncStatus"] == "Failed" and status["pendingApproval"]["id"] == "req-1"
    assert status["plan"] == {"create": ["A"], "update": [], "delete": ["OLD"], "unchanged": 0}
    assert VALUE not in repr(status)
    events = transition_events({"syncStatus": "Succeeded"}, status)
    assert [(e.type, e.reason) for e in events] == [("Warning", "ApprovalRequired")]

    waiting = approval_status(
        status, 2, NOW, result, first, waiting=True, replaced=None, described={}
    )
    assert waiting["lastSyncMessage"].startswith("waiting for approval: change request req-1")
    assert transition_events(status, waiting) == []  # the same request: no new event

    second = opened(("req-2",), fingerprint(WHERE, plan(A="new")), "t2")
    replaced = approval_status(
        waiting, 2, NOW, result, second, waiting=False, replaced=first, described={}
    )
    assert "the plan changed since change request req-1" in replaced["lastSyncMessage"]
    assert [e.reason for e in transition_events(waiting, replaced)] == ["ApprovalRequired"]


def test_a_sync_with_nothing_left_to_write_clears_the_pending_approval() -> None:
    status = succeeded_status(
        {"pendingApproval": {"id": "req-1"}},
        1,
        NOW,
        Plan(unchanged=["A"], managed_after=["A"]),
        SourceFacts(keys_read=1),
        dry_run=False,
    )
    assert status["pendingApproval"] is None and status["syncStatus"] == "Succeeded"


def test_pending_approval_names_one_or_more_requests() -> None:
    one = PendingApproval(ids=("a",), keys=(), since="", plan_id="p")
    assert one.named() == "change request a"
    assert PendingApproval(ids=("a", "b"), keys=(), since="", plan_id="p").named() == (
        "change requests a, b"
    )


def test_pending_approval_keys_are_capped_where_every_key_carries_its_owner() -> None:
    """10,000 keys held for approval: where keys carry their owner the request's key list only
    informs (first 100, with the total); without metadata it is what makes a merged request's
    keys ours, so it stays whole."""
    import json

    names = [f"SERVICE_{i:05d}_" + "X" * 46 for i in range(10_000)]
    result = Plan(create={name: "v" for name in names})
    pending = PendingApproval(ids=("cr-1",), keys=tuple(names), since="t", plan_id="p")
    args = (2, NOW, result, pending)
    metadata = approval_status(
        {"ownershipTracking": "Metadata"}, *args, waiting=False, replaced=None, described={}
    )
    assert metadata["pendingApproval"]["keys"] == names[:100]
    assert metadata["pendingApproval"]["keyCount"] == 10_000
    assert len(json.dumps(metadata)) <= 64 * 1024
    ledger = approval_status(
        {"ownershipTracking": "Ledger"}, *args, waiting=False, replaced=None, described={}
    )
    assert ledger["pendingApproval"]["keys"] == names
