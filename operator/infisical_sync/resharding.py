"""After a change of `--shard i/N`: objects still carrying an earlier configuration's finalizer
get only this one's, and none is left undeletable.

kopf adds this configuration's finalizer at first sight and removes only that one. What an
earlier configuration (another N, or the unsharded operator) left on an object would hold it
forever once deleted, so the object's owner here removes it:
- at first sight, once kopf's own finalizer is on the object (never before: a deletion in
  between would skip the deletion handler). Once per object and process: a replica of the
  earlier configuration still running during the rollout adds its finalizer back, and taking
  it away on every event would make the two take turns without end;
- when the object is deleted with kopf's finalizer on it, from the deletion handler;
- when it is deleted carrying only earlier finalizers (deleted while the rollout ran or the
  operator was down: kopf calls no deletion handler then), after doing what the deletion
  handler would (`finish`), retried while that asks to.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, Protocol

from infisical_sync.kube import KubeUnavailable
from infisical_sync.scheduler import RetryLater
from infisical_sync.shards import Shard

log = logging.getLogger(__name__)
RETRY_DELAY = 30.0  # seconds before retrying an unexpected failure
Finish = Callable[[str, str, Mapping[str, Any]], Awaitable[None]]
Key = tuple[str, str, str]  # (plural, namespace, name)


class FinalizerWriter(Protocol):
    async def remove_finalizers(
        self, plural: str, namespace: str, name: str, which: Callable[[list[str]], list[str]]
    ) -> list[str]: ...


def _finalizers(body: Mapping[str, Any]) -> list[str]:
    return list((body.get("metadata") or {}).get("finalizers") or [])


def _deleting(body: Mapping[str, Any]) -> bool:
    return (body.get("metadata") or {}).get("deletionTimestamp") is not None


class Resharding:
    def __init__(
        self,
        shard: Shard,
        kube: FinalizerWriter,
        finish: Mapping[str, Finish],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.shard = shard
        self.kube = kube
        self.finish = finish  # per plural: the deletion handler's work, raising RetryLater
        self.sleep = sleep
        self._tidied: set[Key] = set()
        self._orphans: dict[Key, Mapping[str, Any]] = {}  # the latest body of each
        self._tasks: dict[Key, asyncio.Task[object]] = {}

    def on_event(
        self, change: str, plural: str, namespace: str, name: str, body: Mapping[str, Any]
    ) -> None:
        """A watch event of an object this shard owns."""
        key = (plural, namespace, name)
        if change == "DELETED":
            self._tidied.discard(key)
            self._orphans.pop(key, None)
            return
        finalizers = _finalizers(body)
        if not self.shard.stale_finalizers(finalizers):
            return
        ours = self.shard.finalizer in finalizers
        if ours and not _deleting(body) and key not in self._tidied:
            self._tidied.add(key)
            self._start(key, self._strip(key))
        elif not ours and _deleting(body):
            self._orphans[key] = body
            self._start(key, self._finish_orphan(key))

    async def on_deleting(self, plural: str, namespace: str, name: str) -> None:
        """From the deletion handler (kopf's finalizer is on the object)."""
        await self._strip((plural, namespace, name))

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    def _start(self, key: Key, work: Coroutine[Any, Any, object]) -> None:
        if key in self._tasks:  # the one under way sees this object's latest state
            work.close()
            return
        task: asyncio.Task[object] = asyncio.ensure_future(work)
        self._tasks[key] = task
        task.add_done_callback(lambda _done: self._tasks.pop(key, None))

    async def _strip(self, key: Key) -> bool:
        plural, namespace, name = key
        try:
            removed = await self.kube.remove_finalizers(
                plural, namespace, name, self.shard.stale_finalizers
            )
        except Exception as exc:  # the next event or the deletion tries again
            log.warning(
                "%s %s/%s: earlier shard finalizers not removed: %s",
                plural,
                namespace,
                name,
                exc if isinstance(exc, KubeUnavailable) else type(exc).__name__,
            )
            return False
        if removed:
            log.info(
                "%s %s/%s: removed finalizers of an earlier shard configuration: %s",
                plural,
                namespace,
                name,
                ", ".join(removed),
            )
        return True

    async def _finish_orphan(self, key: Key) -> None:
        plural, namespace, name = key
        while (body := self._orphans.get(key)) is not None:
            try:
                await self.finish[plural](namespace, name, body)
            except RetryLater as retry:
                delay = retry.delay
            except Exception as exc:
                log.warning(
                    "%s %s/%s deleted under an earlier shard configuration: %s; retrying",
                    plural,
                    namespace,
                    name,
                    exc if isinstance(exc, KubeUnavailable) else type(exc).__name__,
                )
                delay = RETRY_DELAY
            else:
                if await self._strip(key):
                    return
                delay = RETRY_DELAY
            await self.sleep(delay)
