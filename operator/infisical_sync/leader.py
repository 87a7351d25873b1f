"""Leader election on a coordination.k8s.io/v1 Lease: who may run the operator and write.

A standby runs no watches and no handlers: it polls the Lease (lease.py decides) and serves
/healthz itself. Once it holds the Lease it runs the operator, renewing every retry period and
opening the write fence (fence.py) until each renewal's start + the renew deadline. A renewal
that fails past that deadline, or a Lease found taken or deleted, closes the fence and stops the
operator; the process exits non-zero (client-go's convention: the pod restarts as a standby).
On SIGTERM the leader stops the operator, then releases the Lease so a standby takes it at once.

Lease calls use their own Kube adapter (own worker threads, short timeouts): renewals never
queue behind the operator's Kubernetes traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Protocol

from aiohttp import web
from kubernetes.client.exceptions import ApiException

from infisical_sync import metrics
from infisical_sync.config import Settings
from infisical_sync.fence import Fence
from infisical_sync.kube import Kube, KubeTimeouts, KubeUnavailable, load_api_client
from infisical_sync.lease import (
    LeaseRecord,
    LeaseTimings,
    Observed,
    Step,
    acquired,
    decide,
    observe,
    released,
    renewed,
    wait_before_next,
)

log = logging.getLogger("infisical_sync.leader")
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
EXIT_LOST = 1
RELEASE_ATTEMPTS = 3


class LeaseStore(Protocol):
    async def read(self) -> tuple[LeaseRecord | None, str]:
        """The record and its resourceVersion; (None, "") when there is no Lease."""

    async def write(self, record: LeaseRecord, resource_version: str) -> bool:
        """Create ("" version) or replace that version; False when another wrote first."""


class KubeLeaseStore:
    def __init__(self, kube: Kube, namespace: str, name: str) -> None:
        self.kube, self.namespace, self.name = kube, namespace, name

    async def read(self) -> tuple[LeaseRecord | None, str]:
        found = await self.kube.read_lease(self.namespace, self.name)
        if found is None:
            return None, ""
        spec, version = found
        return LeaseRecord.from_spec(spec), version

    async def write(self, record: LeaseRecord, resource_version: str) -> bool:
        return await self.kube.write_lease(
            self.namespace, self.name, record.to_spec(), resource_version or None
        )


class LeaderElector:
    def __init__(
        self,
        store: LeaseStore,
        *,
        identity: str,
        timings: LeaseTimings,
        fence: Fence,
        where: str = "",
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.store = store
        self.identity = identity
        self.timings = timings
        self.fence = fence
        self.where = where  # namespace/name, for logs
        self.clock = clock
        self.wall = wall
        self.observed: Observed | None = None
        self.leading_until: float | None = None
        self._failing = False
        self._announced_holder: str | None = None

    @property
    def leading(self) -> bool:
        return self.leading_until is not None

    async def attempt(self) -> Step:
        """One look at the Lease and, when the decision is to hold it, one write. Returns the
        decision; a write that lost the race (409) or failed returns WAIT."""
        started = self.clock()
        try:
            record, version = await self.store.read()
        except (KubeUnavailable, ApiException) as exc:
            self._failed("reading", exc)
            return self._after_failure()
        self.observed = observe(self.observed, record, self.clock(), version)
        step = decide(
            self.observed,
            identity=self.identity,
            now=self.clock(),
            timings=self.timings,
            leading_until=self.leading_until,
        )
        if step is Step.WAIT:
            self._announce_holder(record)
        if step not in (Step.CREATE, Step.TAKE_RELEASED, Step.TAKE_EXPIRED, Step.RENEW):
            return step
        new = (
            renewed(record, self.wall())
            if step is Step.RENEW and record is not None
            else acquired(record, self.identity, self.timings, self.wall())
        )
        try:
            written = await self.store.write(new, version)
        except (KubeUnavailable, ApiException) as exc:
            self._failed("writing", exc)
            return self._after_failure()
        if not written:
            return self._after_failure()
        if self._failing:
            log.info("Lease %s: renewing works again", self.where)
            self._failing = False
        # Our write is a change a standby sees no earlier than now: we write until the deadline
        # counted from before the read, standbys wait the longer duration counted from later.
        self.leading_until = started + self.timings.renew_deadline
        self.fence.open_until(self.leading_until)
        return step

    def _after_failure(self) -> Step:
        if self.leading_until is not None and self.clock() >= self.leading_until:
            return Step.LOST
        return Step.WAIT

    def _failed(self, doing: str, exc: KubeUnavailable | ApiException) -> None:
        what = str(exc) if isinstance(exc, KubeUnavailable) else f"answered {exc.status}"
        level = logging.DEBUG if self._failing else logging.WARNING
        log.log(level, "Lease %s: %s it failed: %s", self.where, doing, what)
        self._failing = True

    def _announce_holder(self, record: LeaseRecord | None) -> None:
        holder = record.holder if record else ""
        if holder != self._announced_holder:
            self._announced_holder = holder
            log.info("standby: Lease %s is held by %s; waiting", self.where, holder or "nobody")

    async def acquire(self, stopping: asyncio.Event) -> bool:
        """Until this process holds the Lease (True) or `stopping` is set (False)."""
        log.info("standby: waiting for Lease %s as %s", self.where, self.identity)
        while not stopping.is_set():
            step = await self.attempt()
            if self.leading:
                log.info("acquired Lease %s as %s (%s)", self.where, self.identity, step.value)
                metrics.LEADER.set(1)
                return True
            delay = (
                wait_before_next(self.observed, now=self.clock(), timings=self.timings)
                if self.observed is not None
                else self.timings.retry_period
            )
            await _wait(stopping, delay)
        return False

    async def keep(self, lost: asyncio.Event) -> None:
        """Renew until leadership is lost: then the fence is closed and `lost` set."""
        while True:
            assert self.leading_until is not None
            now = self.clock()
            await asyncio.sleep(max(0.0, min(self.timings.retry_period, self.leading_until - now)))
            if await self.attempt() is Step.LOST or self.clock() >= self.leading_until:
                break
        self.fence.close()
        self.leading_until = None
        metrics.LEADER.set(0)
        log.error("lost Lease %s: stopping; writes were fenced at the renew deadline", self.where)
        lost.set()

    async def release(self) -> None:
        """After the operator stopped: clear the holder so a standby takes over at once."""
        self.fence.close()
        self.leading_until = None
        metrics.LEADER.set(0)
        for _ in range(RELEASE_ATTEMPTS):  # a renewal cut short may still land: read again
            try:
                record, version = await self.store.read()
                if record is None or record.holder != self.identity:
                    return
                if await self.store.write(released(record, self.wall()), version):
                    log.info("released Lease %s", self.where)
                    return
            except (KubeUnavailable, ApiException) as exc:
                self._failed("releasing", exc)
                return


async def _wait(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


def identity() -> str:
    """The pod's name (or the host's) and a random suffix: unique per process, so a restarted
    pod never mistakes its predecessor's Lease for its own."""
    base = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{base}_{uuid.uuid4().hex[:8]}"


