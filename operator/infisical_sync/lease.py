"""Leader election decisions on a coordination.k8s.io/v1 Lease, with client-go's semantics.

Pure: given the Lease as last read, when this process first saw that version of it (its OWN
monotonic clock), now, and whether it leads, decide what to do. Clocks of different nodes are
never compared: a standby considers a Lease expired only when `leaseDurationSeconds` have passed
on its clock since it last saw the record change. A released Lease (empty holder) may be taken
at once. The wall-clock times written into the record are for people (`kubectl get lease`).

Shard configurations: every Lease we write names the configuration of its writer (its shard
count, SHARDS_ANNOTATION). A replica starts its operator only once no Lease of the family
(`<lease>`, `<lease>-shard-i`) written by another configuration may still be held, by the same
rule a standby uses to take one: a resharding rollout never runs two configurations at once.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any


@dataclass(frozen=True)
class LeaseTimings:
    duration: int  # seconds a standby waits after the last change it saw (the Lease's field)
    renew_deadline: float  # seconds after a renewal's start the leader stops writing
    retry_period: float  # seconds between attempts (acquire or renew)

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.duration:
            raise ValueError("lease timings need retry period < renew deadline < lease duration")

    @property
    def fence_margin(self) -> float:
        """No write is sent this close to the fence's deadline: it would still be on its way."""
        return min(1.0, self.renew_deadline / 4)


@dataclass(frozen=True)
class LeaseRecord:
    holder: str = ""  # empty: released
    duration_seconds: int = 0
    acquire_time: str | None = None
    renew_time: str | None = None
    transitions: int = 0

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> LeaseRecord:
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
        )

    def to_spec(self) -> dict[str, Any]:
        return {
            "holderIdentity": self.holder or None,
            "leaseDurationSeconds": self.duration_seconds,
            "acquireTime": self.acquire_time,
            "renewTime": self.renew_time,
            "leaseTransitions": self.transitions,
        }


@dataclass(frozen=True)
class Observed:
    record: LeaseRecord | None  # None: there is no Lease
    since: float  # our clock when this record was first seen; -inf: no Lease seen, ever
    version: str = ""  # its resourceVersion: every write changes it, even one of equal content


def observe(
    previous: Observed | None, record: LeaseRecord | None, now: float, version: str = ""
) -> Observed:
    """The same record as before keeps its time; any change (a renewal, a new holder, a
    deletion) restarts it. No Lease on the first look has never been held as far as we know."""
    if previous is not None and (previous.record, previous.version) == (record, version):
        return previous
    if previous is None and record is None:
        return Observed(None, -math.inf)
    return Observed(record, now, version)


class Step(Enum):
    CREATE = "create"  # no Lease: create it, holding it
    TAKE_RELEASED = "released"  # its holder let it go: take it now
    TAKE_EXPIRED = "expired"  # unchanged for its duration on our clock: take it
    RENEW = "renew"  # ours: renew it
    WAIT = "wait"  # another holds it and may still be alive
    LOST = "lost"  # we led and can no longer be sure we do: stop writing


def decide(
    observed: Observed,
    *,
    identity: str,
    now: float,
    timings: LeaseTimings,
    leading_until: float | None,
) -> Step:
    """`leading_until`: None on a standby; the leader's renew deadline otherwise."""
    record = observed.record
    if leading_until is not None:
        if now >= leading_until or record is None or record.holder != identity:
            return Step.LOST  # deleted or taken by someone else: never fight over it
        return Step.RENEW
    if record is None:
        # Deleted while someone held it: that holder may still be writing; wait as for expiry.
        return Step.CREATE if now >= observed.since + timings.duration else Step.WAIT
    if not record.holder:
        return Step.TAKE_RELEASED
    if now >= observed.since + (record.duration_seconds or timings.duration):
        return Step.TAKE_EXPIRED
    return Step.WAIT


def wait_before_next(observed: Observed, *, now: float, timings: LeaseTimings) -> float:
    """A standby looks again after the retry period, or at the moment the Lease would expire
    if that comes first (a takeover not delayed by up to a retry period)."""
    record = observed.record
    duration = (record.duration_seconds if record else 0) or timings.duration
    return max(0.0, min(timings.retry_period, observed.since + duration - now))


def micro_time(at: dt.datetime) -> str:
    """A Kubernetes MicroTime."""
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def acquired(
    previous: LeaseRecord | None, identity: str, timings: LeaseTimings, at: dt.datetime
) -> LeaseRecord:
    transitions = previous.transitions if previous else 0
    if previous is not None and previous.holder != identity:
        transitions += 1
    return LeaseRecord(
        holder=identity,
        duration_seconds=timings.duration,
        acquire_time=micro_time(at),
        renew_time=micro_time(at),
        transitions=transitions,
    )


def renewed(record: LeaseRecord, at: dt.datetime) -> LeaseRecord:
    return replace(record, renew_time=micro_time(at))


def released(record: LeaseRecord, at: dt.datetime) -> LeaseRecord:
    """client-go's release: no holder, a one-second duration, times of the release."""
    return LeaseRecord(
        holder="",
        duration_seconds=1,
        acquire_time=micro_time(at),
        renew_time=micro_time(at),
        transitions=record.transitions,
    )


# --- shard configurations sharing a family of Leases ------------------------------------------

SHARDS_ANNOTATION = "infisical-sync.dev/shards"  # on the Lease: its writer's shard count
UNKNOWN_CONFIGURATION = 0


def configuration_of(name: str, base: str, annotations: Mapping[str, str]) -> int | None:
    """The shard count of the configuration that wrote the Lease `name`, when it belongs to the
    family of `base`; None when it does not. A Lease written before the annotation existed: the
    unsharded name is configuration 1, a shard's is UNKNOWN_CONFIGURATION (never taken for
    ours, so waited out like any other configuration's)."""
    if name == base:
        default = 1
    elif re.fullmatch(rf"{re.escape(base)}-shard-\d+", name):
        default = UNKNOWN_CONFIGURATION
    else:
        return None
    raw = annotations.get(SHARDS_ANNOTATION)
    if raw is None:
        return default
    return int(raw) if re.fullmatch(r"[0-9]{1,6}", raw) and int(raw) >= 1 else UNKNOWN_CONFIGURATION


def may_be_held(observed: Observed, *, now: float, timings: LeaseTimings) -> bool:
    """Whether another configuration's Lease may still have a live holder: a standby could not
    take it yet (held and changed less than its duration ago on our clock, or deleted less than
    a duration ago). A released one is not held."""
    return decide(observed, identity="", now=now, timings=timings, leading_until=None) is Step.WAIT
