"""A SecretSync's status and Events from a cycle's outcome. Pure: no I/O.

Status is the user's window: conditions with reasons, counts, key names; never values.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from infisical_sync.approvals import PendingApproval
from infisical_sync.conditions import (
    Condition,
    merge_conditions,
    progress_conditions,
    timestamp,
)
from infisical_sync.planner import Plan

SUSPENDED_MESSAGE = "suspended: spec.suspend is true"
# Fields of older versions that moved on every cycle (a heartbeat: an etcd write each time).
# null removes them from a stored status (merge patch); a status without them is not written.
RETIRED: dict[str, Any] = {"lastSyncAttemptAt": None}
# Key names shown per status list: status stays small at any number of keys (etcd's request
# limit is 1.5 MiB); status.keyCounts has the totals. The ledger (managedKeys) is shown in full
# where it is what tells ownership (servers without secretMetadata).
SHOWN_NAMES = 100


def shown(names: Iterable[str]) -> list[str]:
    return sorted(names)[:SHOWN_NAMES]


def ledger_shown(keys: Iterable[str], tracking: str | None) -> list[str]:
    """status.managedKeys: in full unless every key carries its owner (then it only informs)."""
    return shown(keys) if tracking == "Metadata" else sorted(keys)


SUSPENDED_READY = Condition("Ready", "False", "Suspended", SUSPENDED_MESSAGE)
DESTINATION_READ = Condition("DestinationReady", "True", "DestinationRead", "destination listed")


@dataclass(frozen=True)
class SourceFacts:
    """What the status says about a source read (never its values)."""

    keys_read: int
    problems: tuple[str, ...] = ()
    problem_reason: str = ""
    problem_cause: str = ""
    duplicates: tuple[str, ...] = ()
    skipped: Mapping[str, str] = field(default_factory=dict)

    @property
    def certain(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class LogLine:
    level: int  # logging.WARNING, INFO or DEBUG
    message: str


def source_condition(source: SourceFacts) -> Condition:
    if source.certain:
        return Condition("SourceReady", "True", "SourceRead", f"{source.keys_read} keys read")
    return Condition("SourceReady", "False", source.problem_reason, "; ".join(source.problems))


def ownership_tracking(known: bool | None) -> dict[str, str]:
    """status.ownershipTracking once known; nothing (the previous value stays) while it is not:
    an empty destination on an instance that has not listed any key yet cannot tell."""
    if known is None:
        return {}
    return {"ownershipTracking": "Metadata" if known else "Ledger"}


def summary(result: Plan, *, dry_run: bool = False) -> str:
    verb = "would " if dry_run else ""
    parts = [
        f"{verb}create {len(result.create)}",
        f"{verb}update {len(result.update)}",
        f"{verb}delete {len(result.delete)}",
        f"unchanged {len(result.unchanged)}",
    ]
    text = ", ".join(parts)
    if result.adopt:
        text += f"; adopted {', '.join(result.adopt)}"
    if result.conflicts:
        text += "; conflicts: " + "; ".join(
            f"{k} ({v})" for k, v in sorted(result.conflicts.items())
        )
    if result.held_deletes:
        text += f"; held deletes of {', '.join(result.held_deletes)}: {result.hold_reason}"
    return text


def succeeded_status(
    previous: Mapping[str, Any],
    generation: int | None,
    now: dt.datetime,
    result: Plan,
    source: SourceFacts,
    *,
    dry_run: bool,
    instance_tracking: bool | None = None,
) -> dict[str, Any]:
    """The status of a cycle that planned (and, unless a dry run, wrote). `instance_tracking`:
    whether the instance keeps secretMetadata, when known, for a destination that was empty."""
    message = summary(result, dry_run=dry_run)
    if source.duplicates:
        message += "; duplicate keys: " + "; ".join(source.duplicates)
    if source.problems:
        message += "; source: " + "; ".join(source.problems)
    skipped = {**source.skipped, **result.skipped}
    # Keys there, none sendable (e.g. binary values): nothing synced, whatever the counts say.
    all_skipped = bool(skipped) and result.synced_keys == 0 and not result.conflicts
    if all_skipped:
        why = "every source key was skipped: " + "; ".join(
            f"{k}: {v}" for k, v in sorted(skipped.items())
        )
        message += "; " + why
    if dry_run:
        synced = Condition("Synced", "False", "DryRun", message)
        ready = Condition("Ready", "True", "DryRun", "dry run: plan in status.plan")
    elif not source.certain:
        # Whatever could be read was pushed, but deletes wait for a source we can trust.
        why = result.hold_reason or "source uncertain: " + "; ".join(source.problems)
        synced = Condition("Synced", "False", "SourceUncertain", why)
        ready = Condition("Ready", "False", "SourceUncertain", why)
    elif result.held_deletes:
        synced = Condition("Synced", "False", "DeletionHeld", result.hold_reason)
        ready = Condition("Ready", "False", "DeletionHeld", result.hold_reason)
    elif all_skipped:
        synced = Condition("Synced", "False", "AllKeysSkipped", why)
        ready = Condition("Ready", "False", "AllKeysSkipped", why)
    elif result.conflicts:
        synced = Condition("Synced", "True", "SyncedWithConflicts", message)
        ready = Condition("Ready", "True", "SyncedWithConflicts", message)
    else:
        synced = Condition("Synced", "True", "Synced", message)
        ready = Condition("Ready", "True", "Synced", message)
    conditions = merge_conditions(
        previous.get("conditions"),
        [
            ready,
            *progress_conditions(ready, source.problem_cause or source.problem_reason),
            source_condition(source),
            DESTINATION_READ,
            synced,
        ],
        generation=generation,
        now=now,
    )
    status: dict[str, Any] = {
        **RETIRED,
        "observedGeneration": generation,
        "conditions": conditions,
        "lastSyncMessage": message[:1024],
        "plan": {
            "create": shown(result.create),
            "update": shown(result.update),
            "delete": shown(result.delete),
            "unchanged": len(result.unchanged),
        },
        "conflicts": shown(result.conflicts),
        "keyCounts": {
            "create": len(result.create),
            "update": len(result.update),
            "delete": len(result.delete),
            "conflicts": len(result.conflicts),
            "skipped": len(skipped),
            "held": len(result.held_deletes),
        },
        # null clears what an earlier cycle held (status is merge-patched)
        "heldDeletes": (
            {
                "keys": shown(result.held_deletes),
                "reason": result.hold_reason[:1024],
                **({"id": result.held_id, "since": result.held_since} if result.held_id else {}),
            }
            if result.held_deletes
            else None
        ),
        "skippedKeys": [f"{k}: {v}" for k, v in sorted(skipped.items())][:SHOWN_NAMES],
        **ownership_tracking(
            instance_tracking if result.metadata_tracking is None else result.metadata_tracking
        ),
    }
    tracking = status.get("ownershipTracking") or previous.get("ownershipTracking")
    if dry_run:
        status["syncStatus"] = previous.get("syncStatus") or "Pending"
        return status
    failed = bool(result.held_deletes) or not source.certain or all_skipped
    status.update(
        {
            "syncStatus": "Failed" if failed else "Succeeded",
            "syncedKeys": result.synced_keys,
            "managedKeys": ledger_shown(result.managed_after, tracking),
            "pendingApproval": None,  # nothing left to write: no request is waited for
        }
    )
    status["keyCounts"]["managed"] = len(result.managed_after)
    if not previous.get("lastSyncedAt") or (
        not failed and (result.writes > 0 or previous.get("syncStatus") != "Succeeded")
    ):
        # The destination changed, or it is in sync again after a failure (or for the first
        # time: the initial sync is over either way). A cycle that finds it still in sync
        # leaves the time alone: its liveness is in the metrics, not in an etcd write.
        status["lastSyncedAt"] = timestamp(now)
    return status


def failed_status(
    previous: Mapping[str, Any],
    generation: int | None,
    now: dt.datetime,
    *,
    condition: str,
    reason: str,
    message: str,
    described: Mapping[str, str],
    known: Sequence[Condition] = (),
    cause: str = "",
) -> dict[str, Any]:
    """A cycle that could not finish: `condition` (SourceReady, DestinationReady or Synced)
    failed with `reason`. `known`: what the cycle learnt before it failed (e.g. the destination
    was listed), so that those conditions are not left as an earlier cycle saw them. `cause`:
    the reason behind `reason` when it only says where (a connection's own reason)."""
    ready = Condition("Ready", "False", reason, message)
    updates = [
        *known,
        ready,
        *progress_conditions(ready, cause),
        Condition("Synced", "False", reason, message),
    ]
    if condition in ("SourceReady", "DestinationReady"):
        updates.append(Condition(condition, "False", reason, message))
    return {
        **RETIRED,
        "syncStatus": "Failed",
        "observedGeneration": generation,
        "lastSyncMessage": message[:1024],
        "conditions": merge_conditions(
            previous.get("conditions"), updates, generation=generation, now=now
        ),
        **described,
    }


def approval_status(
    previous: Mapping[str, Any],
    generation: int | None,
    now: dt.datetime,
    result: Plan,
    pending: PendingApproval,
    *,
    waiting: bool,
    replaced: PendingApproval | None,
    described: Mapping[str, str],
    known: Sequence[Condition] = (),
) -> dict[str, Any]:
    """The plan's writes are held by a change-approval policy: `pending` was opened by this
    cycle, or (`waiting`) by an earlier one for the same plan and nothing was sent."""
    if waiting:
        message = (
            f"waiting for approval: {pending.named()} (opened {pending.since}) holds "
            f"{summary(result)}; approve and merge it in Infisical"
        )
    else:
        message = (
            f"held for approval: Infisical opened {pending.named()} for {summary(result)}; "
            "nothing is written until it is approved and merged in Infisical"
        )
        if replaced is not None and replaced.ids != pending.ids:
            message += (
                f"; the plan changed since {replaced.named()}, which is still open in "
                "Infisical (close it there)"
            )
    status = failed_status(
        previous,
        generation,
        now,
        condition="Synced",
        reason="ApprovalRequired",
        message=message,
        described=described,
        known=known,
    )
    status["pendingApproval"] = pending.status()
    if previous.get("ownershipTracking") == "Metadata":
        # Every key carries its owner: the request's keys only inform. Without metadata they
        # make a merged request's keys ours after a restart, so they stay whole.
        status["pendingApproval"]["keys"] = shown(pending.keys)
    status["pendingApproval"]["keyCount"] = len(pending.keys)
    status["plan"] = {
        "create": shown(result.create),
        "update": shown(result.update),
        "delete": shown(result.delete),
        "unchanged": len(result.unchanged),
    }
    return status


def suspended_status(
    previous: Mapping[str, Any],
    generation: int | None,
    now: dt.datetime,
    described: Mapping[str, str],
) -> dict[str, Any]:
    return {
        **RETIRED,
        "observedGeneration": generation,
        "lastSyncMessage": SUSPENDED_MESSAGE,
        "conditions": merge_conditions(
            previous.get("conditions"),
            [
                SUSPENDED_READY,
                *progress_conditions(SUSPENDED_READY),
                Condition("Synced", "False", "Suspended", SUSPENDED_MESSAGE),
            ],
            generation=generation,
            now=now,
        ),
        **described,
    }


def failure_reason(status: Mapping[str, Any]) -> str:
    """The reason of a failed status: its Synced condition's."""
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Synced":
            return str(condition.get("reason"))
    return "SyncFailed"


def transition_events(previous: Mapping[str, Any], status: Mapping[str, Any]) -> list[Event]:
    """Events on transitions only: into Succeeded or Failed, and on new conflicts."""
    events: list[Event] = []
    before, after = previous.get("syncStatus"), status.get("syncStatus")
    message = str(status.get("lastSyncMessage", ""))
    if after != before and after == "Succeeded":
        events.append(Event("Normal", "Synced", message))
    elif after != before and after == "Failed":
        events.append(Event("Warning", failure_reason(status), message))
    elif after == "Failed" and _approval_id(status) not in (None, _approval_id(previous)):
        # Still failing, but Infisical opened another change request (the plan changed).
        events.append(Event("Warning", "ApprovalRequired", message))
    new_conflicts = set(status.get("conflicts") or []) - set(previous.get("conflicts") or [])
    if new_conflicts:
        events.append(
            Event("Warning", "Conflict", f"keys left alone: {', '.join(sorted(new_conflicts))}")
        )
    return events


def transition_log(
    namespace: str, name: str, previous: Mapping[str, Any], status: Mapping[str, Any]
) -> LogLine | None:
    """The operator log of a cycle's outcome: one WARNING when a SecretSync starts failing (or
    fails for another reason), DEBUG while it keeps failing the same way, one INFO when it
    recovers. Status messages name keys, never values."""
    before, after = previous.get("syncStatus"), status.get("syncStatus")
    message = str(status.get("lastSyncMessage", ""))
    who = f"SecretSync {namespace}/{name}"
    if after == "Failed":
        reason = failure_reason(status)
        same_request = _approval_id(status) in (None, _approval_id(previous))
        if before == "Failed" and failure_reason(previous) == reason and same_request:
            return LogLine(logging.DEBUG, f"{who} still failing: {reason}")
        return LogLine(logging.WARNING, f"{who} failed: {reason}: {message}")
    if after == "Succeeded" and before == "Failed":
        return LogLine(logging.INFO, f"{who} synced again: {message}")
    return None


def _approval_id(status: Mapping[str, Any]) -> str | None:
    pending = status.get("pendingApproval") or {}
    return str(pending["id"]) if pending.get("id") else None
