"""What a status write would change. Pure: no I/O.

Our statuses are JSON merge patches (RFC 7386) of the status subresource. A cycle whose outcome
is the status already stored sends nothing: every write is an etcd write and a watch event
that every watcher (kopf included) processes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def merge_patch(target: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """`target` after `patch` (RFC 7386): null removes, objects merge, anything else replaces.
    `target` is not modified."""
    merged = dict(target)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping):
            before = merged.get(key)
            merged[key] = merge_patch(before if isinstance(before, Mapping) else {}, value)
        else:
            merged[key] = value
    return merged


def status_patch(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of `wanted` that change `stored` when merge-patched; {} when none does."""
    after = merge_patch(stored, wanted)
    return {key: value for key, value in wanted.items() if after.get(key) != stored.get(key)}
