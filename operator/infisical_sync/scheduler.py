"""When each object is reconciled: the InfisicalConnection daemon loops, and the SecretSync
timetable.

A SecretSync runs one cycle at first sight (at once, or spread after a restart when it was
already in sync), then again when its interval passes (jittered, backed off after failures) or
a kick arrives (a watched Secret changed, the spec changed, a sync was requested). Between
cycles it holds no task: a loop timer makes it due, and one dispatcher runs the due ones, at
most `cycle_slots` at once. It stops on deletion, when the operator exits (`shutdown`) and, as
kopf's handlers only see the SecretSyncs of this shard, never runs elsewhere; a cycle in flight
is finished first.
An InfisicalConnection (a few per cluster) keeps a kopf daemon: it validates at start, on kicks
and every validationInterval, and returns as soon as kopf asks it to stop.
app.py registers the kopf handlers that call in here; there is no kopf in this module, and time
comes from an injectable `Clock`, so the policy is unit-tested without waiting.

An API server outage fails every cycle of every object until it ends: each object logs one
WARNING when its first cycle fails, DEBUG lines while it lasts and one INFO when a cycle gets
through again (`Outages`), never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

from infisical_sync import metrics
from infisical_sync.conditions import condition_status
from infisical_sync.connection import Outcome, plural_of
from infisical_sync.durations import jittered, retry_delay, sync_interval, validation_interval
from infisical_sync.kube import GROUP, VERSION, KubeUnavailable
from infisical_sync.planner import ALLOW_MASS_DELETE
from infisical_sync.references import sync_connections
from infisical_sync.resources import connection_kind
from infisical_sync.runtime import Key, Kicks, Slot
from infisical_sync.selectors import selector_matches
from infisical_sync.shards import Shard
from infisical_sync.status_patch import merge_patch, status_patch
from infisical_sync.sync import (
    ABANDON,
    SYNC_REQUESTED_AT,
    CycleResult,
    SyncFailed,
)

log = logging.getLogger(__name__)
SYNCS = "secretsyncs"
CONNECTIONS = "infisicalconnections"
# A restarted operator spreads the first runs of already-synced objects over this long at most.
RESTART_SPREAD = 30.0
# A SecretSync whose finalizer kopf has not added by then (its patch refused, say by a webhook)
# syncs without it, with a WARNING: waiting forever in silence would be worse.
FINALIZER_GRACE = 60.0
# Kicks that a SecretSync with autoSyncEnabled: false still follows.
MANUAL_REASONS = frozenset({"created", "spec changed", "sync requested"})
REMOVAL_RETRY_DELAY = 10.0
IN_USE_RETRY_DELAY = 5.0
# A connection in use waits this long inside its deletion handler (polling) before it hands
# back to kopf for a retry: the usual wait (SecretSyncs deleted with it) is a second or two, and
# kopf logs every retry as an ERROR.
IN_USE_WAIT = 60.0
IN_USE_POLL = 1.0
# A writing cycle shows `syncStatus: Running` only when its writes are still going after this
# long: nearly all end well within it, and each mark is one more etcd write and a watch event
# that kopf processes (10,000 of them at a cold start of 10,000 SecretSyncs).
RUNNING_AFTER = 1.0
# SecretSyncs held for a connection's first validation when its daemon ends before it (the
# connection was deleted, or the operator stops) run this much later.
HELD_RELEASE_DELAY = 5.0
# kopf hands over the InfisicalConnections during its first seconds too: a SecretSync due then
# may name one whose daemon has not started yet. It waits for it as well, this long at most
# after the start (a connection that does not exist is then reported as such).
STARTUP_HOLD = 10.0
RUNNING = {"syncStatus": "Running"}
DeletionAction = Literal["remove", "release", "let go"]


# --- what the loops depend on -------------------------------------------------------------------


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """Time and its randomness as the loops see them."""

    async def sleep(self, seconds: float) -> None: ...

    def call_later(self, seconds: float, callback: Callable[[], object]) -> Cancellable: ...

    def uniform(self, low: float, high: float) -> float: ...

    def monotonic(self) -> float: ...


class SystemClock:
    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def call_later(self, seconds: float, callback: Callable[[], object]) -> Cancellable:
        return asyncio.get_running_loop().call_later(seconds, callback)

    def uniform(self, low: float, high: float) -> float:
        return random.uniform(low, high)  # noqa: S311 - jitter, not crypto

    def monotonic(self) -> float:
        return time.monotonic()


class StopSignal(Protocol):
    """kopf's `stopped` flag of a daemon (an asyncio.Event in the tests)."""

    def is_set(self) -> bool: ...

    def wait(self) -> Awaitable[object]: ...


class SyncCycles(Protocol):
    """The SecretSync engine (sync.SyncEngine)."""

    async def run(
        self,
        namespace: str,
        name: str,
        body: Mapping[str, Any],
        previous_status: Mapping[str, Any] | None = None,
        on_writing: Callable[[], Awaitable[None]] | None = None,
    ) -> CycleResult: ...

    async def remove_owned(self, namespace: str, name: str, body: Mapping[str, Any]) -> int: ...

    async def release_owned(self, namespace: str, name: str, body: Mapping[str, Any]) -> int: ...

    async def let_go_of_ledger(self, namespace: str, name: str, uid: str) -> None: ...

    def forget(self, namespace: str, name: str) -> None: ...

    def readers_of(self, namespace: str, secret: str) -> set[str]: ...


