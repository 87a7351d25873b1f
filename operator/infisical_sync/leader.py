"""Leader election on a coordination.k8s.io/v1 Lease: who may run the operator and write.

A standby runs no watches and no handlers: it polls the Lease (lease.py decides) and serves
/healthz itself. Once it holds the Lease it runs the operator, renewing every retry period and
opening the write fence (fence.py) until each renewal's start + the renew deadline. A renewal
that fails past that deadline, or a Lease found taken or deleted, closes the fence and stops the
operator; the process exits non-zero (client-go's convention: the pod restarts as a standby).
On SIGTERM the leader stops the operator, closes the fence and waits for the writes under way
(bounded by the request timeouts), then releases the Lease so a standby takes it at once; writes
still under way at the bound leave the Lease to expire instead.

Shards: before it starts the operator, a replica holding its Lease waits (renewing it, the fence
closed) while any Lease of the family is held by another shard configuration (lease.py): during
a resharding rollout the new configuration starts once the old one's replicas are gone.

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
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from aiohttp import web
from kubernetes.client.exceptions import ApiException

from infisical_sync import metrics
from infisical_sync.config import Settings
from infisical_sync.fence import Fence
from infisical_sync.kube import Kube, KubeTimeouts, KubeUnavailable, load_api_client
from infisical_sync.lease import (
    SHARDS_ANNOTATION,
    LeaseRecord,
    LeaseTimings,
    Observed,
    Step,
    acquired,
    configuration_of,
    decide,
    may_be_held,
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


@dataclass(frozen=True)
class FamilyLease:
    name: str
    configuration: int | None  # its writer's shard count (lease.configuration_of)
    record: LeaseRecord
    version: str


class LeaseLister(Protocol):
    async def family(self) -> list[FamilyLease]:
        """The Leases of our family in the lease namespace (ours included)."""


class KubeLeaseStore:
    """Our Lease, written with our configuration (its shard count) on it, and its family."""

    def __init__(
        self, kube: Kube, namespace: str, name: str, *, base: str = "", shards: int = 1
    ) -> None:
        self.kube, self.namespace, self.name = kube, namespace, name
        self.base = base or name
        self.shards = shards

    async def read(self) -> tuple[LeaseRecord | None, str]:
        found = await self.kube.read_lease(self.namespace, self.name)
        if found is None:
            return None, ""
        spec, version = found
        return LeaseRecord.from_spec(spec), version

    async def write(self, record: LeaseRecord, resource_version: str) -> bool:
        return await self.kube.write_lease(
            self.namespace,
            self.name,
            record.to_spec(),
            resource_version or None,
            annotations={SHARDS_ANNOTATION: str(self.shards)},
        )

    async def family(self) -> list[FamilyLease]:
        found = []
        for lease in await self.kube.list_leases(self.namespace):
            configuration = configuration_of(lease.name, self.base, lease.annotations)
            if configuration is not None:
                record = LeaseRecord.from_spec(lease.spec)
                found.append(FamilyLease(lease.name, configuration, record, lease.resource_version))
        return found


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
        self._writes_paused = False

    def pause_writes(self) -> None:
        """Close the fence and keep it closed through renewals, until resume_writes()."""
        self._writes_paused = True
        self.fence.close()
        metrics.LEADER.set(0)

    def resume_writes(self) -> None:
        """Renewals open the fence again; so does this one, when leading."""
        self._writes_paused = False
        if self.leading_until is not None:
            self.fence.open_until(self.leading_until)
            metrics.LEADER.set(1)

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
        if not self._writes_paused:
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
                if not self._writes_paused:
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

    async def step_down(self, writes_timeout: float) -> bool:
        """After the operator stopped, before release(): no new write, and those under way
        finished (keep() may go on renewing meanwhile; the fence stays closed). False when some
        are still under way after `writes_timeout` seconds: then do not release, let the Lease
        expire (a standby waits its duration, and the writes their timeouts)."""
        self.pause_writes()
        if not self.fence.writes_under_way:
            return True
        if await asyncio.to_thread(self.fence.wait_drained, writes_timeout):
            return True
        log.warning(
            "Lease %s not released: %d write still under way after %g s; it expires instead",
            self.where,
            self.fence.writes_under_way,
            writes_timeout,
        )
        return False

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


class OtherConfigurations:
    """Leases of the family written by another shard configuration, observed over time on our
    clock like a standby observes its Lease: `wait` returns once none may still be held."""

    def __init__(
        self,
        lister: LeaseLister,
        *,
        own: str,
        shards: int,
        timings: LeaseTimings,
        namespace: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lister = lister
        self.own = own  # our Lease's name: never waited for
        self.shards = shards
        self.timings = timings
        self.namespace = namespace  # for logs
        self.clock = clock
        self.seen: dict[str, tuple[int | None, Observed]] = {}
        self._failing = False
        self._announced: tuple[str, int | None] | None = None

    async def blocker(self) -> tuple[str, int | None, Observed] | None:
        """One look: a Lease of another configuration that may still be held (its name, its
        configuration, how we saw it), or None. Raises KubeUnavailable and ApiException."""
        listed = {lease.name: lease for lease in await self.lister.family()}
        now = self.clock()
        for name in set(self.seen) | set(listed):
            previous = self.seen.get(name)
            lease = listed.get(name)
            configuration = lease.configuration if lease else previous[0] if previous else None
            observed = observe(
                previous[1] if previous else None,
                lease.record if lease else None,
                now,
                lease.version if lease else "",
            )
            self.seen[name] = (configuration, observed)
        found = None
        for name, (configuration, observed) in sorted(self.seen.items()):
            if name == self.own or configuration == self.shards:
                continue
            if may_be_held(observed, now=now, timings=self.timings):
                found = found or (name, configuration, observed)
            elif observed.record is None:
                del self.seen[name]  # deleted and waited out: forgotten
        return found

    async def wait(self, interrupted: Sequence[asyncio.Event]) -> bool:
        """Until no other configuration may hold a Lease of the family (True), or one of
        `interrupted` is set (False). A failed look counts as held: we cannot know."""
        while not any(event.is_set() for event in interrupted):
            try:
                found = await self.blocker()
            except (KubeUnavailable, ApiException) as exc:
                what = str(exc) if isinstance(exc, KubeUnavailable) else f"answered {exc.status}"
                hint = " (grant list on leases)" if isinstance(exc, ApiException) else ""
                level = logging.DEBUG if self._failing else logging.WARNING
                log.log(level, "listing Leases in %s failed: %s%s", self.namespace, what, hint)
                self._failing = True
                await _wait_any(interrupted, self.timings.retry_period)
                continue
            self._failing = False
            if found is None:
                return True
            name, configuration, observed = found
            if (name, configuration) != self._announced:
                self._announced = (name, configuration)
                log.info(
                    "this replica (shards=%d) waits for Lease %s/%s of configuration shards=%s "
                    "(held by %s): it starts once that is released or expires",
                    self.shards,
                    self.namespace,
                    name,
                    configuration or "unknown",
                    observed.record.holder if observed.record else "nobody, deleted",
                )
            delay = wait_before_next(observed, now=self.clock(), timings=self.timings)
            await _wait_any(interrupted, max(delay, 0.05))
        return False


async def _wait(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


async def _wait_any(events: Sequence[asyncio.Event], seconds: float) -> None:
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


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


def writes_timeout(settings: Settings) -> float:
    """How long a write under way may still take: a Kubernetes call (connection retried twice,
    then its answer) or one Infisical attempt (a retry would be fenced)."""
    kube = 3 * settings.kube_connect_timeout + settings.kube_request_timeout
    return max(kube, settings.connect_timeout + settings.request_timeout)


async def run_elected(
    settings: Settings, operate: Callable[[Fence, asyncio.Event], Awaitable[None]]
) -> int:
    """Wait for the Lease (and for other shard configurations to be gone), then
    `operate(fence, stop_flag)` while holding it. Exit status: 0 after a signal (Lease released,
    or left to expire when writes were still under way), 1 when the Lease was lost."""
    timings = settings.lease_timings
    namespace = lease_namespace(settings)
    where = f"{namespace}/{settings.lease}"
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
    store = KubeLeaseStore(
        kube, namespace, settings.lease, base=settings.lease_name, shards=settings.shard.count
    )
    elector = LeaderElector(store, identity=identity(), timings=timings, fence=fence, where=where)
    others = OtherConfigurations(
        store,
        own=settings.lease,
        shards=settings.shard.count,
        timings=timings,
        namespace=namespace,
    )
    metrics.LEADER.set(0)
    stopping = asyncio.Event()
    lost = asyncio.Event()  # kopf's stop flag
    _on_signals(stopping.set)
    elector.pause_writes()  # opened once no other configuration may be writing
    keeper: asyncio.Task[None] | None = None
    try:
        async with standby_health(settings.health_port, where):
            if not await elector.acquire(stopping):
                return 0
            # Renewing from now on, also while waiting for other configurations. Created
            # before kopf starts: kopf leaves tasks that existed before it alone.
            keeper = asyncio.create_task(elector.keep(lost), name="lease renewal")
            ready = await others.wait([stopping, lost])
        if ready and not stopping.is_set():  # else a signal came while taking the Lease
            elector.resume_writes()
            try:
                await operate(fence, lost)  # kopf stops on SIGTERM (its own handler) or `lost`
            finally:
                _on_signals(stopping.set)  # kopf's handlers would answer a 2nd signal with errors
        return EXIT_LOST if lost.is_set() else 0
    finally:
        if keeper is not None:
            drained = lost.is_set() or await elector.step_down(writes_timeout(settings))
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            if drained and not lost.is_set():
                await elector.release()
        await kube.aclose()
