"""Bodies without metadata.managedFields in kopf's memory.

kopf keeps the latest body of every object whose daemon runs (the InfisicalConnections), and
every event's body while its handlers run (10,000 at once when the SecretSyncs are first
listed). About half of each body's JSON is `metadata.managedFields` (the API server's record of
which field manager set which field), which neither kopf nor this operator reads. Dropping it as
each event arrives halves what kopf holds per object.

kopf has no hook for that, so its watch stream is wrapped where its queueing calls it (through
the module attribute; app.py hands the module in, being the one place that imports kopf). If a
kopf release moves that function, nothing breaks: the wrap is skipped with a DEBUG line and the
bodies stay whole; a unit test pins the assumption.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

log = logging.getLogger(__name__)
_WRAPPED = "_infisical_sync_trimmed"
Stream = Callable[..., AsyncGenerator[Any, None]]


def trimmed(event: Any) -> Any:
    """The watch event with its object's managedFields dropped (in place); anything else (a
    kopf bookmark marker) as it is."""
    if isinstance(event, dict):
        body = event.get("object")
        if isinstance(body, dict):
            metadata = body.get("metadata")
            if isinstance(metadata, dict):
                metadata.pop("managedFields", None)
    return event


def trim_watched_bodies(watching: Any) -> bool:
    """Wrap the watch stream of kopf's `watching` module (kopf._cogs.clients.watching, which
    the composition root imports) once. False when it has no stream where expected."""
    original: Stream | None = getattr(watching, "infinite_watch", None)
    if original is None:
        log.debug("kopf's watch stream moved: bodies keep their managedFields")
        return False
    if getattr(original, _WRAPPED, False):
        return True
    stream = original

    async def infinite_watch(**kwargs: Any) -> AsyncIterator[Any]:
        async with contextlib.aclosing(stream(**kwargs)) as events:
            async for event in events:
                yield trimmed(event)

    setattr(infinite_watch, _WRAPPED, True)
    setattr(watching, "infinite_watch", infinite_watch)  # noqa: B010 - a typed module's attribute
    return True
