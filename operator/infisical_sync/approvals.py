"""Change-approval policies: a write Infisical holds for approval is waited on, not repeated.

A project with a change-approval policy answers a write with `{"approval": ...}`: nothing is
written, Infisical opens a change request that a human approves and merges. Sending the same
write again would open another request every cycle, so a plan that an open request already
carries is not sent again.

"The same plan" is the same actions on the same keys with the same values (and metadata). Two
digests tell it:
- `digest`, in memory only: actions, keys, values and metadata, keyed with a random per-process
  key (HMAC), so that nothing that could be checked against a guessed value outlives the process
  or leaves it;
- `plan_id`, in status: the destination, actions and key names only, so that after a restart the
  same key-level plan waits for the request shown in status instead of opening another.
Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from infisical_sync.planner import Plan

_DIGEST_KEY = secrets.token_bytes(32)


@dataclass(frozen=True)
class PendingApproval:
    """Change requests Infisical opened for one plan, still waited for."""

    ids: tuple[str, ...]
    # The plan's keys, sorted, all of them: on a server without secretMetadata they are what
    # makes the keys a merged request created ours, also after a restart (like managedKeys).
    keys: tuple[str, ...]
    since: str
    plan_id: str
    digest: str | None = None  # None: known from status only (after a restart)

    def status(self) -> dict[str, Any]:
        return {
            "id": self.ids[0],
            "ids": list(self.ids),
            "keys": list(self.keys),
            "since": self.since,
            "planId": self.plan_id,
        }

    def named(self) -> str:
        noun = "change request" if len(self.ids) == 1 else "change requests"
        return f"{noun} {', '.join(self.ids)}"


@dataclass(frozen=True)
class PlanFingerprint:
    digest: str  # with values: in memory only
    plan_id: str  # key names only: may be shown
    keys: tuple[str, ...]


def fingerprint(location: str, result: Plan) -> PlanFingerprint:
    """The plan's writes at `location` (destination and instance), with and without values."""
    actions = sorted(
        [("create", key) for key in result.create]
        + [("update", key) for key in result.update]
        + [("delete", key) for key in result.delete]
        # An import mode writes into the source first; that source may hold it for approval.
        + [("import", key) for key in result.import_to_source]
    )
    shape = "\0".join([location, *(f"{action}:{key}" for action, key in actions)])
    keyed = hmac.new(_DIGEST_KEY, shape.encode(), hashlib.sha256)
    for action, key in actions:
        if action == "delete":
            continue
        values = {
            "create": result.create,
            "update": result.update,
            "import": result.import_to_source,
        }[action]
        value = None if action != "import" and key in result.metadata_only else values[key]
        keyed.update(repr((key, value, result.metadata.get(key))).encode())
    return PlanFingerprint(
        digest=keyed.hexdigest(),
        plan_id=hashlib.sha256(shape.encode()).hexdigest()[:16],
        # Destination keys only: what a merged request can have written there.
        keys=tuple(sorted({key for action, key in actions if action != "import"})),
    )


def shown_approval(status: Mapping[str, Any]) -> PendingApproval | None:
    """status.pendingApproval, as the last cycle (of this or an earlier process) left it."""
    shown = status.get("pendingApproval") or {}
    ids = shown.get("ids") or ([shown["id"]] if shown.get("id") else [])
    if not ids or not shown.get("planId"):
        return None
    return PendingApproval(
        ids=tuple(str(i) for i in ids),
        keys=tuple(str(k) for k in shown.get("keys") or ()),
        since=str(shown.get("since") or ""),
        plan_id=str(shown["planId"]),
    )


def awaited(
    remembered: PendingApproval | None,
    shown: PendingApproval | None,
    plan: PlanFingerprint,
) -> PendingApproval | None:
    """The open request that already carries this plan (so nothing is sent), or None.

    In memory the values decide; after a restart (nothing remembered) the key-level plan shown
    in status does, and the request is remembered with this plan's values from then on."""
    if remembered is not None:
        return remembered if remembered.digest == plan.digest else None
    if shown is not None and shown.plan_id == plan.plan_id:
        # The same key-level plan: its keys are all of this plan's (status shows only some).
        return replace(shown, digest=plan.digest, keys=plan.keys)
    return None


def opened(ids: tuple[str, ...], plan: PlanFingerprint, since: str) -> PendingApproval:
    return PendingApproval(
        ids=ids, keys=plan.keys, since=since, plan_id=plan.plan_id, digest=plan.digest
    )
