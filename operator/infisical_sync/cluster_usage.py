"""Writes each ClusterInfisicalConnection's usage counts to its status when they change.

The counts (`secretSyncs`, `namespaces`, `deniedSecretSyncs`) come from ClusterAccess, which
every shard fills from all SecretSync events; the shard owning a connection's status writes
them, coalesced: at most one patch per connection every INTERVAL seconds, none when nothing
changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol

from infisical_sync.cluster_access import ClusterAccess, Usage
from infisical_sync.kube import KubeFenced, KubeUnavailable
from infisical_sync.resources import CLUSTER_SCOPE
from infisical_sync.shards import Shard

log = logging.getLogger(__name__)
INTERVAL = 2.0


class StatusWriter(Protocol):
    async def patch_status(
        self, plural: str, namespace: str, name: str, status: dict[str, Any]
    ) -> bool: ...


class UsageReport:
    def __init__(
        self,
        access: ClusterAccess,
        status: StatusWriter,
        shard: Shard,
        plural: str,
        interval: float = INTERVAL,
    ) -> None:
        self.access = access
        self.status = status
        self.shard = shard
        self.plural = plural
        self.interval = interval
        self.written: dict[str, Usage] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cluster connection usage")

    def wake(self) -> None:
        """Counts may have changed (ClusterAccess.dirty says which)."""
        if self._task is not None and self.access.dirty:
            self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.interval)  # a burst of events (a start) makes one patch
            self._wake.clear()
            await self.report()
            if self.access.dirty:  # not written (an outage): try again
                self._wake.set()

    async def report(self) -> None:
        """Write the counts of the dirty connections this shard owns, where they changed."""
        dirty, self.access.dirty = self.access.dirty, set()
        for name in sorted(dirty):
            if not self.access.known(name) or not self.shard.owns(CLUSTER_SCOPE, name):
                self.written.pop(name, None)
                continue
            usage = self.access.usage(name)
            if self.written.get(name) == usage:
                continue
            try:
                if await self.status.patch_status(self.plural, CLUSTER_SCOPE, name, usage.status()):
                    self.written[name] = usage
            except (KubeUnavailable, KubeFenced) as exc:
                log.debug("usage of ClusterInfisicalConnection %s not written: %s", name, exc)
                self.access.dirty.add(name)  # with the next change, or the next report
            except Exception as exc:  # e.g. 403: one line; counts are not worth a crash
                log.warning(
                    "usage of ClusterInfisicalConnection %s not written: %s",
                    name,
                    type(exc).__name__,
                )
