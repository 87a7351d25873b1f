"""The daemon loops on a fake clock: back-off, jitter, manual vs auto sync, kicks, deletion."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import REGISTRY

from infisical_sync import metrics
from infisical_sync.connection import Outcome
from infisical_sync.kube import KubeUnavailable
from infisical_sync.runtime import Kicks
from infisical_sync.scheduler import (
    FINALIZER_GRACE,
    HELD_RELEASE_DELAY,
    RUNNING_AFTER,
    STARTUP_HOLD,
    Observed,
    RetryLater,
    Scheduler,
    connections_used,
    deletion_action,
    kept_body,
    kick_reason,
    observe,
)
from infisical_sync.shards import Shard, slot_of
from infisical_sync.sync import SYNC_REQUESTED_AT, CycleResult, SyncFailed

SYNC = ("SecretSync", "ns", "sync")
RUNNING = {"syncStatus": "Running"}
CONNECTION = ("InfisicalConnection", "ns", "conn")


@dataclass
class FakeTimer:
    wake: asyncio.Future[None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True
        self.wake.cancel()


class FakeClock:
    """Sleeps end only when the test advances time; `uniform` picks a fixed point of its range
    (0.5: the middle, i.e. no jitter)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.draws: list[tuple[float, float]] = []
        self.drawn: list[float] = []
        self.point = 0.5
        self.rng: random.Random | None = None  # when set, draws are random (seeded) instead
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        wake = asyncio.get_running_loop().create_future()
        entry = (self.now + seconds, wake)
        self._sleepers.append(entry)
        try:
            await wake
        finally:
            self._sleepers.remove(entry)

    def call_later(self, seconds: float, callback: Callable[[], object]) -> FakeTimer:
        self.sleeps.append(seconds)
        wake = asyncio.get_running_loop().create_future()
        entry = (self.now + seconds, wake)
        self._sleepers.append(entry)
        timer = FakeTimer(wake)

        def woken(_: asyncio.Future[None]) -> None:
            self._sleepers.remove(entry)
            if not timer.cancelled:  # as the loop's: a timer cancelled before it ran never runs
                callback()

        wake.add_done_callback(woken)
        return timer

    def monotonic(self) -> float:
        return self.now

    def uniform(self, low: float, high: float) -> float:
        self.draws.append((low, high))
        value = self.rng.uniform(low, high) if self.rng else low + (high - low) * self.point
        self.drawn.append(value)
        return value

    @property
    def pending(self) -> int:
        """Sleeps still waiting for the clock."""
        return sum(1 for _, wake in self._sleepers if not wake.done())

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for deadline, wake in self._sleepers:
            if deadline <= self.now and not wake.done():
                wake.set_result(None)


async def until(predicate: Callable[[], bool]) -> None:
    """Let the loops run until `predicate` holds (they only ever wait on the fake clock)."""
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("the loop never got there")


def ok(**status: Any) -> CycleResult:
    return CycleResult({"syncStatus": "Succeeded", **status}, ok=True)


def failed(retry_after: float | None = None, *, retryable: bool = True) -> CycleResult:
    return CycleResult(
        {"syncStatus": "Failed"}, ok=False, retryable=retryable, retry_after=retry_after
    )


@dataclass
class FakeEngine:
    results: list[CycleResult | Exception] = field(default_factory=list)
    runs: list[Mapping[str, Any] | None] = field(default_factory=list)
    removals: list[str] = field(default_factory=list)
    releases: list[str] = field(default_factory=list)
    removal_bodies: list[Mapping[str, Any]] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)
    removal_error: SyncFailed | None = None
    let_go: list[str] = field(default_factory=list)  # ledger ConfigMaps let go
    writing: bool = False  # whether cycles write (and so call on_writing before their writes)
    # A cycle's writes last until this is set; None: a moment (a step of the loop, no time).
    writes_done: asyncio.Event | None = None
    returned: int = 0  # runs that returned or raised

    async def run(
        self,
        namespace: str,
        name: str,
        body: Mapping[str, Any],
        previous_status: Mapping[str, Any] | None = None,
        on_writing: Callable[[], Awaitable[None]] | None = None,
    ) -> CycleResult:
        self.runs.append(previous_status)
        try:
            if self.writing and on_writing is not None:
                await on_writing()
                if self.writes_done is not None:
                    await self.writes_done.wait()
                else:
                    await asyncio.sleep(0)
            result = self.results.pop(0) if self.results else ok()
            if isinstance(result, Exception):
                raise result
            return result
        finally:
            self.returned += 1

    async def remove_owned(self, namespace: str, name: str, body: Mapping[str, Any]) -> int:
        if self.removal_error is not None:
            raise self.removal_error
        self.removals.append(name)
        self.removal_bodies.append(body)
        return 1

    async def release_owned(self, namespace: str, name: str, body: Mapping[str, Any]) -> int:
        if self.removal_error is not None:
            raise self.removal_error
        self.releases.append(name)
        return 1

    async def let_go_of_ledger(self, namespace: str, name: str, uid: str) -> None:
        self.let_go.append(name)

    def forget(self, namespace: str, name: str) -> None:
        self.forgotten.append(name)

    def readers_of(self, namespace: str, secret: str) -> set[str]:
        return {"reader"} if secret == "read-before" else set()


@dataclass
class FakeConnections:
    outcomes: list[Outcome | Exception] = field(default_factory=list)
    logins: list[bool] = field(default_factory=list)
    notify: bool = False
    forgotten: list[str] = field(default_factory=list)
    answered: asyncio.Event | None = None  # validations end once it is set (None: at once)

    async def reconcile(
        self, namespace: str, name: str, body: Mapping[str, Any], *, force_login: bool
    ) -> tuple[Outcome, bool]:
        self.logins.append(force_login)
        if self.answered is not None:
            await self.answered.wait()
        outcome = self.outcomes.pop(0) if self.outcomes else Outcome(True, "Validated", "ok")
        if isinstance(outcome, Exception):
            raise outcome
        return outcome, self.notify

    async def forget(self, namespace: str, name: str) -> None:
        self.forgotten.append(name)


@dataclass
class FakeStatus:
    patches: list[dict[str, Any]] = field(default_factory=list)  # as sent, answered or not
    # A Running patch is answered once this is set (None: at once), with this error if any.
    running_answered: asyncio.Event | None = None
    running_error: Exception | None = None
    unanswered: int = 0
    overlapping: list[dict[str, Any]] = field(default_factory=list)  # sent while one was open

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: dict[str, Any]
    ) -> bool:
        self.patches.append(status)
        if self.unanswered:
            self.overlapping.append(status)
        self.unanswered += 1
        try:
            if status == RUNNING:
                if self.running_answered is not None:
                    await self.running_answered.wait()
                if self.running_error is not None:
                    raise self.running_error
            return True
        finally:
            self.unanswered -= 1


