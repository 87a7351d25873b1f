"""What a restarted operator takes from a SecretSync's status to make its first cycle cheap.

A cycle that ends clean (Succeeded, nothing written, no conflict, nothing held or skipped)
records `status.lastRead`: the destination's ETag, the place it belongs to (instance URL,
project, environment, path) and a digest of the cycle's inputs (spec generation, the
sync-requested-at it saw, the source's versions, the cluster id, the operator version). None of
it is secret: an ETag is a digest the server sends in the clear; source versions are
resourceVersions or the Infisical source's ETag.

With nothing in memory (after a restart), a cycle whose inputs digest equals the recorded one
and whose last outcome was clean sends that ETag, to that same place only. A 304 then means
nothing it depends on changed: the outcome is the last one, with no plan and no write. Anything
else (another digest, another place, a 200) is a normal cycle. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from infisical_sync.infisical.models import SecretLocation


def _operator_version() -> str:
    try:
        return importlib.metadata.version("infisical-sync")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# Another version may plan differently: its first cycle after an upgrade is a full one. The
# package version alone is not enough (development builds keep one number): PLANNER_REVISION is
# raised with every change to what a cycle plans or records.
PLANNER_REVISION = 1
OPERATOR_VERSION = f"{_operator_version()}+planner.{PLANNER_REVISION}"


@dataclass(frozen=True)
class LastRead:
    instance_url: str
    location: SecretLocation
    etag: str
    inputs: str

    def status(self) -> dict[str, str]:
        return {
            "instanceUrl": self.instance_url,
            "projectId": self.location.project_id,
            "environment": self.location.environment,
            "secretPath": self.location.secret_path,
            "etag": self.etag,
            "inputs": self.inputs,
        }

    @classmethod
    def from_status(cls, status: Mapping[str, Any]) -> LastRead | None:
        recorded = status.get("lastRead")
        if not isinstance(recorded, Mapping):
            return None
        try:
            fields = {
                name: recorded[name]
                for name in (
                    "instanceUrl",
                    "projectId",
                    "environment",
                    "secretPath",
                    "etag",
                    "inputs",
                )
            }
        except KeyError:
            return None
        if not all(isinstance(value, str) and value for value in fields.values()):
            return None
        return cls(
            fields["instanceUrl"],
            SecretLocation(
                project_id=fields["projectId"],
                environment=fields["environment"],
                secret_path=fields["secretPath"],
            ),
            fields["etag"],
            fields["inputs"],
        )


def kubernetes_versions(resource_versions: Mapping[str, str]) -> dict[str, str]:
    """A Kubernetes source's versions: the resourceVersion of each Secret read (for a selector,
    the names it matched are part of it)."""
    return {f"secret/{name}": version for name, version in resource_versions.items()}


def infisical_versions(instance_url: str, source: str, etag: str | None) -> dict[str, str] | None:
    """An Infisical source's version: its listing's ETag, with where it was read. None without
    an ETag (a server before ETags): nothing tells that it is unchanged."""
    if not etag:
        return None
    return {"infisical": json.dumps([instance_url, source, etag])}


def inputs_digest(
    *,
    generation: int | None,
    requested_at: str | None,
    source_versions: Mapping[str, str],
    cluster_id: str,
    owner_uid: str = "",
    operator_version: str = OPERATOR_VERSION,
) -> str:
    """Everything besides the destination that a cycle's outcome depends on (the owner's UID
    too: an object restored from a backup is another owner with the same name)."""
    described = json.dumps(
        {
            "generation": generation,
            "requestedAt": requested_at,
            "source": dict(sorted(source_versions.items())),
            "clusterId": cluster_id,
            "ownerUid": owner_uid,
            "operator": operator_version,
        },
        sort_keys=True,
    )
    return "sha256:" + hashlib.sha256(described.encode()).hexdigest()


def clean_outcome(status: Mapping[str, Any]) -> bool:
    """The status of a cycle that left nothing to do: Succeeded and Synced, with no conflict,
    nothing held, skipped or awaiting approval."""
    synced = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Synced"),
        None,
    )
    return (
        status.get("syncStatus") == "Succeeded"
        and synced is not None
        and synced.get("status") == "True"
        and synced.get("reason") == "Synced"
        and not status.get("conflicts")
        and not status.get("heldDeletes")
        and not status.get("pendingApproval")
        and not status.get("skippedKeys")
    )


def etag_to_resume(
    previous: Mapping[str, Any],
    *,
    instance_url: str,
    location: SecretLocation,
    inputs: str,
    mass_delete_confirmation: str | None,
) -> str | None:
    """The recorded ETag to send with the first list after a restart, when a 304 to it would
    mean the outcome is the last one; else None (a full list)."""
    recorded = LastRead.from_status(previous)
    if recorded is None or not clean_outcome(previous):
        return None
    if mass_delete_confirmation is not None:  # a confirmation is for a plan: plan
        return None
    if (recorded.instance_url, recorded.location) != (instance_url, location):
        return None
    return recorded.etag if recorded.inputs == inputs else None


def to_record(
    status: Mapping[str, Any],
    *,
    instance_url: str,
    location: SecretLocation,
    etag: str | None,
    inputs: str | None,
    wrote: bool,
) -> dict[str, str] | None:
    """status.lastRead after a cycle (None clears it). Only a clean cycle that wrote nothing:
    after a write, the listing's ETag describes the destination before it, and the destination
    reverted to that state would answer 304 while our writes are missing."""
    if wrote or not etag or inputs is None or not clean_outcome(status):
        return None
    return LastRead(instance_url, location, etag, inputs).status()
