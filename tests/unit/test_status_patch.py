"""Which part of a wanted status actually changes the stored one (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from infisical_sync.status_patch import merge_patch, status_patch

STORED: dict[str, Any] = {
    "syncStatus": "Succeeded",
    "managedKeys": ["A", "B"],
    "heldDeletes": {"keys": ["C"], "reason": "r", "id": "x", "since": "t"},
    "plan": {"create": [], "unchanged": 2},
}


def test_an_equal_status_is_no_patch() -> None:
    assert status_patch(STORED, dict(STORED)) == {}


@pytest.mark.parametrize(
    "wanted",
    [
        {"lastSyncAttemptAt": None},  # clearing what is not there
        {"heldDeletes": {"keys": ["C"]}},  # a merge patch keeps the other entries
        {"plan": {"create": []}},
        {},
    ],
)
def test_what_a_merge_patch_would_not_change_is_no_patch(wanted: dict[str, Any]) -> None:
    assert status_patch(STORED, wanted) == {}


def test_only_the_fields_that_change_are_patched() -> None:
    wanted = {**STORED, "managedKeys": ["A"], "pendingApproval": None, "lastHandledRequest": "1"}
    assert status_patch(STORED, wanted) == {"managedKeys": ["A"], "lastHandledRequest": "1"}
    assert status_patch(STORED, {"heldDeletes": None}) == {"heldDeletes": None}
    assert status_patch(STORED, {"heldDeletes": {"id": None}}) == {"heldDeletes": {"id": None}}


def test_merge_patch_follows_rfc_7386() -> None:
    patched = merge_patch(STORED, {"heldDeletes": {"id": None, "keys": ["D"]}, "plan": None})
    assert patched["heldDeletes"] == {"keys": ["D"], "reason": "r", "since": "t"}
    assert "plan" not in patched
    assert STORED["heldDeletes"]["id"] == "x"  # the target is not modified
    assert merge_patch({"a": [1]}, {"a": {"b": None, "c": 1}}) == {"a": {"c": 1}}
