"""Go-style durations as used in the CRDs ("5m", "1h30m", "90s", "500ms")."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping
from typing import Any

_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
DEFAULT_INTERVAL = 300.0  # the CRDs' default of 5m
# The CRDs' minimums. Also applied at runtime: objects stored before the CRDs had them keep
# their old value, and "0s" would loop without pause.
MIN_SYNC_INTERVAL = 10.0
MIN_VALIDATION_INTERVAL = 30.0


def parse_duration(text: str | None, default: float) -> float:
    """Seconds; `default` for an empty or malformed value (the CRD pattern rejects those)."""
    if not text:
        return default
    parts = _PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return default
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


def sync_interval(spec: Mapping[str, Any]) -> float:
    """A SecretSync's syncInterval in seconds, never below the minimum."""
    return max(MIN_SYNC_INTERVAL, parse_duration(spec.get("syncInterval"), DEFAULT_INTERVAL))


def validation_interval(spec: Mapping[str, Any]) -> float:
    """An InfisicalConnection's validationInterval in seconds, never below the minimum."""
    seconds = parse_duration(spec.get("validationInterval"), DEFAULT_INTERVAL)
    return max(MIN_VALIDATION_INTERVAL, seconds)


def jittered(
    seconds: float,
    fraction: float = 0.1,
    uniform: Callable[[float, float], float] = random.uniform,
) -> float:
    """Spread timers by ±fraction so that a restart does not fire them all at once."""
    spread = seconds * fraction
    return max(0.0, seconds + uniform(-spread, spread))


def retry_delay(interval: float, failures: int, retry_after: float | None = None) -> float:
    """After `failures` failures in a row: 5 s, doubling, capped by the interval, never before
    the instance's Retry-After. Not jittered."""
    delay: float = min(interval, 5.0 * 2.0 ** (failures - 1))
    return max(delay, retry_after) if retry_after else delay
