"""Bodies reach kopf without managedFields: the wrap of its watch stream."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kopf._cogs.clients import watching
from kopf._core.reactor import queueing

from infisical_sync import kopf_trim

MANAGED = [{"manager": "infisical-sync", "operation": "Update", "fieldsV1": {"f:status": {}}}]


def event(change: str | None, name: str) -> dict[str, Any]:
    metadata = {"name": name, "resourceVersion": "7", "managedFields": list(MANAGED)}
    return {"type": change, "object": {"metadata": metadata, "spec": {"a": 1}}}


def test_an_event_loses_managed_fields_and_nothing_else() -> None:
    found = kopf_trim.trimmed(event("MODIFIED", "x"))
    assert found == {
        "type": "MODIFIED",
        "object": {"metadata": {"name": "x", "resourceVersion": "7"}, "spec": {"a": 1}},
    }
    assert kopf_trim.trimmed(watching.Bookmark.LISTED) is watching.Bookmark.LISTED
    assert kopf_trim.trimmed({"type": "ERROR", "object": {"code": 410}}) == {
        "type": "ERROR",
        "object": {"code": 410},
    }


async def test_the_wrapped_stream_yields_trimmed_events_and_closes_the_original(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    closed: list[bool] = []

    async def original(**kwargs: Any) -> AsyncIterator[Any]:
        assert kwargs == {"resource": "r", "namespace": None}
        try:
            yield event(None, "listed")
            yield watching.Bookmark.LISTED
            yield event("ADDED", "added")
            yield event("MODIFIED", "never")  # the consumer stops before this one
        finally:
            closed.append(True)

    monkeypatch.setattr(watching, "infinite_watch", original)
    assert kopf_trim.trim_watched_bodies(watching)
    assert kopf_trim.trim_watched_bodies(watching)  # once: not wrapped twice
    stream = watching.infinite_watch(resource="r", namespace=None)
    seen = []
    async for item in stream:
        seen.append(item)
        if len(seen) == 3:
            break
    await stream.aclose()
    assert [e["object"]["metadata"] for e in (seen[0], seen[2])] == [
        {"name": "listed", "resourceVersion": "7"},
        {"name": "added", "resourceVersion": "7"},
    ]
    assert seen[1] is watching.Bookmark.LISTED
    assert closed == [True]


def test_a_module_without_the_stream_is_left_alone() -> None:
    class Moved:
        pass

    assert not kopf_trim.trim_watched_bodies(Moved)


def test_kopf_still_calls_its_watch_stream_through_the_module_attribute() -> None:
    """What the wrap relies on: a kopf release that changes it fails here, not silently."""
    assert "watching.infinite_watch(" in inspect.getsource(queueing.watcher)
