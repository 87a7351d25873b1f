"""Prometheus metrics. Labels hold names and outcomes only — never values or tokens."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

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
# validates every connection). infisical_sync_ready (ObjectStates) is what its status says.
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


class ObjectStates:
    """Readiness and held deletes per object, for alerts that name it. Exported only by the
    replica that writes the object's status (the SecretSync's shard, the connection's owning
    shard), so the fleet has one series per object; removed with LAST_CYCLE when it goes.

    A collector over plain dicts rather than Gauge children: at 10,000 objects those cost about
    8 MiB per metric and most of a scrape's time. The reason and held-deletes series exist only
    while there is something to say (not Ready, deletes held)."""

    def __init__(self) -> None:
        self.ready: dict[Key, tuple[bool, str]] = {}
        self.held: dict[tuple[str, str], int] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        ready = GaugeMetricFamily(
            "infisical_sync_ready",
            "1 when the object's Ready condition is True after its last cycle, else 0 (also "
            "when the cycle could not write its status).",
            labels=["kind", "namespace", "name"],
        )
        reasons = GaugeMetricFamily(
            "infisical_sync_not_ready_reason",
            "1, labelled with the reason of the object's Ready condition, while it is not True.",
            labels=["kind", "namespace", "name", "reason"],
        )
        held = GaugeMetricFamily(
            "infisical_sync_held_deletes",
            "Destination keys whose deletion a SecretSync holds (status.heldDeletes: the "
            "mass-delete guard, or a source that could not be read in full), while it holds any.",
            labels=["namespace", "name"],
        )
        for key, (is_ready, reason) in self.ready.copy().items():  # copy: scrapes run on a thread
            ready.add_metric(key, 1.0 if is_ready else 0.0)
            if not is_ready:
                reasons.add_metric([*key, reason], 1.0)
        for (namespace, name), count in self.held.copy().items():
            held.add_metric([namespace, name], count)
        yield ready
        yield reasons
        yield held


OBJECTS = ObjectStates()
REGISTRY.register(OBJECTS)


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
    reason = reason if _REASON.fullmatch(reason) else OTHER_REASON
    OBJECTS.ready[(kind, namespace, name)] = (ready, reason)


def reflect_status(kind: str, namespace: str, name: str, status: Mapping[str, Any] | None) -> None:
    """After a cycle (or at first sight): readiness, and a SecretSync's held deletes, as its
    status says. `status` None: the cycle's outcome could not be written."""
    if status is None:
        set_ready(kind, namespace, name, False, STATUS_NOT_WRITTEN)
        return
    readiness = ready_of(status)
    if readiness is not None:
        set_ready(kind, namespace, name, *readiness)
    if kind == "SecretSync":
        held = held_deletes_of(status)
        if held:
            OBJECTS.held[(namespace, name)] = held
        else:
            OBJECTS.held.pop((namespace, name), None)


def cycle_ended(kind: str, namespace: str, name: str, *, succeeded: bool) -> None:
    LAST_CYCLE.labels(kind, namespace, name).set_to_current_time()
    if succeeded:
        LAST_SUCCESS.labels(kind, namespace, name).set_to_current_time()


def forget_object(kind: str, namespace: str, name: str) -> None:
    for gauge in (LAST_CYCLE, LAST_SUCCESS):
        with contextlib.suppress(KeyError):
            gauge.remove(kind, namespace, name)
    OBJECTS.ready.pop((kind, namespace, name), None)
    if kind == "SecretSync":
        OBJECTS.held.pop((namespace, name), None)