class Validations(Protocol):
    """The InfisicalConnection reconciler (connection.ConnectionReconciler)."""

    async def reconcile(
        self, namespace: str, name: str, body: Mapping[str, Any], *, force_login: bool
    ) -> tuple[Outcome, bool]: ...

    async def forget(self, namespace: str, name: str) -> None: ...


class StatusWriter(Protocol):
    """Patches our own status subresource (kube.Kube)."""

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: dict[str, Any]
    ) -> bool: ...


class RetryLater(Exception):
    """A handler step that must be retried after `delay` seconds (kopf.TemporaryError)."""

    def __init__(self, message: str, delay: float) -> None:
        super().__init__(message)
        self.message = message
        self.delay = delay


# --- pure decisions ---------------------------------------------------------------------------


def next_delay(interval: float, failures: int, retry_after: float | None) -> float:
    """The full interval after a success (failures == 0), else the back-off. Not jittered."""
    return interval if failures == 0 else retry_delay(interval, failures, retry_after)


def in_sync_before_start(body: Mapping[str, Any]) -> bool:
    """Synced at the current generation: a restart need not sync it at once."""
    status = body.get("status") or {}
    generation = (body.get("metadata") or {}).get("generation")
    return bool(status.get("lastSyncedAt")) and status.get("observedGeneration") == generation


def connection_ready(name: str) -> str:
    """The kick a SecretSync gets when a connection it uses becomes Ready."""
    return f"connection {name} ready"


def follows(spec: Mapping[str, Any], reasons: Collection[str], *, owed: bool = False) -> bool:
    """Whether a SecretSync runs for these kicks: always when auto-syncing, else on request.
    `owed`: a requested run has not got through yet (e.g. its connection was not Ready); it
    runs when a connection becomes Ready."""
    if spec.get("autoSyncEnabled", True) or set(reasons) & MANUAL_REASONS:
        return True
    return owed and any(
        reason.startswith("connection ") and reason.endswith(" ready") for reason in reasons
    )


class Observed(NamedTuple):
    """What of a SecretSync's watch events decides whether it is kicked."""

    generation: object
    sync_requested_at: str | None
    allow_mass_delete: str | None