@dataclass
class Harness:
    clock: FakeClock
    engine: FakeEngine
    connections: FakeConnections
    status: FakeStatus
    scheduler: Scheduler
    stopped: asyncio.Event = field(default_factory=asyncio.Event)  # kopf's `stopped`
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def sync(self, name: str, body: dict[str, Any]) -> None:
        """A SecretSync seen for the first time (kopf's listing, or its creation)."""
        self.scheduler.on_secretsync_event("ADDED", "ns", name, body)

    def start(self, loop: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(loop)
        self.tasks.append(task)
        return task

    async def sleeping(self, count: int) -> float:
        """Until the loops have begun `count` pauses in all; the duration of the last one."""
        await until(lambda: len(self.clock.sleeps) >= count)
        return self.clock.sleeps[count - 1]


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    clock, engine, connections, status = FakeClock(), FakeEngine(), FakeConnections(), FakeStatus()
    scheduler = Scheduler(engine=engine, connections=connections, status=status, clock=clock)
    harness = Harness(clock, engine, connections, status, scheduler)
    yield harness
    await scheduler.shutdown(0)
    for task in harness.tasks:
        task.cancel()
    await asyncio.gather(*harness.tasks, return_exceptions=True)


FINALIZER = Shard().finalizer


def sync_body(**spec: Any) -> dict[str, Any]:
    """As the scheduler first sees it: kopf has added its finalizer."""
    return {
        "metadata": {"generation": 1, "finalizers": [FINALIZER]},
        "spec": {"syncInterval": "60s", **spec},
        "status": {},
    }


# --- SecretSync -----------------------------------------------------------------------------


async def test_failures_back_off_from_five_seconds_up_to_the_interval(harness: Harness) -> None:
    harness.engine.results = [failed(), failed(), failed(), failed(), failed()]
    harness.sync("sync", sync_body())
    delays = []
    for count in range(1, 7):
        delays.append(await harness.sleeping(count))
        harness.clock.advance(delays[-1])
    assert delays == [5, 10, 20, 40, 60, 60]  # the sixth follows a success
    assert len(harness.engine.runs) == 6


async def test_waiting_secretsyncs_hold_no_task_and_wake_on_each_cause(
    harness: Harness,
) -> None:
    """10,000 SecretSyncs spend their life between cycles: that must not cost a task each."""
    before = len(asyncio.all_tasks())
    for index in range(100):
        harness.sync(f"other-{index}", sync_body())
    harness.sync("sync", sync_body())
    await harness.sleeping(101)
    await until(lambda: len(asyncio.all_tasks()) == before + 1)  # the dispatcher, for all
    assert len(harness.engine.runs) == 101 and harness.clock.pending == 101  # a timer each
    harness.clock.advance(60)  # the timers
    await harness.sleeping(202)
    assert len(harness.engine.runs) == 202
    harness.scheduler.kick(SYNC, "secret s modified")  # a kick
    await harness.sleeping(203)
    assert len(harness.engine.runs) == 203
    await until(lambda: len(asyncio.all_tasks()) == before + 1)  # its cycle's task ended
    harness.scheduler.stop_secretsync("ns", "sync")  # deleted
    assert SYNC not in harness.scheduler.syncs and harness.clock.pending == 100  # its timer went
    await harness.scheduler.shutdown(0)  # the operator exits
    assert harness.clock.pending == 0 and harness.scheduler.syncs == {}
    await until(lambda: len(asyncio.all_tasks()) == before)
    assert len(harness.engine.runs) == 203


async def test_retry_after_and_permanent_failures(harness: Harness) -> None:
    harness.engine.results = [failed(retry_after=45), failed(retryable=False)]
    harness.sync("sync", sync_body())
    assert await harness.sleeping(1) == 45  # never before the instance's Retry-After
    harness.clock.advance(45)
    assert await harness.sleeping(2) == 60  # retrying cannot help: the next interval


async def test_an_unexpected_error_is_retried_like_a_failure(harness: Harness) -> None:
    harness.engine.results = [RuntimeError("boom")]
    harness.sync("sync", sync_body())
    assert await harness.sleeping(1) == 5
    assert harness.status.patches == []


async def test_every_pause_is_jittered_by_ten_percent(harness: Harness) -> None:
    harness.clock.point = 0.0  # the low end of every draw
    harness.sync("sync", sync_body())
    assert await harness.sleeping(1) == pytest.approx(54)
    assert harness.clock.draws == [(-6, 6)]


async def test_a_restart_spreads_the_first_run_of_synced_objects(harness: Harness) -> None:
    body = sync_body(syncInterval="1h")
    body["status"] = {"lastSyncedAt": "2026-01-01T00:00:00Z", "observedGeneration": 1}
    harness.sync("sync", body)
    assert await harness.sleeping(1) == 15  # uniform(0, 30): at most 30 s, whatever the interval
    assert harness.clock.draws == [(0.0, 30.0)] and harness.engine.runs == []
    harness.clock.advance(15)
    await until(lambda: len(harness.engine.runs) == 1)


async def test_a_change_during_the_restart_spread_ends_it(harness: Harness) -> None:
    harness.sync("sync", synced_body())
    assert await harness.sleeping(1) == 15 and harness.engine.runs == []
    harness.scheduler.kick(SYNC, "secret app modified")
    await harness.sleeping(2)
    assert len(harness.engine.runs) == 1 and harness.clock.now == 0
    assert harness.clock.pending == 1  # the spread's timer went with it


def test_what_is_kept_of_a_body_between_cycles() -> None:
    body = {
        "apiVersion": "infisical-sync.dev/v1alpha1",
        "metadata": {
            "name": "sync",
            "namespace": "ns",
            "uid": "u-1",
            "generation": 3,
            "labels": {"team": "a"},
            "finalizers": ["f"],
            "managedFields": [{"manager": "kubectl"}],
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": "{...the whole object...}",
                "infisical-sync.dev/last-handled-configuration": "{...its spec...}",
                SYNC_REQUESTED_AT: "r1",
            },
        },
        "spec": {"syncInterval": "60s"},
        "status": {"syncStatus": "Succeeded"},
    }
    kept = kept_body(body)
    assert kept == {
        "apiVersion": "infisical-sync.dev/v1alpha1",
        "kind": "SecretSync",  # a LIST item has none: the Events a cycle posts need it
        "metadata": {
            "name": "sync",
            "namespace": "ns",
            "uid": "u-1",
            "generation": 3,
            "annotations": {SYNC_REQUESTED_AT: "r1"},
        },
        "spec": {"syncInterval": "60s"},
        "status": {"syncStatus": "Succeeded"},
    }
    assert "status" not in kept_body(body, with_status=False)
    assert observe(kept) == observe(body)


async def test_once_a_cycle_wrote_its_status_the_body_kept_has_none(harness: Harness) -> None:
    harness.engine.results = [ok(managedKeys=["A"])]
    body = sync_body()
    body["status"] = {"syncStatus": "Failed", "managedKeys": ["A"]}
    harness.sync("sync", body)
    assert "status" in harness.scheduler.syncs[SYNC].body
    await harness.sleeping(1)
    assert "status" not in harness.scheduler.syncs[SYNC].body  # the written one is the truth
    echo = sync_body()
    echo["status"] = {"syncStatus": "Succeeded", "managedKeys": ["A"]}
    harness.scheduler.on_secretsync_event("MODIFIED", "ns", "sync", echo)  # the patch's echo
    assert "status" not in harness.scheduler.syncs[SYNC].body


async def test_an_unsynced_object_runs_at_once(harness: Harness) -> None:
    body = sync_body()
    body["status"] = {"lastSyncedAt": "2026-01-01T00:00:00Z", "observedGeneration": 0}
    harness.sync("sync", body)
    await harness.sleeping(1)
    assert len(harness.engine.runs) == 1


def synced_body(**spec: Any) -> dict[str, Any]:
    """A SecretSync that was in sync when the operator stopped."""
    body = sync_body(**spec)
    body["status"] = {"lastSyncedAt": "2026-01-01T00:00:00Z", "observedGeneration": 1}
    return body


def runs_by_name(
    harness: Harness, results: Mapping[str, list[CycleResult]]
) -> dict[str, list[float]]:
    """Each SecretSync's runs (the fake time of each), with its own results (then ok())."""
    runs: dict[str, list[float]] = {}
    pending = {name: list(items) for name, items in results.items()}

    async def run(namespace: str, name: str, *_: Any, **__: Any) -> CycleResult:
        runs.setdefault(name, []).append(harness.clock.now)
        queue = pending.get(name) or []
        return queue.pop(0) if queue else ok()

    harness.engine.run = run  # type: ignore[method-assign]
    return runs


