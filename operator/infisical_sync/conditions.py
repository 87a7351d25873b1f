"""Kubernetes-style conditions (metav1.Condition shape). Pure functions, no I/O."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Condition:
    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str = ""


def timestamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_conditions(
    previous: Iterable[Mapping[str, Any]] | None,
    updates: Iterable[Condition],
    *,
    generation: int | None,
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """New condition list: lastTransitionTime moves only when a condition's status changes."""
    merged: dict[str, dict[str, Any]] = {
        str(item["type"]): dict(item) for item in (previous or []) if "type" in item
    }
    for condition in updates:
        old = merged.get(condition.type)
        changed = old is None or old.get("status") != condition.status
        entry: dict[str, Any] = {
            "type": condition.type,
            "status": condition.status,
            "reason": condition.reason,
            "message": condition.message[:1024],
            "lastTransitionTime": timestamp(now)
            if changed or old is None or "lastTransitionTime" not in old
            else old["lastTransitionTime"],
        }
        if generation is not None:
            entry["observedGeneration"] = generation
        merged[condition.type] = entry
    return [merged[key] for key in sorted(merged)]


def condition_status(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> str | None:
    for item in conditions or []:
        if item.get("type") == type_:
            return str(item.get("status"))
    return None


# kstatus (sigs.k8s.io/cli-utils/pkg/kstatus): two abnormal-true conditions beside Ready that
# tell Flux, kstatus and Argo CD whether a not-Ready object is getting there by itself
# (Reconciling) or waits for someone to change something (Stalled). Both are written on every
# outcome, False when they do not apply.
RECONCILING = "Reconciling"
STALLED = "Stalled"

# Not Ready on purpose: a person suspended it, or a change request waits for approval in
# Infisical. Neither Reconciling nor Stalled: nothing is wrong and nothing is retried.
HELD_BY_CHOICE = frozenset({"Suspended", "ApprovalRequired"})
# Outcomes that clear without anyone doing anything: the operator retries (back-off, a 429's
# Retry-After, the connection's next validation) and Ready follows.
TRANSIENT = frozenset(
    {
        "RateLimited",
        "ServerError",
        "Unreachable",
        "NotLeader",  # this replica lost the lease: the new leader runs the cycle
        "Conflict",  # Infisical answered 409 to a concurrent change: read again
        "ImportFailed",
        "LedgerNotReleased",
        "ConnectionNotReady",  # without a cause: the connection is not validated yet (just seen)
    }
)
# A connectionRef to an InfisicalConnection that does not exist (the cause of ConnectionNotReady).
CONNECTION_NOT_FOUND = "ConnectionNotFound"
# A ClusterInfisicalConnection whose namespaceSelector does not allow the SecretSync's namespace:
# nothing is read or written until the selector or the namespace's labels change.
CONNECTION_NOT_ALLOWED = "ConnectionNotAllowed"
# Outcomes that last until someone changes the spec, a Secret, Infisical or an annotation. The
# operator keeps trying (and watches the Secrets), and clears Stalled when the cause is gone.
NEEDS_USER = frozenset(
    {
        "InvalidSpec",
        "SecretNotFound",
        "SecretKeyMissing",
        "InvalidCredentials",
        "CredentialsLocked",  # locked after failed logins: the credentials are wrong
        # Kubernetes Auth: the service account, the operator's RBAC, or the identity's setup
        # in Infisical (allowed namespaces, names, audience) needs a change.
        "ServiceAccountNotFound",
        "TokenRequestForbidden",
        "ServiceAccountTokenUnavailable",
        "KubernetesAuthRefused",
        "IdentityNotConfiguredForKubernetesAuth",
        "Forbidden",
        "NotFound",  # project or environment
        "ValidationFailed",
        "TLSError",
        "InsecureHttp",
        "Redirected",
        "InstanceNotAllowed",
        "ImportForbidden",
        "ImportNotSupported",
        "LedgerUnavailable",
        "DeletionHeld",  # confirm with the allow-mass-delete annotation
        "AllKeysSkipped",
        "SourceUncertain",  # without a cause: some of the source could not be read
        # The API server refused reading a source Secret (403, or another 4xx): its 5xx and
        # 429 are Unreachable-like outages handled as KubeUnavailable, never this.
        "SourceError",
        CONNECTION_NOT_FOUND,
        CONNECTION_NOT_ALLOWED,
    }
)


def progress_conditions(ready: Condition, cause: str = "") -> list[Condition]:
    """Reconciling and Stalled for an outcome whose Ready condition is `ready`. `cause`: the
    reason behind it where Ready's reason only says where it failed (ConnectionNotReady: the
    connection's reason; SourceUncertain: the source's). A reason in no list is Stalled: the
    operator does not know it to clear by itself."""
    why = cause or ready.reason
    reconciling = stalled = False
    if ready.status != "True" and why not in HELD_BY_CHOICE:
        reconciling = why in TRANSIENT
        stalled = not reconciling
    return [
        Condition(
            RECONCILING,
            "True" if reconciling else "False",
            ready.reason,
            ready.message if reconciling else "",
        ),
        Condition(
            STALLED, "True" if stalled else "False", ready.reason, ready.message if stalled else ""
        ),
    ]