def lease_namespace(settings: Settings) -> str:
    if settings.lease_namespace:
        return settings.lease_namespace
    with contextlib.suppress(OSError):
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    raise SystemExit("--leader-election needs --lease-namespace outside a pod")


@contextlib.asynccontextmanager
async def standby_health(port: int, where: str) -> AsyncIterator[None]:
    """/healthz while waiting (liveness passes); closed before kopf serves the same port."""
    if not port:
        yield
        return

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text=f"standby: waiting for Lease {where}\n")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()  # noqa: S104 - the probe's port
    try:
        yield
    finally:
        await runner.cleanup()


def _on_signals(handler: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, handler)


async def run_elected(
    settings: Settings, operate: Callable[[Fence, asyncio.Event], Awaitable[None]]
) -> int:
    """Wait for the Lease, then `operate(fence, stop_flag)` while holding it. Exit status:
    0 after a signal (Lease released), 1 when the Lease was lost (not released)."""
    timings = settings.lease_timings
    where = f"{lease_namespace(settings)}/{settings.lease}"
    fence = Fence(closed=True, margin=timings.fence_margin)
    call_timeout = max(1.0, timings.renew_deadline / 2)  # a hung call leaves time to retry
    api_client = await asyncio.to_thread(load_api_client, 2)
    kube = Kube(
        api_client,
        KubeTimeouts(
            connect=min(settings.kube_connect_timeout, call_timeout),
            read=min(settings.kube_request_timeout, call_timeout),
        ),
        concurrency=2,
    )
    elector = LeaderElector(
        KubeLeaseStore(kube, lease_namespace(settings), settings.lease),
        identity=identity(),
        timings=timings,
        fence=fence,
        where=where,
    )
    metrics.LEADER.set(0)
    stopping = asyncio.Event()
    _on_signals(stopping.set)
    try:
        async with standby_health(settings.health_port, where):
            if not await elector.acquire(stopping):
                return 0
        lost = asyncio.Event()  # kopf's stop flag
        if stopping.is_set():  # a signal came while taking the Lease
            await elector.release()
            return 0
        # Created before kopf starts: kopf leaves tasks that existed before it alone.
        keeper = asyncio.create_task(elector.keep(lost), name="lease renewal")
        try:
            await operate(fence, lost)  # kopf stops on SIGTERM (its own handler) or on `lost`
        finally:
            _on_signals(stopping.set)  # kopf's handlers would answer a second signal with errors
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            if not lost.is_set():
                await elector.release()
        return EXIT_LOST if lost.is_set() else 0
    finally:
        kube.close()