def connections_used(namespace: str, spec: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The addresses of the connections a cycle of a SecretSync in `namespace` needs: the
    destination's, and an Infisical source's (as the referrers index reads them)."""
    return list(sync_connections(namespace, "", spec))


def connection_object(address: tuple[str, str]) -> Key:
    """The scheduler's key of a connection: (kind, namespace, name)."""
    return (connection_kind(address), *address)


def observe(body: Mapping[str, Any]) -> Observed:
    meta = body.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    return Observed(
        meta.get("generation"),
        annotations.get(SYNC_REQUESTED_AT),
        annotations.get(ALLOW_MASS_DELETE),
    )


def kick_reason(before: Observed | None, current: Observed) -> str | None:
    """The kick a SecretSync's watch event calls for, if any. At first sight none: its first
    cycle covers it."""
    if before is None or before == current:
        return None
    if before.generation != current.generation:
        return "spec changed"
    if before.sync_requested_at != current.sync_requested_at:
        return "sync requested"
    return "spec changed"  # allow-mass-delete changed: re-plan


def acknowledged(requested: str | None) -> dict[str, str]:
    """The status that tells a sync request was handled: a cycle that started after the
    request annotation got this value ran to its end (`kubectl wait` and CI wait for it)."""
    return {"lastHandledRequest": requested} if requested else {}


def in_sync(result: CycleResult | None, stored: Mapping[str, Any] | None) -> bool:
    """The cycle found or made its destination in sync (not a dry run, a hold or a failure).
    `stored`: the status after it (a cycle may leave some or all of it as it was)."""
    synced = condition_status((stored or {}).get("conditions"), "Synced") == "True"
    return result is not None and result.ok and synced


def deletion_action(body: Mapping[str, Any]) -> DeletionAction:
    """What a deleted SecretSync does with the keys it owns: deletionPolicy Delete removes them,
    Retain keeps them and releases their ownership; the abandon annotation skips either."""
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    if annotations.get(ABANDON) == "true":
        return "let go"
    policy = (body.get("spec") or {}).get("deletionPolicy", "Retain")
    return "remove" if policy == "Delete" else "release"


def in_use_message(users: Collection[str]) -> str:
    return (
        f"deletion waits: SecretSyncs {', '.join(sorted(users))} use this connection and "
        "need it to remove or release their keys first"
    )


class Outages:
    """Which objects' cycles currently fail because the Kubernetes API server is unavailable,
    and how many times in a row: one WARNING per object per outage, then quiet."""

    def __init__(self) -> None:
        self._failures: dict[Key, int] = {}

    def failed(self, key: Key, problem: KubeUnavailable) -> None:
        kind, namespace, name = key
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        if failures == 1:
            log.warning(
                "%s %s/%s: cycle failed: %s; retrying quietly until it answers",
                kind,
                namespace,
                name,
                problem,
            )
        else:
            log.debug(
                "%s %s/%s: still unavailable after %d attempts: %s",
                kind,
                namespace,
                name,
                failures,
                problem,
            )

    def succeeded(self, key: Key) -> None:
        failures = self._failures.pop(key, 0)
        if failures:
            kind, namespace, name = key
            log.info(
                "%s %s/%s: the Kubernetes API server is reachable again (%d failed attempts)",
                kind,
                namespace,
                name,
                failures,
            )

    def forget(self, key: Key) -> None:
        self._failures.pop(key, None)


# --- the scheduler ------------------------------------------------------------------------------


class _RunningMark:
    """The Running mark of one cycle: `post` runs when its writes (`writing` is the engine's
    on_writing) are still going after RUNNING_AFTER seconds. Leaving the `async with` settles
    it before the cycle's outcome is patched: a mark not yet posted never is, one being posted
    is waited for (the outcome must not overtake it). A cancelled cycle cancels it either way.
    No task outlives the block."""

    def __init__(self, clock: Clock, post: Callable[[], Awaitable[None]], name: str) -> None:
        self._clock = clock
        self._post = post
        self._name = name
        self._task: asyncio.Task[None] | None = None
        self._posting = False

    async def writing(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._mark(), name=self._name)

    async def _mark(self) -> None:
        await self._clock.sleep(RUNNING_AFTER)
        self._posting = True
        await self._post()

    async def __aenter__(self) -> Callable[[], Awaitable[None]]:
        return self.writing

    async def __aexit__(self, kind: type[BaseException] | None, *_: object) -> None:
        task = self._task
        if task is None:
            return
        if not self._posting or (kind is not None and issubclass(kind, asyncio.CancelledError)):
            task.cancel()
        try:
            await asyncio.wait([task])  # its outcome is its own: `post` handles its errors
        except asyncio.CancelledError:  # the cycle was cancelled while waiting for the post
            task.cancel()
            await asyncio.wait([task])
            raise


class _Stopped(Exception):
    """A cycle whose SecretSync stopped before the cycle got its lock."""


@dataclass
class _SyncState:
    failures: int = 0
    # The status its cycles last wrote: the watched body can lag behind it, and a stale
    # lastSyncedAt or managedKeys must never make a later cycle look like the initial one.
    written: dict[str, Any] | None = None
    # A cycle failed after it may have written (a timed-out patch can still have been applied):
    # the next one writes its whole status instead of what differs from `written`.
    unsure: bool = False


KEPT_METADATA = ("namespace", "name", "uid", "generation", "resourceVersion", "deletionTimestamp")
# The annotations a cycle reads. Not the others: kubectl's last-applied-configuration and kopf's
# last-handled-configuration are each a whole copy of the spec.
KEPT_ANNOTATIONS = (SYNC_REQUESTED_AT, ALLOW_MASS_DELETE, ABANDON)


def kept_body(body: Mapping[str, Any], *, with_status: bool = True) -> dict[str, Any]:
    """What a SecretSync's cycles read of its watched body. `with_status`: only until a cycle
    has written one (`_SyncState.written` is what the next cycle starts from then)."""
    meta = body.get("metadata") or {}
    kept_meta = {item: meta[item] for item in KEPT_METADATA if item in meta}
    found = meta.get("annotations") or {}
    annotations = {item: found[item] for item in KEPT_ANNOTATIONS if item in found}
    if annotations:
        kept_meta["annotations"] = annotations
    kept: dict[str, Any] = {
        # The Events a cycle posts name their object by these (kubectl describe looks them up
        # by kind); items of a LIST, unlike watch events, come without them.
        "apiVersion": body.get("apiVersion") or f"{GROUP}/{VERSION}",
        "kind": body.get("kind") or "SecretSync",
        "metadata": kept_meta,
        "spec": body.get("spec") or {},
    }
    if with_status and body.get("status") is not None:
        kept["status"] = body.get("status")
    return kept


@dataclass(eq=False)
class _Sync:
    """One SecretSync of this shard as the timetable keeps it: between cycles no task, a timer
    at most."""

    key: Key
    body: Mapping[str, Any]  # the latest watched body (kept_body)
    observed: Observed  # what of its watch events decides a kick
    state: _SyncState = field(default_factory=_SyncState)
    # Kicks since its last cycle began ("created" until the first one).
    reasons: set[str] = field(default_factory=lambda: {"created"})
    # A run it should have made did not get through (e.g. its connection was not Ready).
    owed: bool = False
    timer: Cancellable | None = None  # makes it due when its pause ends
    queued: bool = False  # due, waiting for a cycle slot
    cycle: asyncio.Task[None] | None = None
    stopped: bool = False  # deleted, or the operator exits: no cycle starts any more
    gone: bool = False  # the object no longer exists: nothing of it stays once its cycle ends


def _deleting(change: str, body: Mapping[str, Any]) -> bool:
    return change == "DELETED" or bool((body.get("metadata") or {}).get("deletionTimestamp"))


@dataclass
class Scheduler:
    engine: SyncCycles
    connections: Validations
    status: StatusWriter
    clock: Clock = field(default_factory=SystemClock)
    kicks: Kicks = field(default_factory=Kicks)  # the InfisicalConnection daemons' wake-ups
    # The SecretSyncs of this shard, from first sight to deletion or exit.
    syncs: dict[Key, _Sync] = field(default_factory=dict)
    # One lock per SecretSync: a sync and a removal never run at once.
    locks: dict[Key, asyncio.Lock] = field(default_factory=dict)
    outages: Outages = field(default_factory=Outages)
    # The status each SecretSync's cycles last wrote: a removal that waited for a sync in
    # flight acts on what that sync recorded (where it wrote, what it owns), not on the older
    # body kopf handed to the deletion handler.
    written: dict[Key, dict[str, Any]] = field(default_factory=dict)
    # SecretSyncs a connection becoming Ready kicks: those that run at once at first sight
    # (never synced, spec changed) until a run gets through, and those whose last run did not (e.g.
    # ConnectionNotReady; a manual request owed). Not one waiting out its restart spread, nor
    # one in sync: after a restart, the first validation would otherwise end every spread.
    awaiting_ready: set[Key] = field(default_factory=set)
    # The uid each SecretSync name stands for now (its latest event that is not a deletion):
    # how an earlier object's late deletion events are told apart (superseded).
    uids: dict[Key, str] = field(default_factory=dict)
    # SecretSyncs seen without kopf's finalizer yet: their latest body, and the timer that starts
    # them without it after FINALIZER_GRACE.
    _unguarded: dict[Key, tuple[Mapping[str, Any], Cancellable]] = field(
        default_factory=dict, init=False, repr=False
    )
    # Which InfisicalConnections' status this replica writes (every shard validates them all).
    shard: Shard = field(default_factory=Shard)
    # Sync cycles at once, across all SecretSyncs: thousands starting together would each hold
    # their sources and a plan while queueing for the same instances and API server.
    cycle_slots: int = 64
    _cycles: asyncio.Semaphore | None = field(default=None, init=False, repr=False)
    # Due SecretSyncs in the order they became due, and the one task that starts their cycles.
    _due: deque[_Sync] = field(default_factory=deque, init=False, repr=False)
    _wake: asyncio.Event | None = field(default=None, init=False, repr=False)
    _dispatcher: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    _shut_down: bool = field(default=False, init=False, repr=False)
    # When this replica started operating: the restart spread counts from here.
    _started: float = field(default=0.0, init=False, repr=False)
    # InfisicalConnections whose daemon runs but has not validated yet (just started or
    # created), and the due SecretSyncs held for them: a cycle before that first validation
    # could only fail ConnectionNotReady ("not validated yet"), a status write and a flap.
    _first_validation: set[Key] = field(default_factory=set, init=False, repr=False)
    _held: dict[Key, dict[_Sync, None]] = field(default_factory=dict, init=False, repr=False)
    # Connections whose daemon started in this process (a few per cluster); the timer ending
    # the startup hold (STARTUP_HOLD).
    _connections_seen: set[Key] = field(default_factory=set, init=False, repr=False)
    _startup_release: Cancellable | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._started = self.clock.monotonic()

    def _cycle_slot(self) -> asyncio.Semaphore:
        if self._cycles is None:  # made on first use: inside the running loop
            self._cycles = asyncio.Semaphore(self.cycle_slots)
        return self._cycles

    def lock(self, key: Key) -> asyncio.Lock:
        return self.locks.setdefault(key, asyncio.Lock())

    async def _pause(self, slot: Slot, delay: float, stopped: StopSignal) -> None:
        """Until `delay` seconds pass, the slot is kicked or the daemon is told to stop.

        The timer and the stop flag wake the slot's event; the daemon waits on that alone. The
        stop flag is only awaitable, so its watcher is a task; the timer is a handle."""
        if slot.event.is_set() or stopped.is_set():
            return
        timer = self.clock.call_later(max(0.0, delay), slot.event.set)
        stop = asyncio.ensure_future(stopped.wait())

        def stop_flag_set(done: asyncio.Future[object]) -> None:
            if not done.cancelled():  # cancelled: this pause ended otherwise
                slot.event.set()

        stop.add_done_callback(stop_flag_set)
        try:
            await slot.event.wait()
        finally:
            timer.cancel()
            stop.cancel()

    def _jittered(self, seconds: float) -> float:
        return jittered(seconds, uniform=self.clock.uniform)

    # --- triggers ------------------------------------------------------------------------------

    def on_secret_event(
        self,
        namespace: str,
        name: str,
        change: str,
        labels: Mapping[str, str],
        connections: Iterable[tuple[str, str]],
        syncs: Iterable[str],
        selector_syncs: Iterable[tuple[str, Mapping[str, Any]]],
    ) -> None:
        """A Secret changed: kick the connections and SecretSyncs that read it. The candidates
        come from kopf's indexes, so an event never scans all resources."""
        reason = f"secret {name} {change.lower()}"
        for connection in connections:  # addresses: a cluster connection's Secrets are here too
            self.kick(connection_object(connection), reason)
        for sync in syncs:
            self.kick(("SecretSync", namespace, sync), reason)
        for sync, selector in selector_syncs:
            if selector_matches(dict(selector), dict(labels)):
                self.kick(("SecretSync", namespace, sync), reason)
        for sync in self.engine.readers_of(namespace, name):  # e.g. its label was just removed
            self.kick(("SecretSync", namespace, sync), reason)

    def kick(self, key: Key, reason: str, *, force: bool = False) -> None:
        """Wake an object before its pause ends. A SecretSync's next cycle runs now, or right
        after the one in flight. One not seen yet has nothing to wake: its first cycle, at first
        sight, reads everything as it is then."""
        if key[0] != "SecretSync":
            self.kicks.kick(key, reason, force=force)
            return
        entry = self.syncs.get(key)
        if entry is not None and not entry.stopped:
            entry.reasons.add(reason)
            self._make_due(entry)

    def on_connection_spec_changed(self, namespace: str, name: str) -> None:
        self.kick(connection_object((namespace, name)), "spec changed", force=True)

    def on_access_changed(self, syncs: Iterable[tuple[str, str]], reason: str) -> None:
        """A cluster connection's namespaceSelector or a namespace's labels changed: its users
        (there) run now, and find themselves allowed or not."""
        for namespace, name in syncs:
            self.kick(("SecretSync", namespace, name), reason)

    def superseded(self, change: str, namespace: str, name: str, body: Mapping[str, Any]) -> bool:
        """Whether this event is one of an earlier object of this name, to be ignored by all.

        kopf handles each object (uid) on its own, so a deleted object's last events (its
        deletionTimestamp, its DELETED) can come after a new one of its name was seen (kubectl
        replace --force, a GitOps re-create). Only those last events can be late: a new object
        exists only once the old one is gone, and kopf hands each uid's handler its latest
        event."""
        if not _deleting(change, body):
            return False
        latest = self.uids.get(("SecretSync", namespace, name))
        uid = (body.get("metadata") or {}).get("uid")
        return bool(uid) and latest is not None and latest != uid

    def on_secretsync_event(
        self, change: str, namespace: str, name: str, body: Mapping[str, Any]
    ) -> None:
        """A watch event of a SecretSync of this shard (kopf lists them all at start). The first
        sight schedules its first cycle; spec changes and the sync-requested-at /
        allow-mass-delete annotations kick it; its deletion stops it."""
        key = ("SecretSync", namespace, name)
        entry = self.syncs.get(key)
        meta = body.get("metadata") or {}
        if _deleting(change, body):
            self._forget_unguarded(key)
            self.stop_secretsync(namespace, name)
            if change == "DELETED":
                self.uids.pop(key, None)
                self._gone(key)
            return
        if meta.get("uid"):
            self.uids[key] = str(meta["uid"])
        current = observe(body)
        if self._shut_down:
            return
        if entry is None or entry.stopped:  # stopped: a new object of a deleted one's name
            if self.shard.finalizer not in (meta.get("finalizers") or ()):
                # kopf adds it in answer to this event, and its patch is conditional on this
                # resourceVersion: a first status write before it would make it fail and retry
                # (thousands of conflicts at a cold start), and keys written before it would
                # outlive a deletion. Its event (with the finalizer) is the first sight.
                self._await_finalizer(key, body)
                return
            self._forget_unguarded(key)
            self._first_sight(key, body, current)
            return
        entry.body = kept_body(body, with_status=entry.state.written is None)
        reason = kick_reason(entry.observed, current)
        entry.observed = current
        if reason is not None:
            entry.reasons.add(reason)
            self._make_due(entry)

    # --- InfisicalConnection ------------------------------------------------------------------

    async def run_connection(
        self,
        namespace: str,
        name: str,
        body: Mapping[str, Any],
        stopped: StopSignal,
        dependents: Callable[[], Iterable[tuple[str, str]]],
    ) -> None:
        """Validates at start, on kicks (spec or Secret changes) and every validationInterval,
        until stopped. `dependents` names the SecretSyncs to kick when the connection becomes
        usable."""
        key = connection_object((namespace, name))
        slot = self.kicks.slot(key)
        force, failures = True, 0
        self._first_validation.add(key)
        self._connections_seen.add(key)
        try:
            while not stopped.is_set():
                interval = validation_interval(body.get("spec") or {})
                outcome, notify = await self._validate(key, body, force)
                self._release_held(key)
                ready = outcome is not None and outcome.ready
                metrics.cycle_ended(*key, succeeded=ready)
                if self.shard.owns(namespace, name):  # the shard whose status it is
                    if outcome is None:
                        metrics.reflect_status(*key, None)
                    else:
                        metrics.set_ready(*key, outcome.ready, outcome.reason)
                if notify:
                    for sync_namespace, sync in dependents():
                        if ("SecretSync", sync_namespace, sync) in self.awaiting_ready:
                            self.kick(("SecretSync", sync_namespace, sync), connection_ready(name))
                failures = 0 if outcome is not None and outcome.ready else failures + 1
                retry_after = outcome.retry_after if outcome is not None else None
                delay = self._jittered(next_delay(interval, failures, retry_after))
                await self._pause(slot, delay, stopped)
                force, _reasons = slot.take()
        finally:
            # Deleted, or the operator stops: not at once, or a stopping operator would start
            # every held cycle (shutdown cancels the timers); a deleted connection's users then
            # report it gone.
            self._release_held(key, after=HELD_RELEASE_DELAY)
            # On deletion the session stays until remove_connection: SecretSyncs being deleted
            # with it (a namespace deletion) still need it.
            self.kicks.discard(key)
            self.outages.forget(key)
            metrics.forget_object(*key)

    async def remove_connection(
        self, namespace: str, name: str, users: Callable[[], Awaitable[Collection[str]]]
    ) -> None:
        """An InfisicalConnection is being deleted: kept while SecretSyncs use it (`users`: the
        live referrers, or the API server when they name none), then its session goes (the
        token is revoked). Waits here a while; RetryLater when they take longer."""
        waited, told = 0.0, None
        while current := sorted(await users()):
            message = in_use_message(current)
            if message != told and self.shard.owns(namespace, name):
                told = message
                try:
                    await self.status.patch_status(
                        plural_of(namespace), namespace, name, {"message": message}
                    )
                except KubeUnavailable as problem:
                    message += f" (not in status: {problem})"
            if waited >= IN_USE_WAIT:
                raise RetryLater(message, IN_USE_RETRY_DELAY)
            await self.clock.sleep(IN_USE_POLL)
            waited += IN_USE_POLL
        await self.connections.forget(namespace, name)

    def _release_held(self, key: Key, *, after: float = 0.0) -> None:
        """The connection's first validation ended (whatever its outcome), or its daemon did:
        the SecretSyncs held for it run (`after` seconds from now), and see its state."""
        self._first_validation.discard(key)
        for entry in self._held.pop(key, {}):
            if after:
                self._pause_until_due(entry, after)
            else:
                self._make_due(entry)

    def _hold_for_validation(self, entry: _Sync) -> bool:
        """Whether a due SecretSync waits for a connection's first validation (held until then)."""
        _kind, namespace, _name = entry.key
        for address in connections_used(namespace, entry.body.get("spec") or {}):
            connection = connection_object(address)
            if connection in self._first_validation or self._before_its_daemon(connection):
                self._held.setdefault(connection, {})[entry] = None
                return True
        return False

    def _before_its_daemon(self, connection: Key) -> bool:
        """Whether, in the operator's first seconds, the connection's daemon has not started:
        kopf may not have handed it over yet."""
        remaining = self._started + STARTUP_HOLD - self.clock.monotonic()
        if remaining <= 0 or connection in self._connections_seen:
            return False
        if self._startup_release is None:
            self._startup_release = self.clock.call_later(remaining, self._end_startup_hold)
        return True

    def _end_startup_hold(self) -> None:
        """Those held for a connection whose daemon never started (none by that name) run."""
        for connection in [key for key in self._held if key not in self._first_validation]:
            self._release_held(connection)

    async def _validate(
        self, key: Key, body: Mapping[str, Any], force: bool
    ) -> tuple[Outcome | None, bool]:
        _kind, namespace, name = key
        try:
            validated = await self.connections.reconcile(namespace, name, body, force_login=force)
        except KubeUnavailable as problem:
            self.outages.failed(key, problem)
            return None, False
        except Exception:
            log.exception("validating connection %s/%s failed", namespace, name)
            return None, False
        self.outages.succeeded(key)
        return validated

    # --- SecretSync ---------------------------------------------------------------------------

    def _await_finalizer(self, key: Key, body: Mapping[str, Any]) -> None:
        held = self._unguarded.get(key)
        timer = (
            held[1]
            if held is not None
            else self.clock.call_later(FINALIZER_GRACE, lambda: self._finalizer_late(key))
        )
        self._unguarded[key] = (kept_body(body), timer)

    def _forget_unguarded(self, key: Key) -> None:
        held = self._unguarded.pop(key, None)
        if held is not None:
            held[1].cancel()

    def _finalizer_late(self, key: Key) -> None:
        held = self._unguarded.pop(key, None)
        entry = self.syncs.get(key)
        if held is None or self._shut_down or (entry is not None and not entry.stopped):
            return
        _kind, namespace, name = key
        log.warning(
            "%s/%s: the finalizer %s is still missing after %.0fs (see kopf's messages about "
            "it); syncing without it: if the SecretSync is deleted meanwhile, its keys stay",
            namespace,
            name,
            self.shard.finalizer,
            FINALIZER_GRACE,
        )
        self._first_sight(key, held[0], observe(held[0]))

    def _first_sight(self, key: Key, body: Mapping[str, Any], observed: Observed) -> None:
        entry = _Sync(key, kept_body(body), observed)
        self.syncs[key] = entry
        # What its status says until its first cycle here (after a restart, up to the spread).
        metrics.reflect_status(*key, body.get("status") or {})
        if in_sync_before_start(body):
            # Already in sync before a restart: spread the first cycles so they do not all run
            # at once. A kick (a change) ends the spread; a connection becoming Ready does not.
            # The spread counts from the start, not from first sight: kopf's first pass over
            # thousands of objects takes seconds itself, and would stretch the spread by as much.
            spread = min(sync_interval(body.get("spec") or {}), RESTART_SPREAD)
            due = self._started + self.clock.uniform(0.0, spread)
            self._pause_until_due(entry, due - self.clock.monotonic())
        else:
            self.awaiting_ready.add(key)
            self._make_due(entry)

    def _pause_until_due(self, entry: _Sync, delay: float) -> None:
        entry.timer = self.clock.call_later(max(0.0, delay), lambda: self._make_due(entry))

    def _make_due(self, entry: _Sync) -> None:
        if entry.stopped or entry.queued or entry.cycle is not None:
            return  # a cycle in flight looks at the kicks it missed when it ends
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        entry.queued = True
        self._due.append(entry)
        if self._wake is None:
            self._wake = asyncio.Event()
        self._wake.set()
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch())

    async def _dispatch(self) -> None:
        """Starts the cycles of due SecretSyncs in the order they became due, at most
        cycle_slots at once: 10,000 starting together must not each hold their sources and a
        plan while queueing for the same instances and API server."""
        assert self._wake is not None
        slots = self._cycle_slot()
        while True:
            while not self._due:
                self._wake.clear()
                await self._wake.wait()
            await slots.acquire()
            entry = self._due.popleft()
            entry.queued = False
            if entry.stopped or self._hold_for_validation(entry):
                slots.release()
                continue
            entry.cycle = asyncio.get_running_loop().create_task(self._cycle(entry))

    async def _cycle(self, entry: _Sync) -> None:
        """One cycle of a due SecretSync (holding a cycle slot), then its next pause."""
        key, state = entry.key, entry.state
        interval = delay = sync_interval({})
        try:
            body = entry.body
            spec = body.get("spec") or {}
            interval = delay = sync_interval(spec)
            reasons, entry.reasons = entry.reasons or {"timer"}, set()
            if follows(spec, reasons, owed=entry.owed):
                # Waiting for Ready while the cycle runs: a connection that becomes Ready
                # meanwhile kicks it (at worst one more cycle), never silently passes it by.
                self.awaiting_ready.add(key)
                result = await self._sync(key, body, state, lambda: entry.stopped)
                if self.syncs.get(key) is entry:  # not an object deleted and made again
                    metrics.cycle_ended(*key, succeeded=in_sync(result, state.written))
                    metrics.reflect_status(*key, state.written if result is not None else None)
                entry.owed = result is None or not result.ok
                if entry.owed:
                    self.awaiting_ready.add(key)
                else:
                    self.awaiting_ready.discard(key)
                if result is not None and (result.ok or not result.retryable):
                    state.failures = 0
                else:
                    state.failures += 1
                retry_after = result.retry_after if result is not None else None
                delay = next_delay(interval, state.failures, retry_after)
        except _Stopped:
            pass
        except Exception:  # bookkeeping only: _sync reports the cycle's own failures
            log.exception("scheduling %s/%s failed unexpectedly", key[1], key[2])
            state.failures += 1
            delay = next_delay(interval, state.failures, None)
        finally:
            self._cycle_slot().release()
            entry.cycle = None
            if state.written is not None and "status" in entry.body:
                entry.body = {item: v for item, v in entry.body.items() if item != "status"}
            if entry.stopped:  # also when shutdown() cancelled it
                self._forget_sync(entry)
        if entry.stopped:
            return
        if entry.reasons:  # kicked while it ran
            self._make_due(entry)
        else:
            self._pause_until_due(entry, self._jittered(delay))

    def stop_secretsync(self, namespace: str, name: str) -> None:
        """No cycle of this SecretSync starts any more (it is being deleted); one in flight
        finishes, and the removal waits for it (the lock)."""
        entry = self.syncs.get(("SecretSync", namespace, name))
        if entry is None or entry.stopped:
            return
        entry.stopped = True
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        if entry.cycle is None:
            self._forget_sync(entry)

    def _forget_sync(self, entry: _Sync) -> None:
        key = entry.key
        if self.syncs.get(key) is not entry:  # a new object of that name took its place
            return
        del self.syncs[key]
        self.awaiting_ready.discard(key)
        self.outages.forget(key)
        metrics.forget_object(*key)
        if entry.gone:
            self._gone(key)

    def _gone(self, key: Key) -> None:
        """A SecretSync no longer exists (its deletion handler has usually forgotten it already,
        but not when its finalizer was removed by hand): drop what is kept of it once no cycle
        of it runs."""
        entry = self.syncs.get(key)
        if entry is not None:  # its last cycle still runs: it comes back here when it ends
            entry.gone = True
            return
        _kind, namespace, name = key
        self.written.pop(key, None)
        self.engine.forget(namespace, name)
        lock = self.locks.get(key)
        if lock is not None and not lock.locked():
            del self.locks[key]

    async def shutdown(self, grace: float, cancelled_within: float = 10.0) -> None:
        """The operator exits: no SecretSync cycle starts any more; those in flight get `grace`
        seconds to finish, then are cancelled."""
        self._shut_down = True
        if self._startup_release is not None:
            self._startup_release.cancel()
        for key in list(self._unguarded):
            self._forget_unguarded(key)
        count = len(self.syncs)
        for _kind, namespace, name in list(self.syncs):
            self.stop_secretsync(namespace, name)
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            await asyncio.gather(self._dispatcher, return_exceptions=True)
        running = [entry.cycle for entry in self.syncs.values() if entry.cycle is not None]
        late: set[asyncio.Task[None]] = set()
        if running:
            _done, late = await asyncio.wait(running, timeout=grace)
        if late:
            log.warning(
                "cancelling %d SecretSync cycles still running %.0fs after the stop",
                len(late),
                grace,
            )
            for cycle in late:
                cycle.cancel()
            await asyncio.wait(late, timeout=cancelled_within)
        log.info(
            "stopped %d SecretSyncs: %d cycles in flight finished first, %d cancelled",
            count,
            len(running) - len(late),
            len(late),
        )

    async def _sync(
        self,
        key: Key,
        body: Mapping[str, Any],
        state: _SyncState,
        stopped: Callable[[], bool] = lambda: False,
    ) -> CycleResult | None:
        """One cycle, and a status patch of only what it changed: none when nothing did."""
        _kind, namespace, name = key
        requested = observe(body).sync_requested_at  # what this cycle handles: read at its start
        stored = dict(state.written if state.written is not None else body.get("status") or {})

        async def mark_running() -> None:
            nonlocal stored
            # Until it is answered, either syncStatus may be stored (a patch that timed out can
            # still be applied): unknown, so that the outcome writes its own whatever it is.
            stored = {item: value for item, value in stored.items() if item != "syncStatus"}
            try:
                await self.status.patch_status(SYNCS, namespace, name, RUNNING)
            except KubeUnavailable as problem:  # the outcome's patch tells whether it lasts
                log.debug("%s/%s: not marked Running: %s", namespace, name, problem)
                return
            except Exception:
                log.exception("marking %s/%s Running failed unexpectedly", namespace, name)
                return
            stored = merge_patch(stored, RUNNING)

        mark = _RunningMark(self.clock, mark_running, f"running mark {namespace}/{name}")
        async with self.lock(key):
            if stopped():  # e.g. a removal took the lock first: this cycle must not write again
                raise _Stopped
            try:
                previous = state.written
                if state.unsure:  # what the API server holds is unknown: no 304 may end this
                    previous = {k: v for k, v in stored.items() if k != "lastRead"}
                async with mark as on_writing:
                    result = await self.engine.run(
                        namespace, name, body, previous, on_writing=on_writing
                    )
                wanted = {**result.status, **acknowledged(requested)}
                changes = dict(wanted) if state.unsure else status_patch(stored, wanted)
                if changes:
                    await self.status.patch_status(SYNCS, namespace, name, changes)
            except KubeUnavailable as problem:
                state.unsure = True
                self.outages.failed(key, problem)
                return None
            except Exception:
                state.unsure = True
                log.exception("sync of %s/%s failed unexpectedly", namespace, name)
                return None
        self.outages.succeeded(key)
        state.unsure = False
        state.written = merge_patch(stored, changes)
        self.written[key] = state.written
        return result

    async def _let_go_of_ledger(self, namespace: str, name: str, uid: str) -> None:
        try:
            await self.engine.let_go_of_ledger(namespace, name, uid)
        except SyncFailed as failure:
            raise RetryLater(f"{failure.message}; retrying", REMOVAL_RETRY_DELAY) from None

    async def remove_secretsync(self, namespace: str, name: str, body: Mapping[str, Any]) -> None:
        """A SecretSync is being deleted: remove (Delete) or release (Retain) its keys, raising
        RetryLater while that fails; or just let go (abandoned)."""
        key = ("SecretSync", namespace, name)
        self.stop_secretsync(namespace, name)  # its watch event may not have been handled yet
        action = deletion_action(body)
        uid = str((body.get("metadata") or {}).get("uid", ""))
        if action == "let go":
            await self._let_go_of_ledger(namespace, name, uid)
            self.engine.forget(namespace, name)
            self.locks.pop(key, None)
            self.written.pop(key, None)
            return
        policy = "Delete" if action == "remove" else "Retain"
        async with self.lock(key):
            latest = self.written.pop(key, None)
            if latest is not None:
                body = {**body, "status": {**(body.get("status") or {}), **latest}}
            try:
                if action == "remove":
                    done = await self.engine.remove_owned(namespace, name, body)
                else:
                    done = await self.engine.release_owned(namespace, name, body)
            except SyncFailed as failure:
                if action == "release" and not failure.retryable:
                    # Retain keeps the keys either way; a connection that cannot be used (or a
                    # refusal) must not hold the object forever. Its metadata stays: a
                    # SecretSync of this name on this cluster adopts them on its first sync.
                    log.warning(
                        "%s/%s deleted: its keys are kept but still carry its ownership "
                        "metadata (%s)",
                        namespace,
                        name,
                        failure.message,
                    )
                    await self._let_go_of_ledger(namespace, name, uid)
                    self.engine.forget(namespace, name)
                    self.locks.pop(key, None)
                    return
                verb = "removing" if action == "remove" else "releasing ownership of"
                message = (
                    f"deletionPolicy {policy}: {verb} owned keys failed: {failure.message}; "
                    f'retrying. Annotate {ABANDON}: "true" to let go without it'
                )
                try:
                    await self.status.patch_status(
                        SYNCS,
                        namespace,
                        name,
                        {"syncStatus": "Failed", "lastSyncMessage": message[:1024]},
                    )
                except KubeUnavailable as problem:
                    message += f" (not in status: {problem})"
                raise RetryLater(message, REMOVAL_RETRY_DELAY) from None
        outcome = "removed" if action == "remove" else "released ownership of (kept)"
        log.info("%s/%s deleted: %s %d owned destination keys", namespace, name, outcome, done)
        self.locks.pop(key, None)
