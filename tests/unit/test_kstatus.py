"""kstatus conditions (Reconciling, Stalled) from each outcome (pure)."""

from __future__ import annotations

import ast
import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from infisical_sync.approvals import PendingApproval
from infisical_sync.conditions import (
    HELD_BY_CHOICE,
    NEEDS_USER,
    RECONCILING,
    STALLED,
    TRANSIENT,
    Condition,
    progress_conditions,
)
from infisical_sync.connection import Outcome, build_status
from infisical_sync.infisical import errors
from infisical_sync.ledger import LEDGER_UNAVAILABLE
from infisical_sync.planner import Plan
from infisical_sync.sync_status import (
    SourceFacts,
    approval_status,
    failed_status,
    succeeded_status,
    suspended_status,
)

NOW = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)
PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "infisical_sync"
READY_REASONS = {"Synced", "SyncedWithConflicts", "DryRun", "Validated", "ValidationDeferred"}


def progress(conditions: list[Condition]) -> tuple[str, str]:
    by_type = {c.type: c.status for c in conditions}
    assert set(by_type) == {RECONCILING, STALLED}
    return by_type[RECONCILING], by_type[STALLED]


def kstatus(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_the_reason_lists_do_not_overlap() -> None:
    assert not TRANSIENT & NEEDS_USER
    assert not HELD_BY_CHOICE & (TRANSIENT | NEEDS_USER)
    assert not READY_REASONS & (TRANSIENT | NEEDS_USER | HELD_BY_CHOICE)


@pytest.mark.parametrize("reason", sorted(TRANSIENT))
def test_a_transient_failure_is_reconciling(reason: str) -> None:
    ready = Condition("Ready", "False", reason, "down for now")
    reconciling, stalled = progress_conditions(ready)
    assert (reconciling.status, stalled.status) == ("True", "False")
    assert reconciling.reason == reason and reconciling.message == "down for now"
    assert stalled.message == ""


@pytest.mark.parametrize("reason", sorted(NEEDS_USER))
def test_a_failure_that_needs_someone_is_stalled(reason: str) -> None:
    ready = Condition("Ready", "False", reason, "fix me")
    reconciling, stalled = progress_conditions(ready)
    assert (reconciling.status, stalled.status) == ("False", "True")
    assert stalled.reason == reason and stalled.message == "fix me"


@pytest.mark.parametrize("reason", sorted(HELD_BY_CHOICE))
def test_a_deliberate_hold_is_neither(reason: str) -> None:
    assert progress(progress_conditions(Condition("Ready", "False", reason))) == ("False", "False")


@pytest.mark.parametrize("reason", sorted(READY_REASONS | TRANSIENT | NEEDS_USER))
def test_ready_is_never_reconciling_nor_stalled(reason: str) -> None:
    # Also with a reason that would mean trouble when not Ready (e.g. a deferred validation).
    ready = Condition("Ready", "True", reason, "fine")
    assert progress(progress_conditions(ready, cause="Unreachable")) == ("False", "False")


@pytest.mark.parametrize(
    ("reason", "cause", "expected"),
    [
        ("ConnectionNotReady", "", ("True", "False")),  # not validated yet
        ("ConnectionNotReady", "Unreachable", ("True", "False")),
        ("ConnectionNotReady", "RateLimited", ("True", "False")),
        ("ConnectionNotReady", "InvalidCredentials", ("False", "True")),
        ("ConnectionNotReady", "SecretNotFound", ("False", "True")),
        ("SourceUncertain", "", ("False", "True")),
        ("ConnectionNotReady", "ConnectionNotFound", ("False", "True")),  # a typo in its name
        ("SourceUncertain", "SourceError", ("False", "True")),  # 403: RBAC to fix
        ("SourceUncertain", "ConnectionNotReady", ("True", "False")),
        ("SourceUncertain", "SecretNotFound", ("False", "True")),
    ],
)
def test_the_cause_decides_where_the_reason_only_says_where(
    reason: str, cause: str, expected: tuple[str, str]
) -> None:
    conditions = progress_conditions(Condition("Ready", "False", reason, "m"), cause)
    assert progress(conditions) == expected
    assert {c.reason for c in conditions} == {reason}  # the reason users know stays


def test_an_unknown_reason_is_stalled() -> None:
    assert progress(progress_conditions(Condition("Ready", "False", "SomethingNew"))) == (
        "False",
        "True",
    )


def _reasons_in_source() -> set[str]:
    """Reason literals the operator writes: SyncFailed(condition, reason, ...), Outcome(ready,
    reason, ...), fail(reason, ...), problem(reason, ...), Condition("Ready", "False", reason),
    and ("Reason", "message") tuples of source reads."""
    found: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        if "testing" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
                position = {"SyncFailed": 1, "Outcome": 1, "fail": 0, "problem": 0}.get(name)
                args = node.args
                if name == "Condition" and len(args) >= 3:
                    status = args[1]
                    if isinstance(status, ast.Constant) and status.value == "False":
                        position = 2
                if position is None or len(args) <= position:
                    continue
                arg = args[position]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    found.add(arg.value)
            elif (
                isinstance(node, ast.Tuple)
                and len(node.elts) == 2
                and isinstance(node.elts[0], ast.Constant)
                and isinstance(node.elts[0].value, str)
                and node.elts[0].value.isalpha()
                and node.elts[0].value[:1].isupper()
                and path.name == "sources.py"
            ):
                found.add(node.elts[0].value)
    return found


def _error_classes(base: type[errors.InfisicalError]) -> list[type[errors.InfisicalError]]:
    classes = [base]
    for sub in base.__subclasses__():
        classes += _error_classes(sub)
    return classes


def test_every_reason_the_operator_writes_is_classified() -> None:
    written = _reasons_in_source() | {LEDGER_UNAVAILABLE}
    written |= {cls.reason for cls in _error_classes(errors.InfisicalError)}
    # The scan sees the calls it should: a few reasons known to come from each form.
    assert {"InvalidSpec", "ImportForbidden", "SecretKeyMissing", "SourceError"} <= written
    assert {"DeletionHeld", "AllKeysSkipped", "SourceUncertain", "Suspended"} <= written
    classified = TRANSIENT | NEEDS_USER | HELD_BY_CHOICE | READY_REASONS
    assert written - classified == set()


def test_retryable_infisical_errors_are_transient() -> None:
    for cls in _error_classes(errors.InfisicalError):
        if cls.retryable:
            assert cls.reason in TRANSIENT, cls


# --- the statuses that carry them ------------------------------------------------------------


def test_a_clean_sync_is_neither() -> None:
    status = succeeded_status({}, 4, NOW, Plan(create={"A": "1"}), SourceFacts(1), dry_run=False)
    assert kstatus(status)[RECONCILING] == ("False", "Synced")
    assert kstatus(status)[STALLED] == ("False", "Synced")
    assert all(c["observedGeneration"] == 4 for c in status["conditions"])
    assert status["observedGeneration"] == 4


def test_held_deletes_stall_until_confirmed() -> None:
    result = Plan(held_deletes=["A"], hold_reason="would delete 1 of 1", held_id="x")
    status = succeeded_status({}, 1, NOW, result, SourceFacts(0), dry_run=False)
    assert kstatus(status)[STALLED] == ("True", "DeletionHeld")


@pytest.mark.parametrize(
    ("problem", "expected"),
    [("SecretNotFound", "True"), ("SourceError", "True"), ("ConnectionNotReady", "False")],
)
def test_an_uncertain_source_stalls_only_when_someone_must_act(problem: str, expected: str) -> None:
    source = SourceFacts(1, problems=("Secret b not found",), problem_reason=problem)
    status = succeeded_status({}, 1, NOW, Plan(create={"A": "1"}), source, dry_run=False)
    assert kstatus(status)["Ready"] == ("False", "SourceUncertain")
    assert kstatus(status)[STALLED] == (expected, "SourceUncertain")


def test_a_dry_run_is_ready_and_neither() -> None:
    status = succeeded_status({}, 1, NOW, Plan(create={"A": "1"}), SourceFacts(1), dry_run=True)
    assert kstatus(status)["Ready"][0] == "True"
    assert kstatus(status)[RECONCILING][0] == kstatus(status)[STALLED][0] == "False"


def test_a_failure_says_whether_it_clears_by_itself_and_recovery_clears_it() -> None:
    stalled = failed_status(
        {},
        2,
        NOW,
        condition="DestinationReady",
        reason="ConnectionNotReady",
        message="InfisicalConnection ns/c is not Ready: InvalidCredentials: 401",
        described={},
        cause="InvalidCredentials",
    )
    assert kstatus(stalled)[STALLED] == ("True", "ConnectionNotReady")
    assert kstatus(stalled)[RECONCILING] == ("False", "ConnectionNotReady")
    retrying = failed_status(
        stalled,
        2,
        NOW + dt.timedelta(minutes=1),
        condition="Synced",
        reason="Unreachable",
        message="timed out",
        described={},
    )
    assert kstatus(retrying)[STALLED] == ("False", "Unreachable")
    assert kstatus(retrying)[RECONCILING] == ("True", "Unreachable")
    later = NOW + dt.timedelta(minutes=2)
    synced = succeeded_status(retrying, 2, later, Plan(), SourceFacts(0), dry_run=False)
    assert kstatus(synced)[RECONCILING] == ("False", "Synced")
    times = {c["type"]: c["lastTransitionTime"] for c in synced["conditions"]}
    assert times[RECONCILING] == times["Ready"] == "2026-11-29T12:02:00Z"
    assert times[STALLED] == "2026-11-29T12:01:00Z"  # False since the retrying outcome


def test_suspended_and_waiting_for_approval_are_neither() -> None:
    suspended = suspended_status({}, 3, NOW, {})
    assert kstatus(suspended)["Ready"] == ("False", "Suspended")
    assert kstatus(suspended)[RECONCILING][0] == kstatus(suspended)[STALLED][0] == "False"
    pending = PendingApproval(ids=("cr1",), keys=("A",), since="t", plan_id="p")
    waiting = approval_status(
        {}, 3, NOW, Plan(create={"A": "1"}), pending, waiting=True, replaced=None, described={}
    )
    assert kstatus(waiting)["Ready"] == ("False", "ApprovalRequired")
    assert kstatus(waiting)[RECONCILING][0] == kstatus(waiting)[STALLED][0] == "False"


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (Outcome(True, "Validated", "ok"), ("False", "False")),
        (Outcome(True, "ValidationDeferred", "429"), ("False", "False")),
        (Outcome(False, "Unreachable", "timeout"), ("True", "False")),
        (Outcome(False, "RateLimited", "429"), ("True", "False")),
        (Outcome(False, "InvalidCredentials", "401"), ("False", "True")),
        (Outcome(False, "SecretNotFound", "missing"), ("False", "True")),
        (Outcome(False, "InvalidSpec", "bad"), ("False", "True")),
    ],
)
def test_a_connection_status_carries_them(outcome: Outcome, expected: tuple[str, str]) -> None:
    status = build_status(outcome, None, generation=5, now=NOW)
    found = kstatus(status)
    assert (found[RECONCILING][0], found[STALLED][0]) == expected
    assert found[RECONCILING][1] == found[STALLED][1] == outcome.reason
    assert all(c["observedGeneration"] == 5 for c in status["conditions"])
    assert status["observedGeneration"] == 5