async def test_a_restart_spreads_1000_synced_objects_although_their_connection_becomes_ready(
    harness: Harness,
) -> None:
    harness.clock.rng = random.Random(10)
    harness.connections.notify = True  # the first validation after a start: Ready
    names = [f"sync-{i}" for i in range(1000)]
    runs = runs_by_name(harness, {})
    for name in names:
        harness.sync(name, synced_body())
    harness.start(
        harness.scheduler.run_connection(
            "ns",
            "conn",
            connection_body(),
            harness.stopped,
            dependents=lambda: [("ns", name) for name in names],
        )
    )
    await harness.sleeping(1001)  # every spread, and the connection validated (then paused)
    assert harness.connections.logins == [True]
    spreads = [
        v for v, r in zip(harness.clock.drawn, harness.clock.draws, strict=True) if r == (0.0, 30.0)
    ]
    assert len(spreads) == 1000
    step = 0.5
    for _ in range(62):  # each run happens when its own spread is over, none before
        await until(lambda: len(runs) == sum(1 for s in spreads if s <= harness.clock.now))
        harness.clock.advance(step)
    first_runs = sorted(times[0] for times in runs.values())
    expected = sorted(step * -(-spread // step) for spread in spreads)  # the step it fell in
    assert first_runs == pytest.approx(expected)
    assert max(first_runs) > 25 and sum(1 for t in first_runs if t <= step) < 50


async def test_the_restart_spread_counts_from_the_start_not_from_first_sight(
    harness: Harness,
) -> None:
    """kopf hands over thousands of objects over seconds: one first seen 20 s after the start
    runs within the same 30 s window as the rest (at once when its turn is already past), not
    up to 30 s after its sight."""
    harness.clock.rng = random.Random(7)
    runs = runs_by_name(harness, {})
    seen_at: dict[str, float] = {}
    step = 0.5
    while harness.clock.now < 52:  # long enough for a spread counted from a sight at 20 s
        if harness.clock.now in (0, 5, 10, 15, 20):  # 40 objects every 5 s
            for index in range(40):
                name = f"sync-{harness.clock.now:g}-{index}"
                seen_at[name] = harness.clock.now
                harness.sync(name, synced_body())
        for _ in range(50):  # let the dispatcher start what is due
            await asyncio.sleep(0)
        harness.clock.advance(step)
    await until(lambda: len(runs) == 200)
    draws = [
        v for v, r in zip(harness.clock.drawn, harness.clock.draws, strict=True) if r == (0.0, 30.0)
    ]
    turn = dict(zip(seen_at, draws, strict=True))  # each object's draw, in order of sight
    first = {name: times[0] for name, times in runs.items()}
    assert max(first.values()) <= 30 + 2 * step  # one window, from the start
    # Each at its own turn, or at sight when that was later: never before, nor held back.
    for name, ran in first.items():
        assert max(seen_at[name], turn[name]) <= ran <= max(seen_at[name], turn[name]) + step
    late = [name for name in first if seen_at[name] == 20]
    assert any(turn[name] < 20 for name in late) and any(turn[name] > 20 for name in late)


async def test_a_connection_becoming_ready_kicks_only_the_objects_waiting_for_it(
    harness: Harness,
) -> None:
    not_ready = CycleResult({"syncStatus": "Failed"}, ok=False, retryable=True)
    runs = runs_by_name(harness, {"new": [not_ready], "changed": [not_ready]})
    changed = synced_body()
    changed["metadata"]["generation"] = 2  # its spec changed while the operator was down
    bodies = {
        "new": sync_body(),
        "changed": changed,
        "steady": sync_body(),
        "synced": synced_body(),
    }
    for name, body in bodies.items():
        harness.sync(name, body)
    await harness.sleeping(4)
    assert sorted(runs) == ["changed", "new", "steady"]  # the synced one waits out its spread
    harness.connections.notify = True
    harness.start(
        harness.scheduler.run_connection(
            "ns",
            "conn",
            connection_body(),
            harness.stopped,
            dependents=lambda: [("ns", n) for n in ("synced", "steady", "new", "changed")],
        )
    )
    await until(lambda: len(runs["new"]) == 2 and len(runs["changed"]) == 2)
    await harness.sleeping(7)  # both went back to their pauses, as did the connection
    assert len(runs["steady"]) == 1 and "synced" not in runs
    assert harness.scheduler.awaiting_ready == set()  # all got through


async def test_a_connection_ready_during_a_cycle_is_not_passed_by(harness: Harness) -> None:
    """Ready can be announced while a cycle runs (e.g. the one that fails ConnectionNotReady):
    the SecretSync counts as waiting for it all along, so that kick is not lost."""
    seen: list[bool] = []
    run = harness.engine.run

    async def watched_run(*args: Any, **kwargs: Any) -> CycleResult:
        seen.append(SYNC in harness.scheduler.awaiting_ready)
        return await run(*args, **kwargs)

    harness.engine.run = watched_run  # type: ignore[method-assign]
    harness.engine.results = [ok(), CycleResult({"syncStatus": "Failed"}, ok=False)]
    harness.sync("sync", sync_body())
    harness.clock.advance(await harness.sleeping(1))
    await harness.sleeping(2)
    assert seen == [True, True]  # also during the cycle after a success
    assert SYNC in harness.scheduler.awaiting_ready  # it failed: still waiting


async def test_a_kick_wakes_the_loop_before_its_interval(harness: Harness) -> None:
    harness.sync("sync", sync_body())
    await harness.sleeping(1)
    harness.scheduler.kick(SYNC, "secret app modified")
    await harness.sleeping(2)
    assert len(harness.engine.runs) == 2 and harness.clock.now == 0


async def test_the_status_last_written_is_passed_to_the_next_cycle(harness: Harness) -> None:
    harness.engine.results = [ok(managedKeys=["A"]), ok()]
    harness.sync("sync", sync_body())
    harness.clock.advance(await harness.sleeping(1))
    await harness.sleeping(2)
    assert harness.engine.runs[0] is None
    assert harness.engine.runs[1] == {"syncStatus": "Succeeded", "managedKeys": ["A"]}
    assert harness.status.patches == [{"syncStatus": "Succeeded", "managedKeys": ["A"]}]


# --- quiet status (issue 10) --------------------------------------------------------------------


async def cycles(harness: Harness, body: dict[str, Any], count: int) -> None:
    """A first sight, and `count` timer cycles."""
    harness.sync("sync", body)
    for number in range(1, count + 1):
        delay = await harness.sleeping(number)
        if number < count:
            harness.clock.advance(delay)
    assert len(harness.engine.runs) == count


async def test_a_cycle_with_the_same_outcome_writes_no_status(harness: Harness) -> None:
    harness.engine.results = [ok(managedKeys=["A"]), ok(managedKeys=["A"]), ok(managedKeys=["B"])]
    await cycles(harness, sync_body(), 3)
    assert harness.status.patches == [
        {"syncStatus": "Succeeded", "managedKeys": ["A"]},
        {"managedKeys": ["B"]},  # only what changed
    ]


async def test_after_a_cycle_that_may_have_written_no_304_can_end_the_next(
    harness: Harness,
) -> None:
    """A failed cycle leaves the stored status unknown: the next gets no status.lastRead, so
    neither its quiet probe nor a resume can end it at a 304 before its status is written."""
    read = {"etag": "e1", "inputs": "i1"}
    harness.engine.results = [
        ok(lastRead=read),
        KubeUnavailable("the Kubernetes API server did not answer"),
        ok(lastRead=read),
    ]
    await cycles(harness, sync_body(), 3)
    assert (harness.engine.runs[1] or {}).get("lastRead") == read
    assert "lastRead" not in (harness.engine.runs[2] or {})
    assert harness.status.patches[-1] == {"syncStatus": "Succeeded", "lastRead": read}  # whole


async def test_a_restart_that_finds_the_status_as_it_was_writes_nothing(harness: Harness) -> None:
    body = sync_body()
    body["status"] = {"syncStatus": "Succeeded", "managedKeys": ["A"], "observedGeneration": 1}
    harness.engine.results = [ok(managedKeys=["A"], lastSyncAttemptAt=None)]
    await cycles(harness, body, 1)
    assert harness.status.patches == []


# --- syncStatus Running only for slow writes (issue 10) -------------------------------------------


def running_marks() -> list[asyncio.Task[Any]]:
    """The tasks that post a cycle's Running mark and are still there."""
    return [task for task in asyncio.all_tasks() if task.get_name().startswith("running mark")]


def synced_status() -> dict[str, Any]:
    return {"syncStatus": "Succeeded", "managedKeys": ["A"]}


async def slow_writes(harness: Harness, body: dict[str, Any] | None = None) -> asyncio.Task[None]:
    """A SecretSync whose first cycle writes until `harness.engine.writes_done` is set; the
    Running delay passes while it does. Returns that cycle's task."""
    harness.engine.writing = True
    harness.engine.writes_done = asyncio.Event()
    harness.sync("sync", body or sync_body())
    await until(lambda: harness.clock.pending == 1)  # the cycle's Running delay, nothing else
    assert harness.status.patches == []  # not before the delay
    harness.clock.advance(RUNNING_AFTER)
    await until(lambda: len(harness.status.patches) == 1)
    assert harness.status.patches == [RUNNING] and harness.engine.returned == 0  # while writing
    cycle = harness.scheduler.syncs[SYNC].cycle
    assert cycle is not None
    return cycle


async def test_a_quick_writing_cycle_writes_no_running(harness: Harness) -> None:
    harness.engine.writing = True
    body = sync_body()
    body["status"] = synced_status()
    harness.engine.results = [ok(managedKeys=["A"]), ok(managedKeys=["B"])]
    harness.sync("sync", body)
    assert await harness.sleeping(2) == 60  # the cycle's Running delay, then the loop's pause
    assert harness.clock.sleeps[0] == RUNNING_AFTER
    assert harness.status.patches == []  # same outcome as stored: no write at all
    harness.clock.advance(60)
    await harness.sleeping(4)
    assert harness.status.patches == [{"managedKeys": ["B"]}]  # only what changed
    assert harness.clock.pending == 1 and running_marks() == []  # the delays went with the cycles


async def test_a_slow_writing_cycle_writes_running_then_its_outcome(harness: Harness) -> None:
    body = sync_body()
    body["status"] = synced_status()
    harness.engine.results = [ok(managedKeys=["A"])]
    await slow_writes(harness, body)
    assert harness.engine.writes_done is not None
    harness.engine.writes_done.set()
    assert await harness.sleeping(2) == 60
    # Running is stored now: the outcome puts syncStatus back, and only that.
    assert harness.status.patches == [RUNNING, {"syncStatus": "Succeeded"}]
    assert harness.status.overlapping == [] and running_marks() == []
    harness.engine.writes_done = None  # the next cycle writes quickly: no Running
    harness.clock.advance(60)
    await harness.sleeping(4)
    assert harness.status.patches == [RUNNING, {"syncStatus": "Succeeded"}]


async def test_after_running_the_engine_raising_leaves_it_to_the_next_cycle(
    harness: Harness,
) -> None:
    """The stored status is not known after a failed cycle (a patch that timed out may have
    been applied): the next cycle writes its whole status, Running or not."""
    body = sync_body()
    body["status"] = synced_status()
    harness.engine.results = [RuntimeError("boom"), ok(managedKeys=["A"])]
    await slow_writes(harness, body)
    assert harness.engine.writes_done is not None
    harness.engine.writes_done.set()
    assert await harness.sleeping(2) == 5  # a failure's back-off
    assert harness.status.patches == [RUNNING] and running_marks() == []
    harness.engine.writing = False
    harness.clock.advance(5)
    await harness.sleeping(3)
    assert harness.status.patches == [RUNNING, synced_status()]  # all of it, not a diff


async def test_the_outcome_waits_for_a_running_patch_still_in_flight(harness: Harness) -> None:
    harness.status.running_answered = asyncio.Event()
    body = sync_body()
    body["status"] = synced_status()
    await slow_writes(harness, body)
    assert harness.engine.writes_done is not None
    harness.engine.writes_done.set()
    await until(lambda: harness.engine.returned == 1)  # the writes ended; Running is unanswered
    assert harness.status.patches == [RUNNING]
    harness.status.running_answered.set()
    assert await harness.sleeping(2) == 60
    assert harness.status.patches == [RUNNING, {"syncStatus": "Succeeded"}]
    assert harness.status.overlapping == [] and running_marks() == []


async def test_the_engine_raising_waits_for_a_running_patch_still_in_flight(
    harness: Harness,
) -> None:
    harness.status.running_answered = asyncio.Event()
    harness.engine.results = [RuntimeError("boom")]
    await slow_writes(harness)
    assert harness.engine.writes_done is not None
    harness.engine.writes_done.set()
    await until(lambda: harness.engine.returned == 1)
    assert len(running_marks()) == 1  # not left behind: the cycle waits for it
    harness.status.running_answered.set()
    assert await harness.sleeping(2) == 5
    assert harness.status.patches == [RUNNING] and running_marks() == []


@pytest.mark.parametrize(
    "problem", [KubeUnavailable("the Kubernetes API server did not answer"), RuntimeError("x")]
)
async def test_a_failed_running_patch_makes_the_outcome_write_its_sync_status(
    harness: Harness, problem: Exception
) -> None:
    """It may have been applied (a timeout) or not: syncStatus is written whatever was stored,
    and the writes go on."""
    harness.status.running_error = problem
    body = sync_body()
    body["status"] = synced_status()
    harness.engine.results = [ok(managedKeys=["A"]), ok(managedKeys=["A"])]
    await slow_writes(harness, body)
    assert harness.engine.writes_done is not None
    harness.engine.writes_done.set()
    assert await harness.sleeping(2) == 60  # the cycle succeeded: no back-off
    assert harness.status.patches == [RUNNING, {"syncStatus": "Succeeded"}]
    assert harness.scheduler.written[SYNC] == synced_status()
    harness.engine.writing = False
    harness.clock.advance(60)
    await harness.sleeping(3)
    assert len(harness.status.patches) == 2  # and the bookkeeping is right again


async def test_stopping_during_slow_writes_finishes_the_cycle_in_order(harness: Harness) -> None:
    task = await slow_writes(harness)
    harness.scheduler.stop_secretsync("ns", "sync")  # deleted
    assert harness.engine.writes_done is not None
    harness.engine.writes_done.set()
    await until(task.done)
    assert task.result() is None and SYNC not in harness.scheduler.syncs
    assert harness.status.patches == [RUNNING, {"syncStatus": "Succeeded"}]
    assert running_marks() == [] and harness.clock.pending == 0


@pytest.mark.parametrize("posting", [False, True])
async def test_a_cancelled_cycle_leaves_no_running_mark_behind(
    harness: Harness, posting: bool
) -> None:
    """The operator exiting cancels a cycle still busy after the grace it gives."""
    harness.engine.writing = True
    harness.engine.writes_done = asyncio.Event()
    harness.status.running_answered = asyncio.Event()  # never answered
    harness.sync("sync", sync_body())
    await until(lambda: harness.clock.pending == 1)
    if posting:
        harness.clock.advance(RUNNING_AFTER)
        await until(lambda: harness.status.unanswered == 1)
    assert len(running_marks()) == 1
    task = harness.scheduler.syncs[SYNC].cycle
    assert task is not None
    await harness.scheduler.shutdown(0)
    assert task.cancelled() and harness.scheduler.syncs == {}
    harness.sync("late", sync_body())  # an event handled after the stop starts nothing
    assert harness.scheduler.syncs == {}
    assert running_marks() == [] and harness.clock.pending == 0
    assert harness.status.patches == ([RUNNING] if posting else [])


async def test_a_sync_request_is_acknowledged_in_status_once(harness: Harness) -> None:
    body = sync_body()
    body["metadata"]["annotations"] = {SYNC_REQUESTED_AT: "r1"}
    harness.scheduler.on_secretsync_event("ADDED", "ns", "sync", body)
    await cycles(harness, body, 2)
    assert harness.status.patches == [{"syncStatus": "Succeeded", "lastHandledRequest": "r1"}]
    body["metadata"]["annotations"] = {SYNC_REQUESTED_AT: "r2"}  # kopf's body is live
    harness.scheduler.on_secretsync_event("MODIFIED", "ns", "sync", body)
    await harness.sleeping(3)
    assert harness.status.patches[1:] == [{"lastHandledRequest": "r2"}]


def sample(metric: str, kind: str, name: str) -> float | None:
    labels = {"kind": kind, "namespace": "ns", "name": name}
    return REGISTRY.get_sample_value(metric, labels)


LAST_CYCLE = "infisical_sync_last_cycle_timestamp_seconds"
LAST_SUCCESS = "infisical_sync_last_success_timestamp_seconds"


async def test_every_cycle_shows_in_the_metrics_until_the_object_goes(harness: Harness) -> None:
    synced = [{"type": "Synced", "status": "True"}]
    harness.engine.results = [ok(conditions=synced), failed()]
    await cycles(harness, sync_body(), 1)
    first_cycle = sample(LAST_CYCLE, "SecretSync", "sync")
    succeeded = sample(LAST_SUCCESS, "SecretSync", "sync")
    assert first_cycle is not None and succeeded is not None
    # Marked, so that the failing cycle is seen to write it (wall time may not move between).
    metrics.LAST_CYCLE.labels("SecretSync", "ns", "sync").set(0)
    harness.clock.advance(await harness.sleeping(1))
    await harness.sleeping(2)
    assert sample(LAST_SUCCESS, "SecretSync", "sync") == succeeded  # a failure is no success
    assert (sample(LAST_CYCLE, "SecretSync", "sync") or 0) >= first_cycle > 0
    harness.scheduler.on_secretsync_event("DELETED", "ns", "sync", sync_body())  # its series go
    assert sample(LAST_CYCLE, "SecretSync", "sync") is None
    assert sample(LAST_SUCCESS, "SecretSync", "sync") is None


async def test_a_cycle_that_leaves_a_synced_status_as_it_was_is_a_success(
    harness: Harness,
) -> None:
    body = sync_body()
    body["status"] = {
        "syncStatus": "Succeeded",
        "conditions": [{"type": "Synced", "status": "True"}],
    }
    harness.engine.results = [CycleResult({}, ok=True)]  # e.g. resumed: the outcome is the last one
    await cycles(harness, body, 1)
    assert harness.status.patches == []
    assert sample(LAST_SUCCESS, "SecretSync", "sync") is not None


async def test_every_validation_shows_in_the_metrics_until_the_connection_goes(
    harness: Harness,
) -> None:
    harness.connections.outcomes = [Outcome(True, "Validated", "ok"), Outcome(False, "Down", "x")]
    task = harness.start(
        harness.scheduler.run_connection("ns", "conn", {}, harness.stopped, dependents=list)
    )
    harness.clock.advance(await harness.sleeping(1))
    succeeded = sample(LAST_SUCCESS, "InfisicalConnection", "conn")
    assert succeeded is not None
    await harness.sleeping(2)
    assert len(harness.connections.logins) == 2
    assert sample(LAST_CYCLE, "InfisicalConnection", "conn") is not None
    assert sample(LAST_SUCCESS, "InfisicalConnection", "conn") == succeeded
    harness.stopped.set()
    await task
    assert sample(LAST_CYCLE, "InfisicalConnection", "conn") is None
    assert sample(LAST_SUCCESS, "InfisicalConnection", "conn") is None


READY = "infisical_sync_ready"


def reason_of(kind: str, name: str) -> list[str]:
    """The reasons this object is labelled not Ready with (one at most)."""
    return [
        found.labels["reason"]
        for family in REGISTRY.collect()
        if family.name == "infisical_sync_not_ready_reason"
        for found in family.samples
        if found.labels["kind"] == kind
        and found.labels["namespace"] == "ns"
        and found.labels["name"] == name
    ]


def held_deletes(name: str) -> float | None:
    return REGISTRY.get_sample_value(
        "infisical_sync_held_deletes", {"namespace": "ns", "name": name}
    )


def ready(reason: str, *, status: str = "True") -> list[dict[str, str]]:
    return [{"type": "Ready", "status": status, "reason": reason}]


async def test_readiness_follows_the_status_each_cycle_leaves_until_the_object_goes(
    harness: Harness,
) -> None:
    harness.engine.results = [
        ok(conditions=ready("Synced")),
        ok(
            conditions=ready("DeletionHeld", status="False"),
            heldDeletes={"keys": ["B"], "reason": "mass delete"},
            keyCounts={"held": 3},
        ),
        KubeUnavailable("the Kubernetes API server did not answer"),
        ok(conditions=ready("Synced"), heldDeletes=None),
    ]
    await cycles(harness, sync_body(), 1)
    assert sample(READY, "SecretSync", "sync") == 1
    assert reason_of("SecretSync", "sync") == [] and held_deletes("sync") is None
    harness.clock.advance(await harness.sleeping(1))
    await harness.sleeping(2)
    assert sample(READY, "SecretSync", "sync") == 0
    assert reason_of("SecretSync", "sync") == ["DeletionHeld"]
    assert held_deletes("sync") == 3  # keyCounts, not the shown keys
    harness.clock.advance(await harness.sleeping(2))
    await harness.sleeping(3)
    # Not written: 0 whatever the stored status says; the held deletes stay as last known.
    assert sample(READY, "SecretSync", "sync") == 0
    assert reason_of("SecretSync", "sync") == [metrics.STATUS_NOT_WRITTEN]  # replaced
    assert held_deletes("sync") == 3
    harness.clock.advance(await harness.sleeping(3))
    await harness.sleeping(4)
    assert sample(READY, "SecretSync", "sync") == 1
    assert reason_of("SecretSync", "sync") == [] and held_deletes("sync") is None
    harness.engine.results = [ok(conditions=ready("Suspended", status="False"))]
    harness.clock.advance(await harness.sleeping(4))
    await harness.sleeping(5)
    assert reason_of("SecretSync", "sync") == ["Suspended"]
    harness.scheduler.on_secretsync_event("DELETED", "ns", "sync", sync_body())
    assert sample(READY, "SecretSync", "sync") is None
    assert reason_of("SecretSync", "sync") == []


async def test_readiness_is_known_from_the_stored_status_before_the_first_cycle(
    harness: Harness,
) -> None:
    body = sync_body()
    body["status"] = {
        "lastSyncedAt": "2026-01-01T00:00:00Z",
        "observedGeneration": 1,
        "conditions": ready("SourceUncertain", status="False"),
    }
    harness.sync("sync", body)  # in sync before a restart: its first cycle waits for the spread
    assert harness.engine.runs == []
    assert sample(READY, "SecretSync", "sync") == 0
    assert reason_of("SecretSync", "sync") == ["SourceUncertain"]


async def test_a_connection_readiness_is_exported_by_its_owning_shard_only(
    harness: Harness,
) -> None:
    owner = slot_of("ns", "conn", 2)
    harness.connections.outcomes = [Outcome(False, "InvalidCredentials", "no")]
    harness.scheduler.shard = Shard(1 - owner, 2)
    task = harness.start(
        harness.scheduler.run_connection("ns", "conn", {}, harness.stopped, dependents=list)
    )
    await harness.sleeping(1)
    assert sample(LAST_CYCLE, "InfisicalConnection", "conn") is not None  # it validated
    assert sample(READY, "InfisicalConnection", "conn") is None
    harness.stopped.set()
    await task

    harness.stopped.clear()
    harness.connections.outcomes = [Outcome(False, "InvalidCredentials", "no")]
    harness.scheduler.shard = Shard(owner, 2)
    task = harness.start(
        harness.scheduler.run_connection("ns", "conn", {}, harness.stopped, dependents=list)
    )
    await harness.sleeping(2)  # pauses are counted over both loops
    assert sample(READY, "InfisicalConnection", "conn") == 0
    assert reason_of("InfisicalConnection", "conn") == ["InvalidCredentials"]
    harness.stopped.set()
    await task
    assert sample(READY, "InfisicalConnection", "conn") is None
    assert reason_of("InfisicalConnection", "conn") == []


async def test_manual_sync_runs_at_start_and_on_request_only(harness: Harness) -> None:
    harness.sync("sync", sync_body(autoSyncEnabled=False))
    harness.clock.advance(await harness.sleeping(1))  # ran once: created
    harness.clock.advance(await harness.sleeping(2))  # the timer: no run
    harness.scheduler.kick(SYNC, "secret app modified")
    await harness.sleeping(3)  # a Secret change: no run
    assert len(harness.engine.runs) == 1
    harness.scheduler.kick(SYNC, "sync requested")
    await harness.sleeping(4)
    assert len(harness.engine.runs) == 2


async def test_a_manual_sync_that_could_not_run_runs_once_its_connection_is_ready(
    harness: Harness,
) -> None:
    harness.engine.results = [failed(retryable=False), ok()]
    harness.sync("sync", sync_body(autoSyncEnabled=False))
    await harness.sleeping(1)  # created: the connection was not Ready
    harness.scheduler.kick(SYNC, "connection dest ready")
    await harness.sleeping(2)
    assert len(harness.engine.runs) == 2  # the run it owed
    harness.scheduler.kick(SYNC, "connection dest ready")
    await harness.sleeping(3)
    assert len(harness.engine.runs) == 2  # nothing owed any more: manual again


async def test_auto_sync_runs_on_the_timer_and_every_kick(harness: Harness) -> None:
    harness.sync("sync", sync_body())
    harness.clock.advance(await harness.sleeping(1))
    await harness.sleeping(2)
    harness.scheduler.kick(SYNC, "secret app modified")
    await harness.sleeping(3)
    assert len(harness.engine.runs) == 3


async def test_a_kick_before_the_daemon_starts_is_not_lost() -> None:
    kicks = Kicks()
    kicks.kick(CONNECTION, "secret app modified")
    kicks.kick(CONNECTION, "spec changed", force=True)
    assert kicks.slot(CONNECTION).take() == (True, {"secret app modified", "spec changed"})
    assert kicks.slot(CONNECTION).take() == (False, {"timer"})


@pytest.mark.parametrize("change", ["MODIFIED", "DELETED"])
async def test_a_deletion_ends_a_pause_at_once(harness: Harness, change: str) -> None:
    harness.sync("sync", sync_body())
    await harness.sleeping(1)
    deleting = sync_body()
    deleting["metadata"]["deletionTimestamp"] = "2026-11-29T00:00:00Z"
    harness.scheduler.on_secretsync_event(change, "ns", "sync", deleting)
    assert SYNC not in harness.scheduler.syncs and harness.clock.pending == 0
    harness.scheduler.kick(SYNC, "secret app modified")  # too late: nothing runs
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(harness.engine.runs) == 1 and SYNC not in harness.scheduler.syncs


async def test_stopping_during_the_restart_spread_runs_nothing(harness: Harness) -> None:
    body = sync_body()
    body["status"] = {"lastSyncedAt": "2026-01-01T00:00:00Z", "observedGeneration": 1}
    harness.sync("sync", body)
    await harness.sleeping(1)
    await harness.scheduler.shutdown(20)
    harness.clock.advance(30)
    for _ in range(20):
        await asyncio.sleep(0)
    assert harness.engine.runs == [] and harness.clock.pending == 0


async def test_late_events_of_an_earlier_object_do_not_stop_a_new_one_of_its_name(
    harness: Harness,
) -> None:
    """kopf handles each uid on its own: the old object's DELETED may come after the new one's
    ADDED (kubectl replace --force)."""
    old, new = sync_body(), sync_body()
    old["metadata"]["uid"], new["metadata"]["uid"] = "old", "new"
    harness.sync("sync", new)
    await harness.sleeping(1)
    deleting = {**old, "metadata": {**old["metadata"], "deletionTimestamp": "2026-11-29T00:00Z"}}
    assert harness.scheduler.superseded("MODIFIED", "ns", "sync", deleting)
    assert harness.scheduler.superseded("DELETED", "ns", "sync", deleting)
    # Only an earlier object's last events: the new one's own are not, nor a plain change.
    assert not harness.scheduler.superseded("MODIFIED", "ns", "sync", old)
    new_deleting = {**new, "metadata": {**new["metadata"], "deletionTimestamp": "2026-11-29Z"}}
    assert not harness.scheduler.superseded("MODIFIED", "ns", "sync", new_deleting)
    assert not harness.scheduler.superseded("DELETED", "ns", "other", deleting)
    assert harness.scheduler.syncs[SYNC].body["metadata"]["uid"] == "new"
    assert harness.clock.pending == 1
    harness.scheduler.kick(SYNC, "secret app modified")
    await harness.sleeping(2)
    assert len(harness.engine.runs) == 2


async def test_late_events_of_an_earlier_object_before_the_new_ones_finalizer(
    harness: Harness,
) -> None:
    """Before kopf's finalizer is on the new object it has no timetable entry: its uid still
    tells the old object's late events apart, and its own deletion is not mistaken for one."""
    old, new = sync_body(), sync_body()
    old["metadata"]["uid"], new["metadata"]["uid"] = "old", "new"
    new["metadata"]["finalizers"] = []
    harness.scheduler.on_secretsync_event("ADDED", "ns", "sync", new)
    assert SYNC not in harness.scheduler.syncs
    assert harness.scheduler.superseded("DELETED", "ns", "sync", old)
    assert not harness.scheduler.superseded("DELETED", "ns", "sync", new)


async def test_a_cycle_that_a_removal_overtook_does_not_run(harness: Harness) -> None:
    """Between a cycle's start and its lock a removal can take the lock first: once the keys
    are removed, that cycle must not write them again."""
    body = sync_body(deletionPolicy="Delete")
    harness.scheduler.cycle_slots = 1
    harness.sync("busy", sync_body())  # holds the only cycle slot
    release = asyncio.Event()
    original = harness.engine.run

    async def held(namespace: str, name: str, *args: Any, **kwargs: Any) -> CycleResult:
        if name == "busy":
            await release.wait()
        return await original(namespace, name, *args, **kwargs)

    harness.engine.run = held  # type: ignore[method-assign]
    await until(lambda: harness.scheduler.syncs[("SecretSync", "ns", "busy")].cycle is not None)
    harness.sync("sync", body)  # due, waiting for the slot
    async with harness.scheduler.lock(SYNC):  # a removal under way holds the lock
        release.set()
        await until(lambda: harness.scheduler.syncs[SYNC].cycle is not None)  # started
        harness.scheduler.stop_secretsync("ns", "sync")
    await until(lambda: SYNC not in harness.scheduler.syncs)
    assert len(harness.engine.runs) == 1  # busy's only
    assert harness.status.patches == [{"syncStatus": "Succeeded"}]


async def test_an_object_gone_without_its_deletion_handler_leaves_nothing_behind(
    harness: Harness,
) -> None:
    """e.g. its finalizer removed by hand: no removal forgets it, its DELETED event does."""
    harness.sync("sync", sync_body())
    await harness.sleeping(1)
    assert SYNC in harness.scheduler.written and SYNC in harness.scheduler.locks
    harness.scheduler.on_secretsync_event("DELETED", "ns", "sync", sync_body())
    assert harness.scheduler.syncs == {} and harness.scheduler.written == {}
    assert harness.scheduler.locks == {} and harness.engine.forgotten == ["sync"]


async def test_a_new_object_of_a_deleted_ones_name_starts_after_its_last_cycle(
    harness: Harness,
) -> None:
    release = asyncio.Event()
    original = harness.engine.run
    names: list[object] = []

    async def slow_run(namespace: str, name: str, body: Any, *args: Any, **kwargs: Any) -> Any:
        names.append(body["metadata"].get("uid"))
        await release.wait()
        return await original(namespace, name, body, *args, **kwargs)

    harness.engine.run = slow_run  # type: ignore[method-assign]
    old, new = sync_body(), sync_body()
    old["metadata"]["uid"], new["metadata"]["uid"] = "old", "new"
    harness.sync("sync", old)
    await until(lambda: names == ["old"])
    harness.scheduler.on_secretsync_event("DELETED", "ns", "sync", old)
    harness.sync("sync", new)  # while the old one's cycle is still in flight
    for _ in range(20):
        await asyncio.sleep(0)
    assert names == ["old"]  # the lock: one cycle of that name at a time
    release.set()
    await harness.sleeping(1)
    assert (
        names == ["old", "new"] and harness.scheduler.syncs[SYNC].body["metadata"]["uid"] == "new"
    )
    assert harness.clock.pending == 1  # only the new one pauses


async def test_a_cycle_in_flight_finishes_before_the_loop_stops(harness: Harness) -> None:
    release = asyncio.Event()
    harness.engine.results = []
    original = harness.engine.run

    async def slow_run(*args: Any, **kwargs: Any) -> CycleResult:
        await release.wait()
        return await original(*args, **kwargs)

    harness.engine.run = slow_run  # type: ignore[method-assign]
    harness.sync("sync", sync_body())
    await until(lambda: SYNC in harness.scheduler.locks and harness.scheduler.locks[SYNC].locked())
    stopping = asyncio.ensure_future(harness.scheduler.shutdown(20))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not stopping.done()  # waiting for the cycle in flight
    release.set()
    await stopping
    assert len(harness.status.patches) == 1 and harness.clock.sleeps == []
    assert harness.scheduler.syncs == {}


# --- watch events -----------------------------------------------------------------------------


def annotated(generation: int, requested: str | None = None, allow: str | None = None) -> Any:
    annotations = {}
    if requested:
        annotations["infisical-sync.dev/sync-requested-at"] = requested
    if allow:
        annotations["infisical-sync.dev/allow-mass-delete"] = allow
    meta = {"generation": generation, "annotations": annotations, "finalizers": [FINALIZER]}
    return {"metadata": meta}


@pytest.mark.parametrize(
    ("before", "after", "reason"),
    [
        (None, annotated(1), None),  # first sight: the daemon's first run covers it
        (annotated(1), annotated(1), None),  # a status patch
        (annotated(1), annotated(2), "spec changed"),
        (annotated(1, "a"), annotated(1, "b"), "sync requested"),
        (annotated(1, "a"), annotated(2, "b"), "spec changed"),
        (annotated(1), annotated(1, allow="true"), "spec changed"),  # re-plan
    ],
)
def test_kick_reason(before: Any, after: Any, reason: str | None) -> None:
    seen: Observed | None = None if before is None else observe(before)
    assert kick_reason(seen, observe(after)) == reason


async def test_the_first_cycle_waits_for_kopfs_finalizer(harness: Harness) -> None:
    """kopf adds its finalizer in answer to the first event, with a patch conditional on that
    resourceVersion: a status write before it would make it fail (a conflict), and keys written
    before it would outlive a deletion."""
    bare = sync_body(syncInterval="300s")  # no timer of its own within the grace
    bare["metadata"]["finalizers"] = ["someone-else/finalizer"]
    harness.scheduler.on_secretsync_event("ADDED", "ns", "sync", bare)
    for _ in range(20):
        await asyncio.sleep(0)
    assert harness.engine.runs == [] and SYNC not in harness.scheduler.syncs
    harness.scheduler.kick(SYNC, "secret app modified")  # nothing to kick yet
    harness.scheduler.on_secretsync_event("MODIFIED", "ns", "sync", sync_body(syncInterval="300s"))
    await harness.sleeping(2)  # the grace timer (now cancelled), then its pause after the cycle
    assert len(harness.engine.runs) == 1 and harness.clock.pending == 1
    harness.clock.advance(FINALIZER_GRACE)  # the cancelled grace timer starts nothing
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(harness.engine.runs) == 1


async def test_without_its_finalizer_a_secretsync_syncs_after_a_grace_with_a_warning(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """kopf's patch may never get through (a webhook refusing it): waiting in silence forever
    would be worse than syncing without it."""
    bare = sync_body()
    bare["metadata"]["finalizers"] = []
    harness.scheduler.on_secretsync_event("ADDED", "ns", "sync", bare)
    harness.scheduler.on_secretsync_event("MODIFIED", "ns", "sync", {**bare, "spec": {"x": 1}})
    await harness.sleeping(1)
    assert harness.engine.runs == [] and harness.clock.pending == 1  # one timer for both
    with caplog.at_level(logging.WARNING, logger="infisical_sync.scheduler"):
        harness.clock.advance(FINALIZER_GRACE)
        await harness.sleeping(2)
    assert len(harness.engine.runs) == 1
    assert harness.scheduler.syncs[SYNC].body["spec"] == {"x": 1}  # the latest body
    assert "finalizer" in caplog.text and "ns/sync" in caplog.text


async def test_a_secretsync_deleted_before_its_finalizer_never_syncs(harness: Harness) -> None:
    bare = sync_body()
    bare["metadata"]["finalizers"] = []
    harness.scheduler.on_secretsync_event("ADDED", "ns", "sync", bare)
    harness.scheduler.on_secretsync_event("DELETED", "ns", "sync", bare)
    assert harness.clock.pending == 0
    harness.clock.advance(FINALIZER_GRACE)
    for _ in range(20):
        await asyncio.sleep(0)
    assert harness.engine.runs == [] and harness.scheduler.uids == {}


async def test_secretsync_events_kick_on_changes_only(harness: Harness) -> None:
    scheduler = harness.scheduler
    runs = runs_by_name(harness, {})

    def event(change: str, body: Any) -> None:
        scheduler.on_secretsync_event(change, "ns", "sync", {**body, "spec": {}})

    event("ADDED", annotated(1))
    await harness.sleeping(1)
    event("MODIFIED", annotated(1))  # e.g. its status patch
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(runs["sync"]) == 1 and harness.clock.pending == 1
    event("MODIFIED", annotated(1, "now"))
    await harness.sleeping(2)
    assert len(runs["sync"]) == 2
    event("DELETED", annotated(1, "now"))
    assert harness.clock.pending == 0
    event("ADDED", annotated(5))  # recreated: a first sight, not a change
    await harness.sleeping(3)
    assert len(runs["sync"]) == 3 and scheduler.syncs[SYNC].observed.generation == 5


async def test_secret_events_kick_their_readers(harness: Harness) -> None:
    scheduler = harness.scheduler
    candidates = ("named", "matching", "other", "reader")
    runs = runs_by_name(harness, {})
    for name in candidates:
        harness.sync(name, sync_body())
    await harness.sleeping(4)
    scheduler.on_secret_event(
        "ns",
        "read-before",
        "MODIFIED",
        {"team": "a"},
        connections=[("ns", "conn")],
        syncs=["named"],
        selector_syncs=[
            ("matching", {"matchLabels": {"team": "a"}}),
            ("other", {"matchLabels": {"team": "b"}}),
        ],
    )
    await harness.sleeping(7)
    assert {name for name in candidates if len(runs[name]) == 2} == {"named", "matching", "reader"}
    assert scheduler.kicks.slot(CONNECTION).take() == (False, {"secret read-before modified"})


# --- InfisicalConnection ----------------------------------------------------------------------


def connection_body(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"generation": 1}, "spec": {"validationInterval": "5m", **spec}}


async def test_connection_logs_in_at_start_and_on_forced_kicks_only(harness: Harness) -> None:
    harness.start(
        harness.scheduler.run_connection(
            "ns", "conn", connection_body(), harness.stopped, dependents=list
        )
    )
    harness.clock.advance(await harness.sleeping(1))
    assert await harness.sleeping(2) == 300
    harness.scheduler.kicks.kick(CONNECTION, "secret identity modified")
    await harness.sleeping(3)
    harness.scheduler.on_connection_spec_changed("ns", "conn")
    await harness.sleeping(4)
    assert harness.connections.logins == [True, False, False, True]


async def test_connection_failures_back_off_and_readiness_kicks_dependents(
    harness: Harness,
) -> None:
    runs = runs_by_name(harness, {"a": [failed(retry_after=10_000)]})
    harness.sync("a", sync_body())  # its first run fails: it waits for the connection
    assert await harness.sleeping(1) == 10_000
    harness.connections.outcomes = [
        Outcome(False, "Unreachable", "down"),
        Outcome(False, "RateLimited", "slow down", retry_after=120),
    ]
    harness.start(
        harness.scheduler.run_connection(
            "ns",
            "conn",
            connection_body(),
            harness.stopped,
            dependents=lambda: [("ns", "a"), ("ns", "b")],
        )
    )
    assert await harness.sleeping(2) == 5
    harness.clock.advance(5)
    assert await harness.sleeping(3) == 120
    harness.connections.notify = True
    harness.clock.advance(120)
    await harness.sleeping(5)  # the connection's next pause, and a's after its run
    assert sorted(harness.clock.sleeps[3:5]) == [60, 300]
    assert runs == {"a": [0, 125]}  # kicked by Ready; b (not seen yet) had nothing to wake


# --- API server outages ----------------------------------------------------------------------


def outage_lines(caplog: pytest.LogCaptureFixture, name: str) -> list[tuple[int, str]]:
    return [
        (record.levelno, record.getMessage())
        for record in caplog.records
        if f"ns/{name}" in record.getMessage()
    ]


async def test_an_outage_is_one_warning_per_object_then_quiet_then_one_info(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="infisical_sync")
    down = KubeUnavailable("the Kubernetes API server refused the connection (reading Secret)")
    harness.engine.results = [down, down, down]
    harness.connections.outcomes = [down, down]
    harness.sync("sync", sync_body())
    harness.start(
        harness.scheduler.run_connection(
            "ns", "conn", connection_body(), harness.stopped, dependents=list
        )
    )
    for _ in range(3):  # both loops back off (5, 10, 20 s) and retry
        await until(lambda: harness.clock.pending == 2)
        harness.clock.advance(20)
    await until(lambda: len(harness.engine.runs) == 4 and len(harness.connections.logins) == 3)
    for name, failures in (("sync", 3), ("conn", 2)):
        levels = [level for level, _ in outage_lines(caplog, name)]
        assert levels == [logging.WARNING] + [logging.DEBUG] * (failures - 1) + [logging.INFO]
    assert outage_lines(caplog, "sync")[0][1] == (
        "SecretSync ns/sync: cycle failed: the Kubernetes API server refused the connection"
        " (reading Secret); retrying quietly until it answers"
    )
    assert "reachable again (3 failed attempts)" in outage_lines(caplog, "sync")[-1][1]
    assert not [record for record in caplog.records if record.exc_info]
    assert harness.clock.sleeps[:2] == [5, 5]  # backed off like any failure


async def test_a_second_outage_warns_again(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="infisical_sync")
    down = KubeUnavailable("the Kubernetes API server dropped the connection (x)")
    harness.engine.results = [down, ok(), down]
    harness.sync("sync", sync_body())
    for count in (1, 2, 3):
        harness.clock.advance(await harness.sleeping(count))
    await harness.sleeping(4)
    levels = [level for level, _ in outage_lines(caplog, "sync")]
    assert levels == [logging.WARNING, logging.INFO, logging.WARNING, logging.INFO]


async def test_a_removal_reports_its_failure_even_when_status_cannot_be_written(
    harness: Harness,
) -> None:
    harness.engine.removal_error = SyncFailed("Synced", "ServerError", "500 from the instance")

    async def unavailable(*_: Any) -> bool:
        raise KubeUnavailable("the Kubernetes API server did not answer within 30 s (x)")

    harness.status.patch_status = unavailable  # type: ignore[method-assign]
    with pytest.raises(RetryLater, match=r"500 from the instance.*not in status"):
        await harness.scheduler.remove_secretsync(
            "ns", "sync", {"spec": {"deletionPolicy": "Delete"}}
        )


# --- deletion ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "abandon", "action"),
    [
        ("Delete", None, "remove"),
        ("Delete", "true", "let go"),
        ("Retain", None, "release"),
        ("Retain", "true", "let go"),
        (None, None, "release"),
    ],
)
def test_deletion_action(policy: str | None, abandon: str | None, action: str) -> None:
    body: dict[str, Any] = {"metadata": {"annotations": {}}, "spec": {}}
    if policy:
        body["spec"]["deletionPolicy"] = policy
    if abandon:
        body["metadata"]["annotations"]["infisical-sync.dev/abandon"] = abandon
    assert deletion_action(body) == action


async def test_removal_failure_is_reported_and_retried(harness: Harness) -> None:
    harness.engine.removal_error = SyncFailed("Synced", "ServerError", "500 from the instance")
    body = {"metadata": {}, "spec": {"deletionPolicy": "Delete"}}
    with pytest.raises(RetryLater) as raised:
        await harness.scheduler.remove_secretsync("ns", "sync", body)
    assert raised.value.delay == 10
    assert harness.status.patches[0]["syncStatus"] == "Failed"
    assert "500 from the instance" in harness.status.patches[0]["lastSyncMessage"]
    harness.engine.removal_error = None
    await harness.scheduler.remove_secretsync("ns", "sync", body)
    assert harness.engine.removals == ["sync"] and SYNC not in harness.scheduler.locks


async def test_retained_keys_are_released_not_removed(harness: Harness) -> None:
    await harness.scheduler.remove_secretsync("ns", "sync", {"spec": {}})
    assert harness.engine.removals == [] and harness.engine.releases == ["sync"]


async def test_a_release_that_cannot_be_made_lets_go_and_keeps_the_keys(harness: Harness) -> None:
    harness.engine.removal_error = SyncFailed("DestinationReady", "ConnectionNotReady", "gone")
    await harness.scheduler.remove_secretsync("ns", "sync", {"spec": {}})
    assert harness.engine.releases == [] and harness.engine.forgotten == ["sync"]
    assert harness.engine.let_go == ["sync"]  # the ledger's ConfigMap is let go either way


async def test_a_failing_release_is_retried_and_abandon_lets_go(harness: Harness) -> None:
    harness.engine.removal_error = SyncFailed("Synced", "ServerError", "not Ready", retryable=True)
    body: dict[str, Any] = {"metadata": {"annotations": {}}, "spec": {"deletionPolicy": "Retain"}}
    with pytest.raises(RetryLater, match="releasing ownership of owned keys failed: not Ready"):
        await harness.scheduler.remove_secretsync("ns", "sync", body)
    body["metadata"]["annotations"]["infisical-sync.dev/abandon"] = "true"
    await harness.scheduler.remove_secretsync("ns", "sync", body)
    assert harness.engine.releases == [] and harness.engine.forgotten == ["sync"]
    # Abandoned: the ledger's ConfigMap is let go too (else it would outlive the SecretSync).
    assert harness.engine.let_go == ["sync"]


async def test_a_connection_in_use_is_kept_until_its_secretsyncs_are_gone(
    harness: Harness,
) -> None:
    users = ["b", "a"]
    task = harness.start(harness.scheduler.remove_connection("ns", "conn", named(users)))
    await harness.sleeping(1)
    assert harness.connections.forgotten == []  # its session stays usable meanwhile
    assert "SecretSyncs a, b" in harness.status.patches[-1]["message"]
    users.clear()  # their removal is done
    harness.clock.advance(1)
    await task
    assert harness.connections.forgotten == ["conn"]
    assert len(harness.status.patches) == 1  # said once, not every poll


async def test_a_connection_in_use_for_long_hands_back_to_kopf(harness: Harness) -> None:
    task = harness.start(harness.scheduler.remove_connection("ns", "conn", named(["a"])))
    for count in range(1, 61):
        harness.clock.advance(await harness.sleeping(count))
    with pytest.raises(RetryLater, match="SecretSyncs a use this connection"):
        await task
    assert harness.connections.forgotten == []


async def test_a_deleted_connection_keeps_its_session_when_its_daemon_stops(
    harness: Harness,
) -> None:
    body = {"metadata": {"deletionTimestamp": "2026-11-28T12:00:00Z"}, "spec": {}}
    task = harness.start(
        harness.scheduler.run_connection("ns", "conn", body, harness.stopped, dependents=list)
    )
    await harness.sleeping(1)
    harness.stopped.set()
    await task
    assert harness.connections.forgotten == []


async def test_a_removal_after_a_sync_acts_on_what_that_sync_wrote(harness: Harness) -> None:
    """kopf's body for the deletion can predate a sync that finished while it waited."""
    moved = {"destinationLocation": {"connection": "c", "secretPath": "/new"}}
    harness.engine.results = [ok(**moved)]
    harness.sync("sync", sync_body())
    await harness.sleeping(1)
    stale = {
        "metadata": {},
        "spec": {"deletionPolicy": "Delete"},
        "status": {"destinationLocation": {"connection": "c", "secretPath": "/old"}},
    }
    await harness.scheduler.remove_secretsync("ns", "sync", stale)
    assert SYNC not in harness.scheduler.syncs and harness.clock.pending == 0  # stopped first
    removed = harness.engine.removal_bodies[0]["status"]
    assert removed["destinationLocation"]["secretPath"] == "/new"


async def test_a_shard_not_writing_the_connections_status_waits_for_its_users_silently(
    harness: Harness,
) -> None:
    harness.scheduler.shard = Shard(1 - slot_of("ns", "conn", 2), 2)
    users = ["a"]
    task = harness.start(harness.scheduler.remove_connection("ns", "conn", named(users)))
    await harness.sleeping(1)
    assert harness.connections.forgotten == []  # its own SecretSyncs still use it
    users.clear()
    harness.clock.advance(1)
    await task
    assert harness.connections.forgotten == ["conn"]
    assert harness.status.patches == []  # the owning shard says it in status


def named(users: list[str]) -> Callable[[], Awaitable[list[str]]]:
    """A connection's users as remove_connection asks for them: read each time it asks."""

    async def read() -> list[str]:
        return list(users)

    return read


async def test_at_most_cycle_slots_syncs_run_at_once(harness: Harness) -> None:
    """10,000 SecretSyncs starting together must not all hold a cycle (their sources, plans and
    a place in every queue) at once: the rest wait for a slot, then each runs."""
    harness.scheduler.cycle_slots = 3
    release = asyncio.Event()
    in_flight: list[str] = []
    most = 0
    finished: list[str] = []

    async def run(namespace: str, name: str, *_: Any, **__: Any) -> CycleResult:
        nonlocal most
        in_flight.append(name)
        most = max(most, len(in_flight))
        await release.wait()
        in_flight.remove(name)
        finished.append(name)
        return ok()

    harness.engine.run = run  # type: ignore[method-assign]
    for index in range(8):
        harness.sync(f"s{index}", sync_body())
    await until(lambda: len(in_flight) == 3)
    for _ in range(20):  # the others stay waiting while the three hold their slots
        await asyncio.sleep(0)
    assert len(in_flight) == 3 and most == 3
    release.set()
    await until(lambda: len(finished) == 8)
    assert most == 3


# --- a connection's first validation --------------------------------------------------------


def test_a_secretsync_uses_its_destinations_and_its_infisical_sources_connections() -> None:
    destination = {"destination": {"connectionRef": {"name": "selfhosted"}}}
    assert connections_used("ns", destination) == [("ns", "selfhosted")]
    from_cloud = {**destination, "source": {"infisical": {"connectionRef": {"name": "cloud"}}}}
    assert connections_used("ns", from_cloud) == [("ns", "selfhosted"), ("ns", "cloud")]
    same = {**destination, "source": {"infisical": {"connectionRef": {"name": "selfhosted"}}}}
    assert connections_used("ns", same) == [("ns", "selfhosted")]
    shared = {"name": "cloud", "kind": "ClusterInfisicalConnection"}
    from_shared = {**destination, "source": {"infisical": {"connectionRef": shared}}}
    assert connections_used("ns", from_shared) == [("ns", "selfhosted"), ("", "cloud")]
    assert connections_used("ns", {"source": {"kubernetes": {"secrets": []}}}) == []
    assert connections_used("ns", {"destination": "not a mapping", "source": None}) == []
    assert connections_used("ns", {"destination": {"connectionRef": {"name": ""}}}) == []


def using_conn(body: dict[str, Any]) -> dict[str, Any]:
    body["spec"]["destination"] = {"connectionRef": {"name": "conn"}}
    return body


@pytest.mark.parametrize("first_outcome", [Outcome(True, "Validated", "ok"), None])
async def test_a_due_secretsync_waits_for_its_connections_first_validation(
    harness: Harness, first_outcome: Outcome | None
) -> None:
    """After a start, a cycle before the connection's first validation could only write
    ConnectionNotReady ("not validated yet") and flap a Ready object: it waits for that
    validation instead, whatever its outcome (a failed one: the cycle reports its reason)."""
    runs = runs_by_name(harness, {})
    harness.connections.answered = asyncio.Event()
    if first_outcome is None:
        harness.connections.outcomes = [KubeUnavailable("the API server did not answer")]
    harness.start(
        harness.scheduler.run_connection(
            "ns", "conn", connection_body(), harness.stopped, dependents=lambda: [("ns", "new")]
        )
    )
    await until(lambda: harness.connections.logins == [True])  # validating, not answered yet
    harness.sync("new", using_conn(sync_body()))  # runs at once at first sight...
    harness.sync("elsewhere", sync_body())  # (no connection named: not held)
    harness.sync("restarted", using_conn(synced_body()))  # ...and after its spread
    harness.clock.advance(30)  # every spread is over
    await until(lambda: "elsewhere" in runs)
    for _ in range(100):
        await asyncio.sleep(0)
    assert sorted(runs) == ["elsewhere"]
    harness.connections.answered.set()
    await until(lambda: len(runs) == 3)
    for _ in range(100):
        await asyncio.sleep(0)
    assert runs == {"elsewhere": [30.0], "new": [30.0], "restarted": [30.0]}  # once each


async def test_secretsyncs_held_for_a_connection_run_when_its_daemon_stops_unvalidated(
    harness: Harness,
) -> None:
    runs = runs_by_name(harness, {})
    harness.connections.answered = asyncio.Event()  # never answers
    daemon = harness.start(
        harness.scheduler.run_connection(
            "ns", "conn", connection_body(), harness.stopped, dependents=list
        )
    )
    await until(lambda: harness.connections.logins == [True])
    harness.sync("new", using_conn(sync_body()))
    for _ in range(100):
        await asyncio.sleep(0)
    assert runs == {}
    daemon.cancel()  # the connection was deleted
    await until(lambda: harness.scheduler._held == {})
    for _ in range(100):
        await asyncio.sleep(0)
    assert runs == {}  # not at once: an operator stopping ends every daemon first
    harness.clock.advance(HELD_RELEASE_DELAY)
    await until(lambda: "new" in runs)


async def test_secretsyncs_held_for_a_connection_never_run_when_the_operator_stops(
    harness: Harness,
) -> None:
    """kopf stops the connection daemons before the operator's cleanup stops the scheduler:
    the SecretSyncs they held must not all start a cycle on the way out."""
    runs = runs_by_name(harness, {})
    harness.connections.answered = asyncio.Event()  # never answers
    daemon = harness.start(
        harness.scheduler.run_connection(
            "ns", "conn", connection_body(), harness.stopped, dependents=list
        )
    )
    await until(lambda: harness.connections.logins == [True])
    harness.sync("new", using_conn(sync_body()))
    harness.sync("kicked", using_conn(sync_body()))
    for _ in range(100):
        await asyncio.sleep(0)
    harness.scheduler.kick(("SecretSync", "ns", "kicked"), "secret app modified")  # held twice
    for _ in range(100):
        await asyncio.sleep(0)
    held = harness.scheduler._held[CONNECTION]
    assert sorted(entry.key[2] for entry in held) == ["kicked", "new"]
    daemon.cancel()
    await until(lambda: harness.scheduler._held == {})
    await harness.scheduler.shutdown(0)
    harness.clock.advance(HELD_RELEASE_DELAY)
    for _ in range(100):
        await asyncio.sleep(0)
    assert runs == {}


async def test_in_the_first_seconds_a_secretsync_waits_for_its_connections_daemon_too(
    harness: Harness,
) -> None:
    """kopf hands the connections over during its first seconds as well: a SecretSync due
    before its connection's daemon started waits for that daemon's first validation."""
    runs = runs_by_name(harness, {})
    harness.sync("new", using_conn(sync_body()))
    for _ in range(100):
        await asyncio.sleep(0)
    assert runs == {}
    harness.clock.advance(STARTUP_HOLD / 2)
    harness.start(
        harness.scheduler.run_connection(
            "ns", "conn", connection_body(), harness.stopped, dependents=lambda: [("ns", "new")]
        )
    )
    await until(lambda: "new" in runs)
    assert harness.connections.logins == [True] and runs["new"] == [STARTUP_HOLD / 2]
    harness.clock.advance(STARTUP_HOLD)  # the startup hold's end: nothing more to release
    for _ in range(100):
        await asyncio.sleep(0)
    assert len(runs["new"]) == 1


async def test_a_secretsync_naming_no_known_connection_runs_when_the_startup_hold_ends(
    harness: Harness,
) -> None:
    runs = runs_by_name(harness, {})
    harness.sync("typo", using_conn(sync_body()))
    for _ in range(100):
        await asyncio.sleep(0)
    assert runs == {}
    harness.clock.advance(STARTUP_HOLD)
    await until(lambda: "typo" in runs)  # then reported as missing by its cycle
    harness.sync("later", using_conn(sync_body()))  # after the first seconds: at once
    await until(lambda: "later" in runs)
    assert runs == {"typo": [STARTUP_HOLD], "later": [STARTUP_HOLD]}
