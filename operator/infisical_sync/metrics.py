"""Prometheus metrics. Labels hold names and outcomes only — never values or tokens."""

from __future__ import annotations

import contextlib

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
CONNECTION_READY = Gauge(
    "infisical_sync_connection_ready",
    "1 when an InfisicalConnection is Ready.",
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


def cycle_ended(kind: str, namespace: str, name: str, *, succeeded: bool) -> None:
    LAST_CYCLE.labels(kind, namespace, name).set_to_current_time()
    if succeeded:
        LAST_SUCCESS.labels(kind, namespace, name).set_to_current_time()


def forget_object(kind: str, namespace: str, name: str) -> None:
    for gauge in (LAST_CYCLE, LAST_SUCCESS):
        with contextlib.suppress(KeyError):
            gauge.remove(kind, namespace, name)
