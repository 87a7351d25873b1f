"""Prometheus metrics. Labels hold names and outcomes only — never values or tokens."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

API_CALLS = Counter(
    "infisical_sync_api_calls_total",
    "Remote Infisical API calls by endpoint and HTTP status (or error kind).",
    ["instance", "endpoint", "status"],
)
RATE_LIMITED = Counter(
    "infisical_sync_rate_limited_total", "429 answers from Infisical.", ["instance"]
)
TOKEN_EVENTS = Counter(
    "infisical_sync_token_events_total",
    "Universal Auth logins and token renewals.",
    ["instance", "event"],
)
# Kept for existing dashboards: every replica exports it, from its own validation (every shard
# validates every connection). infisical_sync_ready is what the connection's status says.
CONNECTION_READY = Gauge(
    "infisical_sync_connection_ready",
    "1 when this replica's last validation of an InfisicalConnection found it Ready.",
    ["namespace", "name"],
)
LEADER = Gauge(
    "infisical_sync_leader",
    "1 while this replica runs the operator (holds the leader Lease, or leader election is "
    "off); 0 on a standby.",
)
SYNCS = Counter("infisical_sync_syncs_total", "SecretSync runs by result.", ["result"])
SYNC_DURATION = Histogram(
    "infisical_sync_sync_duration_seconds",
    "Duration of one SecretSync run.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
KEYS_CHANGED = Counter(
    "infisical_sync_keys_changed_total",
    "Destination keys written by the operator.",
    ["action"],
)
# Liveness without heartbeats in status: a cycle that changes nothing writes nothing to
# Kubernetes, so these say when each object was last checked. One series per object (kind,
# namespace, name), removed when its loop ends (object deleted).
LAST_CYCLE = Gauge(
    "infisical_sync_last_cycle_timestamp_seconds",
    "When the last cycle (sync or validation) of an object ended, whatever its outcome.",
    ["kind", "namespace", "name"],
)
LAST_SUCCESS = Gauge(
    "infisical_sync_last_success_timestamp_seconds",
    "When the last successful cycle of an object ended: a SecretSync found or made its "
    "destination in sync (Synced True), an InfisicalConnection was Ready.",
    ["kind", "namespace", "name"],
)
# Readiness for alerts that name the object. Exported only by the replica that writes the
# object's status (the SecretSync's shard, the connection's owning shard), so the series of the
# whole fleet are one per object; removed with LAST_CYCLE when the object goes.
READY = Gauge(
    "infisical_sync_ready",
    "1 when the object's Ready condition is True after its last cycle, else 0 (also when the "
    "cycle could not write its status).",
    ["kind", "namespace", "name"],
)
READY_REASON = Gauge(
    "infisical_sync_ready_reason",
    "1, labelled with the reason of the object's Ready condition: one series per object.",
    ["kind", "namespace", "name", "reason"],
)
HELD_DELETES = Gauge(
    "infisical_sync_held_deletes",
    "Destination keys whose deletion a SecretSync holds (status.heldDeletes): the mass-delete "
    "guard, or a source that could not be read in full.",
    ["namespace", "name"],
)

SHARD = Gauge(
    "infisical_sync_shard_info",
    "1, labelled with this replica's shard: the i-th (shard) of N (shards) hash slices.",
    ["shard", "shards"],
)


# The reason a cycle gets when its outcome did not reach the status (the API server did not
# answer, or the cycle failed unexpectedly): the status still says what an earlier cycle saw.
STATUS_NOT_WRITTEN = "StatusNotWritten"
# Reasons are CamelCase constants of the operator's code; anything else would be a bug, and is
# not let into a label (bounded cardinality whatever a status holds).
_REASON = re.compile(r"[A-Za-z][A-Za-z0-9]{0,63}")
OTHER_REASON = "Other"

Key = tuple[str, str, str]
_reasons: dict[Key, str] = {}


def ready_of(status: Mapping[str, Any] | None) -> tuple[bool, str] | None:
    """(Ready is True, its reason) from a status' Ready condition; None without one."""
    for condition in (status or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return condition.get("status") == "True", str(condition.get("reason") or "")
    return None


def held_deletes_of(status: Mapping[str, Any] | None) -> int:
    """How many deletes status.heldDeletes holds (keyCounts.held: its key list is cut short)."""
    status = status or {}
    held = status.get("heldDeletes")
    if not held:
        return 0
    counted = (status.get("keyCounts") or {}).get("held")
    return int(counted) if isinstance(counted, int) else len(held.get("keys") or ())


def set_ready(kind: str, namespace: str, name: str, ready: bool, reason: str) -> None:
    key = (kind, namespace, name)
    reason = reason if _REASON.fullmatch(reason) else OTHER_REASON
    READY.labels(kind, namespace, name).set(1 if ready else 0)
    previous = _reasons.get(key)
    if previous != reason:
        if previous is not None:
            with contextlib.suppress(KeyError):
                READY_REASON.remove(kind, namespace, name, previous)
        READY_REASON.labels(kind, namespace, name, reason).set(1)
        _reasons[key] = reason


def reflect_status(kind: str, namespace: str, name: str, status: Mapping[str, Any] | None) -> None:
    """After a cycle: readiness (and a SecretSync's held deletes) as its status now says.
    `status` None: the cycle's outcome could not be written."""
    if status is None:
        set_ready(kind, namespace, name, False, STATUS_NOT_WRITTEN)
        return
    readiness = ready_of(status)
    if readiness is not None:
        set_ready(kind, namespace, name, *readiness)
    if kind == "SecretSync":
        HELD_DELETES.labels(namespace, name).set(held_deletes_of(status))


def cycle_ended(kind: str, namespace: str, name: str, *, succeeded: bool) -> None:
    LAST_CYCLE.labels(kind, namespace, name).set_to_current_time()
    if succeeded:
        LAST_SUCCESS.labels(kind, namespace, name).set_to_current_time()


def forget_object(kind: str, namespace: str, name: str) -> None:
    for gauge in (LAST_CYCLE, LAST_SUCCESS, READY):
        with contextlib.suppress(KeyError):
            gauge.remove(kind, namespace, name)
    reason = _reasons.pop((kind, namespace, name), None)
    if reason is not None:
        with contextlib.suppress(KeyError):
            READY_REASON.remove(kind, namespace, name, reason)
    if kind == "SecretSync":
        with contextlib.suppress(KeyError):
            HELD_DELETES.remove(namespace, name)
