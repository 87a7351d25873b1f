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
