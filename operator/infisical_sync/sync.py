"""One SecretSync cycle: read source and destination, plan, write, report. And removal.

The wire per cycle (SPEC §2.3.7): one conditional list of the destination, then at most one
batch create, one batch update and one batch delete (chunked). A batch refused because the
destination changed in between (400 exists / 404 missing) is re-planned once from a fresh read.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import SecretStr, ValidationError

from infisical_sync import ledger as ledgers
from infisical_sync import metrics
from infisical_sync.approvals import (
    PendingApproval,
    PlanFingerprint,
    awaited,
    fingerprint,
    opened,
    shown_approval,
)
from infisical_sync.cluster_access import Access, ClusterAccess
from infisical_sync.conditions import (
    CONNECTION_NOT_ALLOWED,
    CONNECTION_NOT_FOUND,
    Condition,
    timestamp,
)
from infisical_sync.connection import ConnectionReconciler, plural_of
from infisical_sync.infisical.client import InfisicalSession
from infisical_sync.infisical.errors import (
    ApprovalRequired,
    Conflict,
    InfisicalError,
    NotFound,
    RateLimited,
)
from infisical_sync.infisical.models import (
    MetadataEntry,
    RemoteSecret,
    SecretListing,
    SecretLocation,
    SecretWrite,
)
from infisical_sync.kube import Kube, KubeUnavailable, WriteForbidden
from infisical_sync.ledger import LEDGER_UNAVAILABLE, LedgerRef, shown_ref
from infisical_sync.planner import (
    ALLOW_MASS_DELETE,
    DestinationKey,
    Owner,
    Plan,
    PlanInput,
    ShownHold,
    owned_by,
    plan,
    without_ownership,
)
from infisical_sync.resources import (
    CLUSTER_KIND,
    CLUSTER_SCOPE,
    NAMESPACED_KIND,
    ConnectionRef,
    SecretSyncSpec,
    describe_connection,
)
from infisical_sync.resume import (
    etag_to_resume,
    infisical_versions,
    inputs_digest,
    kubernetes_versions,
    to_record,
)
from infisical_sync.sources import (
    InfisicalImportTarget,
    KubernetesImportTarget,
    SourceResult,
    read_infisical,
    read_kubernetes,
)
from infisical_sync.sync_status import (
    DESTINATION_READ,
    approval_status,
    failed_status,
    ledger_shown,
    source_condition,
    succeeded_status,
    summary,
    suspended_status,
    transition_events,
    transition_log,
)

log = logging.getLogger(__name__)
PLURAL = "secretsyncs"
CONNECTIONS = "infisicalconnections"
ABANDON = "infisical-sync.dev/abandon"
SYNC_REQUESTED_AT = "infisical-sync.dev/sync-requested-at"
EventPoster = Callable[[Any, str, str, str], None]


class SyncFailed(Exception):
    """A cycle that could not finish; carries the condition it failed on."""

    def __init__(
        self,
        condition: str,
        reason: str,
        message: str,
        *,
        retryable: bool = False,
        retry_after: float | None = None,
        status: Mapping[str, Any] | None = None,
        managed_keys: list[str] | None = None,
        cause: str = "",
    ) -> None:
        super().__init__(message)
        self.condition = condition
        self.reason = reason
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status  # the whole status of this failure, when it has its own
        # The ledger after some of the cycle's writes went through (None: unchanged).
        self.managed_keys = managed_keys
        # The reason behind `reason` when that only says where (a connection's own reason).
        self.cause = cause


class LedgerNameTaken(Exception):
    """The ledger's ConfigMap name is taken by a ConfigMap that is not this SecretSync's."""


class LedgerListMissing(Exception):
    """A list status names (and keeps naming) could be had neither from memory nor from the
    ConfigMap: it cannot be written back next to a changed one."""


# A Kubernetes source is read in full at least this often even while the Secret watch vouches
# that nothing changed: the safety net for an event the watch never delivered.
SOURCE_REREAD_AFTER = 30 * 60.0
WatchedVersion = Callable[[str, str], str | None]  # (namespace, Secret) -> resourceVersion


class _Unchanged(Exception):
    """The destination answered 304 to the ETag status recorded, and nothing else the outcome
    depends on changed: the outcome is the last one."""


@dataclass
class _Cache:
    """Per SecretSync, in memory: the last listings and their ETags, each with the location it
    was read from. An ETag is only ever sent back to that same location."""

    destination_etag: str | None = None
    destination: dict[str, DestinationKey] = field(default_factory=dict)
    destination_at: tuple[str, SecretLocation] | None = None  # (instance URL, location)
    source_etag: str | None = None
    source: dict[str, str] | None = None
    source_at: tuple[str, str] | None = None  # (instance URL, the source spec)
    approval: PendingApproval | None = None  # the change request the current plan waits for
    # The ledger last read from or written to its ConfigMap (digest, keys): not read again
    # while status names the same digest. And the ConfigMap's (name, resourceVersion) then.
    ledger: tuple[str, frozenset[str]] | None = None
    ledger_version: tuple[str, str] | None = None
    # The held plan's keys last read from or written to the ConfigMap (digest, keys).
    approval_keys: tuple[str, frozenset[str]] | None = None

    # When the Kubernetes source was last read in full (monotonic): quiet cycles in between
    # may take its resourceVersions from the Secret watch instead.
    source_read_at: float | None = None

    def forget_destination(self) -> None:
        self.destination_at, self.destination_etag, self.destination = None, None, {}


@dataclass(frozen=True)
class CycleResult:
    status: dict[str, Any]
    ok: bool
    retryable: bool = False
    retry_after: float | None = None


def _recorded_etag(
    previous: Mapping[str, Any],
    instance: str,
    location: SecretLocation,
    inputs: str,
    annotations: Mapping[str, str],
) -> str | None:
    """The ETag status.lastRead recorded for this place and these inputs (a 304 to it means
    the outcome is the last one), else None."""
    return etag_to_resume(
        previous,
        instance_url=instance,
        location=location,
        inputs=inputs,
        mass_delete_confirmation=annotations.get(ALLOW_MASS_DELETE),
    )


def _keeps_metadata(secrets: Sequence[RemoteSecret]) -> bool | None:
    """Whether the server returned secretMetadata with these keys; None when no key tells."""
    shared = [secret for secret in secrets if secret.type == "shared"]
    return all(secret.metadata is not None for secret in shared) if shared else None


def _destination_map(listing_secrets: Any) -> dict[str, DestinationKey]:
    found: dict[str, DestinationKey] = {}
    for secret in listing_secrets:
        if secret.type != "shared":
            continue
        metadata = (
            None
            if secret.metadata is None
            else tuple((entry.key, entry.value) for entry in secret.metadata)
        )
        encrypted = frozenset(e.key for e in secret.metadata or () if e.is_encrypted)
        found[secret.key] = DestinationKey(secret.value.get_secret_value(), metadata, encrypted)
    return found


def _writes(values: Mapping[str, str], result: Plan) -> list[SecretWrite]:
    return [
        SecretWrite(
            key=key,
            value=None if key in result.metadata_only else SecretStr(value),
            metadata=_metadata(result.metadata[key], result.encrypted.get(key, frozenset())),
        )
        for key, value in sorted(values.items())
    ]


async def _unless_held(write: Awaitable[None], held: list[str]) -> bool:
    """Await a write; True when it went through. One a change-approval policy held adds its
    requests to `held`."""
    try:
        await write
    except ApprovalRequired as exc:
        held += exc.approval_ids
        return False
    return True


def _merged_request_keys(
    pending: PendingApproval | None, destination: Mapping[str, DestinationKey]
) -> frozenset[str]:
    """Keys of our open change request that a server without secretMetadata now lists: the
    merged request created them, with no ownership on them but the plan that opened it. On a
    server that keeps metadata the request carried ours, and nothing is taken on trust."""
    if pending is None:
        return frozenset()
    return frozenset(
        key for key in pending.keys if key in destination and destination[key].metadata is None
    )


def _refuse_unknown_request_keys(
    result: Plan,
    destination: Mapping[str, DestinationKey],
    pending: PendingApproval | None,
    problem: str,
) -> None:
    """The held plan's whole key list could not be had (`problem`): keys the plan leaves as
    conflicts and that carry no owner may be ones its request created once merged. None is
    taken for ours; rather than reporting them as someone else's, the cycle stops, saying why."""
    if not problem or pending is None:
        return
    suspects = [
        key for key in result.conflicts if key in destination and destination[key].metadata is None
    ]
    if suspects:
        raise SyncFailed(
            "Synced",
            LEDGER_UNAVAILABLE,
            ledgers.approval_unavailable_message(pending.named(), problem, suspects),
        )


def _other_instance(status: Mapping[str, Any], session: InfisicalSession) -> bool:
    """The last sync wrote to another instance than the connection's current one."""
    recorded = (status.get("destinationLocation") or {}).get("instanceUrl")
    return bool(recorded) and recorded != session.transport.base_url


def shown_hold(status: Mapping[str, Any]) -> ShownHold | None:
    held = status.get("heldDeletes") or {}
    if not held.get("id") or not held.get("since"):
        return None
    return ShownHold(str(held["id"]), str(held["since"]))


def _metadata(
    entries: tuple[tuple[str, str], ...], encrypted: frozenset[str]
) -> list[MetadataEntry]:
    """Entries as written back: those stored encrypted stay encrypted."""
    return [MetadataEntry(key=k, value=v, isEncrypted=k in encrypted) for k, v in entries]


def location_label(connection: str, location: SecretLocation) -> str:
    return f"{connection}/{location.project_id}/{location.environment}:{location.secret_path}"


def connection_label(address: tuple[str, str]) -> str:
    """A connection in location labels (and so in hold ids): a cluster connection's marked."""
    return f"cluster:{address[1]}" if address[0] == CLUSTER_SCOPE else address[1]


def recorded_location(
    status: Mapping[str, Any], namespace: str
) -> tuple[tuple[str, str], SecretLocation] | None:
    """status.destinationLocation: where the last real sync wrote (the connection's address,
    the location)."""
    recorded = status.get("destinationLocation") or {}
    try:
        ref = ConnectionRef(
            name=str(recorded["connection"]), kind=recorded.get("connectionKind") or NAMESPACED_KIND
        )
        return ref.address(namespace), SecretLocation(
            project_id=str(recorded["projectId"]),
            environment=str(recorded["environment"]),
            secret_path=str(recorded["secretPath"]),
        )
    except (KeyError, TypeError, ValidationError):
        return None


class SyncEngine:
    def __init__(
        self,
        kube: Kube,
        connections: ConnectionReconciler,
        *,
        post_event: EventPoster,
        cluster_id: str,
        watched_version: WatchedVersion | None = None,
        access: ClusterAccess | None = None,
    ) -> None:
        self.kube = kube
        # Which namespaces may use which ClusterInfisicalConnection (filled from watch events).
        self.access = access if access is not None else ClusterAccess()
        # A Secret's resourceVersion as the metadata watch knows it (None: cannot vouch).
        self.watched_version = watched_version
        self.connections = connections
        self.post_event = post_event
        self.cluster_id = cluster_id  # part of every key's ownership metadata
        self._caches: dict[tuple[str, str], _Cache] = {}
        # instance URL -> whether it keeps secretMetadata, learnt from any listing with keys:
        # the answer for a destination that is still empty.
        self._keeps_metadata: dict[str, bool] = {}
        # (namespace, Secret) -> SecretSyncs whose last source read included it: a Secret that
        # stops matching a selector (label removed) still wakes the SecretSync it fed.
        self._readers: dict[tuple[str, str], set[str]] = {}
        self._read: dict[tuple[str, str], set[str]] = {}

    def forget(self, namespace: str, name: str) -> None:
        self._caches.pop((namespace, name), None)
        self._remember_reads(namespace, name, set())

    def readers_of(self, namespace: str, secret: str) -> set[str]:
        return set(self._readers.get((namespace, secret), ()))

    def _remember_reads(self, namespace: str, name: str, secrets: set[str]) -> None:
        for secret in self._read.pop((namespace, name), set()) - secrets:
            readers = self._readers.get((namespace, secret), set())
            readers.discard(name)
            if not readers:
                self._readers.pop((namespace, secret), None)
        for secret in secrets:
            self._readers.setdefault((namespace, secret), set()).add(name)
        if secrets:
            self._read[(namespace, name)] = set(secrets)

    # --- one cycle -----------------------------------------------------------------------------

    async def run(
        self,
        namespace: str,
        name: str,
        body: Mapping[str, Any],
        previous_status: Mapping[str, Any] | None = None,
        on_writing: Callable[[], Awaitable[None]] | None = None,
    ) -> CycleResult:
        """One cycle. `previous_status` is the status this process last wrote, which the watched
        body may not show yet; without it (first run after a start) the body's status is used.
        `on_writing` is awaited once before the first write of a cycle (status Running)."""
        started = time.monotonic()
        meta = body.get("metadata") or {}
        previous = dict(
            previous_status if previous_status is not None else body.get("status") or {}
        )
        generation = meta.get("generation")
        now = dt.datetime.now(dt.UTC)
        try:
            spec = SecretSyncSpec.model_validate(dict(body.get("spec") or {}))
        except ValidationError as exc:
            fields = ", ".join(".".join(str(p) for p in err["loc"]) for err in exc.errors())
            failure = SyncFailed("Synced", "InvalidSpec", f"spec is invalid at: {fields}")
            result = self._failed(previous, generation, now, failure, {})
            self._post_transitions(namespace, name, body, previous, result.status)
            return result
        # status.destination names where keys were last written: it moves only with a real
        # sync (or is set the first time), so a changed destination is recognised as new.
        wrote_here = {"source": spec.source.describe(), "destination": spec.destination.describe()}
        described = {
            "source": wrote_here["source"],
            "destination": previous.get("destination") or wrote_here["destination"],
        }
        if spec.suspend:
            return CycleResult(suspended_status(previous, generation, now, described), ok=True)
        owner = Owner(namespace, name, str(meta.get("uid", "")), self.cluster_id)
        annotations = meta.get("annotations") or {}
        known: list[Condition] = []  # conditions the cycle established before any failure
        try:
            status = await self._cycle(
                namespace,
                name,
                spec,
                owner,
                annotations,
                previous,
                generation,
                now,
                on_writing,
                known,
            )
        except _Unchanged:
            metrics.SYNCS.labels("unchanged").inc()
            return CycleResult({}, ok=True)  # nothing planned, nothing written, status as it is
        except SyncFailed as failure:
            metrics.SYNCS.labels("failed").inc()
            result = self._failed(previous, generation, now, failure, described, known)
            await self._keep_ledger(namespace, owner, previous, result.status)
            self._post_transitions(namespace, name, body, previous, result.status)
            return result
        finally:
            metrics.SYNC_DURATION.observe(time.monotonic() - started)
        await self._keep_ledger(namespace, owner, previous, status)
        status.update(described if spec.dry_run else wrote_here)
        metrics.SYNCS.labels("dry_run" if spec.dry_run else "succeeded").inc()
        self._post_transitions(namespace, name, body, previous, status)
        return CycleResult(status, ok=True)

    async def preview(self, namespace: str, name: str, body: Mapping[str, Any]) -> Plan:
        """What the next cycle would plan, from the same reads and ownership test, writing
        nothing (`infisical-sync plan`): the cycle run as a dry run, keeping its plan. Raises
        SyncFailed where a cycle would fail before its plan is made."""
        meta = body.get("metadata") or {}
        try:
            spec = SecretSyncSpec.model_validate(dict(body.get("spec") or {}))
        except ValidationError as exc:
            fields = ", ".join(".".join(str(p) for p in err["loc"]) for err in exc.errors())
            raise SyncFailed("Synced", "InvalidSpec", f"spec is invalid at: {fields}") from None
        if spec.suspend:
            raise SyncFailed("Synced", "Suspended", "spec.suspend is true: no cycle runs")
        made: list[Plan] = []
        try:
            await self._cycle(
                namespace,
                name,
                # A dry run reads all a cycle reads and stops before its first write.
                spec.model_copy(update={"dry_run": True}),
                Owner(namespace, name, str(meta.get("uid", "")), self.cluster_id),
                meta.get("annotations") or {},
                dict(body.get("status") or {}),
                meta.get("generation"),
                dt.datetime.now(dt.UTC),
                on_plan=made.append,
            )
        finally:
            self.forget(namespace, name)  # nothing of a preview stays in memory
        return made[0]

    async def _cycle(
        self,
        namespace: str,
        name: str,
        spec: SecretSyncSpec,
        owner: Owner,
        annotations: Mapping[str, str],
        previous: dict[str, Any],
        generation: int | None,
        now: dt.datetime,
        on_writing: Callable[[], Awaitable[None]] | None = None,
        known: list[Condition] | None = None,
        on_plan: Callable[[Plan], None] | None = None,
    ) -> dict[str, Any]:
        """`on_plan` is given the cycle's (first) plan, once made."""
        known = [] if known is None else known
        cache = self._caches.setdefault((namespace, name), _Cache())
        # Before anything is read: a namespace a cluster connection does not allow reads and
        # writes nothing (and keeps nothing of an earlier listing in memory).
        try:
            await self.check_access(namespace, spec)
        except SyncFailed as refused:
            if refused.reason == CONNECTION_NOT_ALLOWED:
                self._caches.pop((namespace, name), None)
            raise
        destination_address = spec.destination.connection_ref.address(namespace)
        destination_ref = connection_label(destination_address)
        session = self.connections.session(*destination_address)
        if session is None:
            raise await self._connection_not_ready(destination_address)

        instance = session.transport.base_url
        prefetched = await self._probe_unchanged(
            namespace, spec, session, cache, previous, generation, annotations, owner
        )
        source = await self._read_source(namespace, name, spec, cache)
        unreadable = None
        if not source.certain and not source.values:
            unreadable = SyncFailed(
                "SourceReady",
                source.problem_reason,
                "; ".join(source.problems),
                retryable=True,
                retry_after=source.retry_after,
                cause=source.problem_cause,
            )
        else:
            known.append(source_condition(source.facts()))
        inputs = self._inputs(
            spec,
            source,
            cache,
            meta_generation=generation,
            annotations=annotations,
            owner_uid=owner.uid,
        )
        # The destination is read even when the source cannot be: DestinationReady then says
        # what it is now (its connection became Ready, say), not what an earlier cycle saw.
        try:
            location = await self._destination_location(session, spec)
            resume = None
            if inputs is not None and cache.destination_at != (instance, location):
                # Nothing in memory (a restart, or the last outcome was clean and recorded in
                # status.lastRead): the ETag status recorded, when a 304 to it would mean the
                # outcome is the last one.
                resume = _recorded_etag(previous, instance, location, inputs, annotations)
            destination = await self._read_destination(
                session,
                location,
                cache,
                fresh=False,
                # A missing folder is made only for a cycle that will write into it.
                create_missing=unreadable is None and not spec.dry_run,
                resume_etag=resume,
                prefetched=prefetched,
            )
        except SyncFailed as failure:
            if unreadable is None:
                raise
            known.append(Condition("DestinationReady", "False", failure.reason, failure.message))
            raise unreadable from None
        known.append(DESTINATION_READ)
        if unreadable is not None:
            raise unreadable
        # A new destination starts afresh: its first sync is an initial one, and the ledger of
        # the old destination says nothing about keys there.
        moved = previous.get("destination") not in (None, spec.destination.describe()) or (
            _other_instance(previous, session)
        )
        initial = moved or not previous.get("lastSyncedAt")
        ledger = frozenset() if moved else await self._vouched_ledger(namespace, previous, cache)
        ledger_tracked = not moved and previous.get("ownershipTracking") == "Ledger"
        pending, unknown = (None, "") if moved else await self._pending(namespace, previous, cache)

        def plan_input(current: Mapping[str, DestinationKey]) -> PlanInput:
            return PlanInput(
                source=source.values,
                destination=current,
                owner=owner,
                environment=location.environment,
                key_schema=spec.sync_options.key_schema,
                initial=initial,
                initial_behavior=spec.sync_options.initial_sync_behavior,
                disable_deletion=spec.sync_options.disable_secret_deletion,
                mass_delete_confirmation=annotations.get(ALLOW_MASS_DELETE),
                location=location_label(destination_ref, location),
                shown_hold=shown_hold(previous),
                now=timestamp(now),
                source_certain=source.certain,
                uncertain_reason="; ".join(source.problems),
                ledger=ledger | _merged_request_keys(pending, current),
                ledger_tracked=ledger_tracked,
                keep=frozenset(source.keep),
                import_supported=source.import_target is not None,
            )

        result = plan(plan_input(destination))
        _refuse_unknown_request_keys(result, destination, pending, unknown)
        if on_plan is not None:
            on_plan(result)
        import_status: dict[str, Any] = {}
        if spec.dry_run:
            return succeeded_status(
                previous,
                generation,
                now,
                result,
                source.facts(),
                dry_run=True,
                instance_tracking=self._keeps_metadata.get(instance),
            )
        where = f"{session.transport.base_url} {location_label(destination_ref, location)}"
        planned = fingerprint(where, result)
        writing = bool(result.writes or result.import_to_source)
        held = awaited(cache.approval, shown_approval(previous), planned) if writing else None
        if held is not None:
            # An open change request already carries exactly these writes: not sent again.
            cache.approval = held
            raise self._held(previous, generation, now, result, held, known, waiting=True)
        if on_writing is not None and writing:
            await on_writing()
        if result.import_to_source:
            try:
                import_status = await self._import(namespace, source, result.import_to_source, now)
            except ApprovalRequired as exc:  # the Infisical source has an approval policy
                raise self._opened(
                    cache, previous, generation, now, result, planned, exc, known
                ) from None
        # What this cycle's writes made ours or removed, for the ledger if a later write fails.
        written: set[str] = set()
        removed: set[str] = set()

        def partly_written(cut_short: SyncFailed) -> SyncFailed:
            if (written or removed) and not moved:
                kept = (set(result.owned_before) | written) - removed
                cut_short.managed_keys = sorted(kept)
            return cut_short

        try:
            await self._apply(session, location, result, written, removed)
        except ApprovalRequired as exc:
            opened_now = self._opened(cache, previous, generation, now, result, planned, exc, known)
            raise partly_written(opened_now) from None
        except (Conflict, NotFound) as exc:
            log.info(
                "%s/%s: destination changed during the sync (%s); re-planning", namespace, name, exc
            )
            destination = await self._read_destination(session, location, cache, fresh=True)
            again = plan_input(destination)
            result = plan(again)
            try:
                _refuse_unknown_request_keys(result, destination, pending, unknown)
                await self._apply(session, location, result, written, removed)
            except ApprovalRequired as held_again:
                planned = fingerprint(where, result)
                held_failure = self._opened(
                    cache, previous, generation, now, result, planned, held_again, known
                )
                raise partly_written(held_failure) from None
            except SyncFailed as refused:
                raise partly_written(refused) from None
            except InfisicalError as second:
                raise partly_written(self._remote_failure("Synced", second)) from None
        except InfisicalError as exc:
            raise partly_written(self._remote_failure("Synced", exc)) from None
        cache.approval = None
        for action, count in (
            ("create", len(result.create)),
            ("update", len(result.update)),
            ("delete", len(result.delete)),
        ):
            if count:
                metrics.KEYS_CHANGED.labels(action).inc(count)
        if result.writes:
            log.info("%s/%s synced: %s", namespace, name, summary(result))
        if (
            result.metadata_tracking is None
            and result.create
            and instance not in self._keeps_metadata
        ):
            await self._learn_keeps_metadata(session, location, cache)
        confirmation = annotations.get(ALLOW_MASS_DELETE)
        if confirmation is not None and confirmation != result.held_id:
            # Used, or it names no hold shown now: one-shot, it goes.
            await self._consume_confirmation(namespace, name)
        status = succeeded_status(
            previous,
            generation,
            now,
            result,
            source.facts(),
            dry_run=False,
            instance_tracking=self._keeps_metadata.get(instance),
        )
        status.update(import_status)
        status["lastRead"] = to_record(
            status,
            instance_url=instance,
            location=location,
            etag=cache.destination_etag if cache.destination_at == (instance, location) else None,
            inputs=inputs,
            wrote=writing,
        )
        if status["lastRead"] is not None:
            # Its outcome is recorded with the ETag: the next cycle asks with that one, and a
            # 304 ends it without planning. The listing (values included) need not stay in memory.
            cache.forget_destination()
        status["destinationLocation"] = {
            "connection": destination_address[1],
            # Only for a cluster connection: earlier statuses (no kind) stay as they were.
            "connectionKind": CLUSTER_KIND if destination_address[0] == CLUSTER_SCOPE else None,
            "projectId": location.project_id,
            "environment": location.environment,
            "secretPath": location.secret_path,
            "instanceUrl": session.transport.base_url,
        }
        return status

    def _opened(
        self,
        cache: _Cache,
        previous: Mapping[str, Any],
        generation: int | None,
        now: dt.datetime,
        result: Plan,
        planned: PlanFingerprint,
        exc: ApprovalRequired,
        known: Sequence[Condition],
    ) -> SyncFailed:
        """Infisical held this plan's writes and opened change requests: remember them."""
        replaced = cache.approval or shown_approval(previous)
        cache.approval = opened(exc.approval_ids, planned, timestamp(now))
        return self._held(
            previous,
            generation,
            now,
            result,
            cache.approval,
            known,
            waiting=False,
            replaced=replaced,
        )

    def _held(
        self,
        previous: Mapping[str, Any],
        generation: int | None,
        now: dt.datetime,
        result: Plan,
        pending: PendingApproval,
        known: Sequence[Condition],
        *,
        waiting: bool,
        replaced: PendingApproval | None = None,
    ) -> SyncFailed:
        # Not retryable: the next timer tick (or a change) is soon enough to see the merge.
        status = approval_status(
            previous,
            generation,
            now,
            result,
            pending,
            waiting=waiting,
            replaced=replaced,
            described={},
            known=known,
        )
        return SyncFailed("Synced", "ApprovalRequired", status["lastSyncMessage"], status=status)

    async def _consume_confirmation(self, namespace: str, name: str) -> None:
        """allow-mass-delete is one-shot: once its plan ran, the annotation goes."""
        try:
            await self.kube.remove_annotation(PLURAL, namespace, name, ALLOW_MASS_DELETE)
        except Exception as exc:  # its id no longer matches any plan anyway
            log.warning(
                "%s/%s: could not remove the used %s annotation: %s",
                namespace,
                name,
                ALLOW_MASS_DELETE,
                type(exc).__name__,
            )

    # --- reads ---------------------------------------------------------------------------------

    async def check_access(self, namespace: str, spec: SecretSyncSpec) -> None:
        """SyncFailed ConnectionNotAllowed when a ClusterInfisicalConnection the SecretSync uses
        does not allow its namespace (or this operator does not serve them)."""
        for index, ref in enumerate(spec.connection_refs()):
            if ref.kind == CLUSTER_KIND:
                where = "DestinationReady" if index == 0 else "SourceReady"
                await self._check_cluster_access(namespace, ref, where)

    async def _check_cluster_access(self, namespace: str, ref: ConnectionRef, where: str) -> None:
        """SyncFailed ConnectionNotAllowed (`where`: the condition) unless the cluster
        connection `ref` allows `namespace`."""
        if not self.access.served:
            raise SyncFailed(
                where,
                CONNECTION_NOT_ALLOWED,
                f"{describe_connection(ref.address(namespace))}: this operator does not serve "
                "ClusterInfisicalConnections (started with --no-cluster-connections, chart value "
                "clusterConnections.enabled=false); nothing was read or written",
            )
        decision = self.access.decide(ref.name, namespace)
        if decision is Access.UNKNOWN_NAMESPACE:
            try:
                labels = await self.kube.namespace_labels(namespace)
            except ApiException as exc:  # e.g. 403: the chart's RBAC for namespaces is off
                raise SyncFailed(
                    where,
                    CONNECTION_NOT_ALLOWED,
                    f"reading the labels of namespace {namespace} was refused "
                    f"({exc.status}): {describe_connection(ref.address(namespace))} allows "
                    "namespaces by label; nothing was read or written",
                    retryable=True,
                ) from None
            self.access.remember_namespace(namespace, labels or {})
            decision = self.access.decide(ref.name, namespace)
        if decision is Access.UNKNOWN_CONNECTION:
            # Not seen (yet): never allowed without its selector; its state says why.
            raise await self._connection_not_ready(ref.address(namespace))
        if decision is Access.DENIED:
            raise SyncFailed(
                where,
                CONNECTION_NOT_ALLOWED,
                f"{describe_connection(ref.address(namespace))} does not allow namespace "
                f"{namespace} ({self.access.selector_text(ref.name)}); nothing was read or "
                "written",
            )

    async def _connection_not_ready(self, address: tuple[str, str]) -> SyncFailed:
        state = self.connections.state(*address)
        cause = await self._connection_cause(address)
        if state is not None:
            detail = f"{state.reason}: {state.message}"
        elif cause == CONNECTION_NOT_FOUND:
            detail = "it does not exist"
        else:
            detail = "not validated yet"
        return SyncFailed(
            "DestinationReady",
            "ConnectionNotReady",
            f"{describe_connection(address)} is not Ready: {detail}",
            retryable=state is None and not cause,  # not validated yet (just seen): soon, likely
            cause=cause,
        )

    async def _connection_cause(self, address: tuple[str, str]) -> str:
        """Why a connection is not usable, for Reconciling / Stalled: its own reason; when this
        process never validated it, ConnectionNotFound if it does not exist (a typo: someone
        must act), else nothing (just created: its first validation comes)."""
        state = self.connections.state(*address)
        if state is not None:
            return state.reason
        try:
            exists = await self.kube.object_exists(plural_of(address[0]), *address)
        except (KubeUnavailable, ApiException):
            return ""  # cannot tell: as not validated yet
        return "" if exists else CONNECTION_NOT_FOUND

    def _inputs(
        self,
        spec: SecretSyncSpec,
        source: SourceResult,
        cache: _Cache,
        *,
        meta_generation: int | None,
        annotations: Mapping[str, str],
        owner_uid: str,
    ) -> str | None:
        """The digest of what the outcome depends on besides the destination; None when the
        source does not tell its versions (or was not read whole): then every cycle plans."""
        if not source.certain or spec.dry_run:
            return None
        if spec.source.kubernetes is not None:
            versions: dict[str, str] | None = kubernetes_versions(source.resource_versions)
        elif cache.source_at is not None:
            versions = infisical_versions(*cache.source_at, source.etag)
        else:
            versions = None
        if versions is None:
            return None
        return self._digest(versions, meta_generation, annotations, owner_uid)

    def _digest(
        self,
        source_versions: Mapping[str, str],
        generation: int | None,
        annotations: Mapping[str, str],
        owner_uid: str,
    ) -> str:
        return inputs_digest(
            generation=generation,
            requested_at=annotations.get(SYNC_REQUESTED_AT),
            source_versions=source_versions,
            cluster_id=self.cluster_id,
            owner_uid=owner_uid,
        )

    async def _probe_unchanged(
        self,
        namespace: str,
        spec: SecretSyncSpec,
        session: InfisicalSession,
        cache: _Cache,
        previous: Mapping[str, Any],
        generation: int | None,
        annotations: Mapping[str, str],
        owner: Owner,
    ) -> bool:
        """A quiet cycle without reading the source: when the Secret watch vouches for every
        named Secret's resourceVersion and those, with the rest of the inputs, are the ones of
        the outcome status.lastRead recorded, the destination is asked with that ETag; a 304
        ends the cycle (_Unchanged). A 200 fills the cache (True: the cycle goes on with that
        listing); a failed list fails the cycle (SyncFailed), as the full cycle's would.
        Anything else (a selector, nothing to compare with) leaves it to the full cycle. The full
        read still happens at least every SOURCE_REREAD_AFTER, so a change the watch never
        announced is found anyway."""
        source = spec.source.kubernetes
        if (
            source is None
            or source.selector is not None
            or spec.dry_run
            or self.watched_version is None
            or cache.source_read_at is None
            or time.monotonic() - cache.source_read_at > SOURCE_REREAD_AFTER
            or not previous.get("lastRead")
        ):
            return False
        versions: dict[str, str] = {}
        for selection in source.secrets:
            version = self.watched_version(namespace, selection.name)
            if version is None:
                return False
            versions[selection.name] = version
        inputs = self._digest(kubernetes_versions(versions), generation, annotations, owner.uid)
        try:
            location = await self._destination_location(session, spec)
        except SyncFailed:
            return False
        etag = _recorded_etag(previous, session.transport.base_url, location, inputs, annotations)
        if etag is None:
            return False
        try:
            listing = await session.list_secrets(location, etag=etag)
        except NotFound:  # the folder went: the full cycle makes it again
            return False
        except InfisicalError as exc:  # this cycle's destination read: listing again cannot help
            raise self._remote_failure("DestinationReady", exc) from None
        if listing.not_modified:
            raise _Unchanged
        self._keep_listing(session, location, cache, listing)
        return True

    async def _read_source(
        self, namespace: str, name: str, spec: SecretSyncSpec, cache: _Cache
    ) -> SourceResult:
        if spec.source.kubernetes is not None:
            result = await read_kubernetes(self.kube, namespace, spec.source.kubernetes)
            self._remember_reads(namespace, name, result.secret_names)
            cache.source_read_at = time.monotonic() if result.certain else None
            return result
        assert spec.source.infisical is not None
        ref = spec.source.infisical.connection_ref.address(namespace)
        session = self.connections.session(*ref)
        at = (
            session.transport.base_url if session else "",
            spec.source.infisical.model_dump_json(),
        )
        if session is None:  # not Ready: its own reason says whether someone must act
            unusable = await read_infisical(
                None, describe_connection(ref), spec.source.infisical, etag=None, cached=None
            )
            unusable.problem_cause = await self._connection_cause(ref)
            return unusable
        same_place = cache.source_at == at
        result = await read_infisical(
            session,
            describe_connection(ref),
            spec.source.infisical,
            etag=cache.source_etag if same_place else None,
            cached=cache.source if same_place else None,
        )
        if result.certain:
            cache.source_etag, cache.source = result.etag, dict(result.values)
            cache.source_at = at
        return result

    async def _destination_location(
        self, session: InfisicalSession, spec: SecretSyncSpec
    ) -> SecretLocation:
        destination = spec.destination
        try:
            project_id = await session.project_id(
                project_id=destination.project_id, project_slug=destination.project_slug
            )
        except InfisicalError as exc:
            raise self._remote_failure("DestinationReady", exc) from None
        path = destination.secret_path
        path = "/" + "/".join(part for part in path.split("/") if part)
        return SecretLocation(
            project_id=project_id, environment=destination.environment, secret_path=path
        )

    async def _read_destination(
        self,
        session: InfisicalSession,
        location: SecretLocation,
        cache: _Cache,
        *,
        fresh: bool,
        create_missing: bool = True,
        resume_etag: str | None = None,
        prefetched: bool = False,
    ) -> dict[str, DestinationKey]:
        """The destination's keys. `resume_etag`: with nothing in memory for this place, the ETag
        status recorded; a 304 to it raises _Unchanged. `prefetched`: this cycle's probe listed
        it in full a moment ago (into the cache)."""
        at = (session.transport.base_url, location)
        if prefetched and not fresh and cache.destination_at == at:
            return dict(cache.destination)
        if fresh:
            etag = None
        elif cache.destination_at == at:
            etag = cache.destination_etag
        else:
            etag = resume_etag
        try:
            listing = await session.list_secrets(location, etag=etag)
        except NotFound:
            # The folder does not exist yet: mkdir -p, and the destination is empty.
            if not create_missing:
                return {}
            try:
                await session.ensure_folder(location)
            except InfisicalError as exc:
                raise self._remote_failure("DestinationReady", exc) from None
            cache.destination_at, cache.destination_etag, cache.destination = at, None, {}
            return {}
        except InfisicalError as exc:
            raise self._remote_failure("DestinationReady", exc) from None
        if listing.not_modified:
            if cache.destination_at != at:
                raise _Unchanged
            return dict(cache.destination)
        self._keep_listing(session, location, cache, listing)
        return dict(cache.destination)

    def _keep_listing(
        self,
        session: InfisicalSession,
        location: SecretLocation,
        cache: _Cache,
        listing: SecretListing,
    ) -> None:
        """A full listing becomes the cache: the next cycle sends its ETag, and a 304 reuses it."""
        self._remember_keeps_metadata(session, listing.secrets)
        cache.destination_at = (session.transport.base_url, location)
        cache.destination_etag = listing.etag
        cache.destination = _destination_map(listing.secrets)

    def _remember_keeps_metadata(
        self, session: InfisicalSession, secrets: Sequence[RemoteSecret]
    ) -> None:
        keeps = _keeps_metadata(secrets)
        if keeps is not None:
            self._keeps_metadata[session.transport.base_url] = keeps

    async def _learn_keeps_metadata(
        self, session: InfisicalSession, location: SecretLocation, cache: _Cache
    ) -> None:
        """The first keys written into an empty destination on an instance not known yet: list
        them back once to learn whether it keeps secretMetadata (a write's answer never carries
        it, on any generation), so that status.ownershipTracking is right from the first sync.
        Once per instance; the listing becomes the cache, so the next cycle's list is a 304."""
        try:
            listing = await session.list_secrets(location)
        except InfisicalError as exc:  # only the status's wording depends on it
            log.debug("listing %s to learn about secretMetadata failed: %s", location, exc)
            return
        self._keep_listing(session, location, cache, listing)

    # --- writes --------------------------------------------------------------------------------

    async def _apply(
        self,
        session: InfisicalSession,
        location: SecretLocation,
        result: Plan,
        written: set[str],
        removed: set[str],
    ) -> None:
        """The plan's batches. `written` / `removed` collect the keys each batch that went
        through made ours or deleted."""
        held: list[str] = []  # change requests opened: the other batches still go
        try:
            if result.create and await _unless_held(
                session.batch_create(location, _writes(result.create, result)), held
            ):
                written.update(result.create)
            if result.update and await _unless_held(
                session.batch_update(location, _writes(result.update, result)), held
            ):
                written.update(result.update)
            if result.delete and await _unless_held(
                session.batch_delete(location, result.delete), held
            ):
                removed.update(result.delete)
        except InfisicalError:
            if held:
                # Requests are open for part of the plan: they are what is reported (and
                # waited for). Re-planning now would open more for the same writes.
                raise ApprovalRequired("writes held for approval", approval_ids=held) from None
            raise
        if held:
            raise ApprovalRequired("writes held for approval", approval_ids=held)

    async def _import(
        self, namespace: str, source: SourceResult, values: dict[str, str], now: dt.datetime
    ) -> dict[str, Any]:
        """Import modes: write destination keys into the source before the first push."""
        target = source.import_target
        keys = ", ".join(sorted(values))
        try:
            if isinstance(target, KubernetesImportTarget):
                await self.kube.write_secret_keys(
                    namespace, target.name, values, target.resource_version
                )
                where = f"Secret {target.name}"
            elif isinstance(target, InfisicalImportTarget):
                items = [SecretWrite(key=k, value=SecretStr(v)) for k, v in sorted(values.items())]
                await target.session.batch_upsert(target.location, items)
                where = "the Infisical source"
            else:
                raise SyncFailed(
                    "SourceReady", "ImportNotSupported", "this source cannot take imports"
                )
        except ApprovalRequired:
            raise  # the caller waits for it like for any held plan
        except InfisicalError as exc:
            raise self._remote_failure("SourceReady", exc) from None
        except WriteForbidden as exc:
            # A configuration problem, not a transient one: retried at the next timer tick.
            raise SyncFailed(
                "SourceReady",
                "ImportForbidden",
                f"cannot import into the source: {exc}; install the chart with "
                "rbac.secretWrites=true (or grant the operator patch on this Secret), "
                "or use initialSyncBehavior overwrite-destination",
            ) from None
        except Exception as exc:
            if isinstance(exc, SyncFailed):
                raise
            raise SyncFailed(
                "SourceReady",
                "ImportFailed",
                f"importing into the source failed: {type(exc).__name__}",
                retryable=True,
            ) from None
        source.values.update(values)
        return {
            "lastImportedAt": timestamp(now),
            "lastImportMessage": f"imported {len(values)} keys into {where}: {keys}"[:1024],
        }

    async def _owned_at_last_destination(
        self, namespace: str, name: str, body: Mapping[str, Any]
    ) -> tuple[InfisicalSession, SecretLocation, dict[str, DestinationKey]] | None:
        """The keys this SecretSync owns where it last wrote, with the same ownership test as a
        sync. None when that place is unknown (the destination changed and no sync recorded
        where it went), or a cluster connection no longer allows the namespace (then nothing
        is read or written there: the keys stay)."""
        spec = SecretSyncSpec.model_validate(dict(body.get("spec") or {}))
        meta = body.get("metadata") or {}
        status = body.get("status") or {}
        owner = Owner(namespace, name, str(meta.get("uid", "")), self.cluster_id)
        recorded = recorded_location(status, namespace)
        if recorded is not None:
            ref, location = recorded
        elif status.get("destination") in (None, spec.destination.describe()):
            ref, location = spec.destination.connection_ref.address(namespace), None
        else:
            ref = None
        if ref is not None and ref[0] == CLUSTER_SCOPE:
            try:
                cluster_ref = ConnectionRef(name=ref[1], kind=CLUSTER_KIND)
                await self._check_cluster_access(namespace, cluster_ref, "Synced")
            except SyncFailed as refused:
                if refused.reason != CONNECTION_NOT_ALLOWED or refused.retryable:
                    raise
                log.warning(
                    "%s/%s deleted: its keys stay where they are: %s", namespace, name, refused
                )
                self.post_event(
                    body,
                    "Warning",
                    CONNECTION_NOT_ALLOWED,
                    f"keys left in place: {refused.message}",
                )
                return None
        if ref is None:
            log.warning(
                "%s/%s: its destination changed before its last sync recorded where it wrote; "
                "keys at %s are left in place",
                namespace,
                name,
                status.get("destination"),
            )
            return None
        session = self.connections.last_session(*ref)
        if session is None:
            raise await self._connection_not_ready(ref)
        if location is None:
            location = await self._destination_location(session, spec)
        try:
            listing = await session.list_secrets(location)
        except NotFound:  # the folder is gone: nothing of ours is left there
            return session, location, {}
        except InfisicalError as exc:
            raise self._remote_failure("Synced", exc) from None
        self._remember_keeps_metadata(session, listing.secrets)
        destination = _destination_map(listing.secrets)
        # The ledger names keys on the instance it was written on: on another (the connection's
        # URL changed since) a key of the same name is not ours.
        other = _other_instance(status, session)
        cache = self._caches.get((namespace, name)) or _Cache()
        ledger = frozenset() if other else await self._vouched_ledger(namespace, status, cache)
        tracked = status.get("ownershipTracking") == "Ledger"
        owned = {
            key: entry
            for key, entry in destination.items()
            if owned_by(key, entry, owner, ledger, ledger_tracked=tracked)
        }
        return session, location, owned

    async def remove_owned(self, namespace: str, name: str, body: Mapping[str, Any]) -> int:
        """deletionPolicy Delete: remove the keys this SecretSync owns. Returns how many."""
        found = await self._owned_at_last_destination(namespace, name, body)
        owned = sorted(found[2]) if found else []
        if found and owned:
            session, location, _ = found
            try:
                await session.batch_delete(location, owned)
            except ApprovalRequired as exc:
                # Asking again on every retry would open a request each time: the one opened
                # removes the keys once someone merges it.
                log.warning(
                    "%s/%s deleted: removing its keys is held for approval (%s)",
                    namespace,
                    name,
                    exc,
                )
            except InfisicalError as exc:
                raise self._remote_failure("Synced", exc) from None
        uid = str((body.get("metadata") or {}).get("uid", ""))
        if shown_ref(body.get("status") or {}) is not None:
            # Done: a removal run again (the process stops before the SecretSync's finalizer
            # goes) must find nothing to remove, not need the ConfigMap released below.
            try:
                await self.kube.patch_status(
                    PLURAL,
                    namespace,
                    name,
                    {"managedKeys": [], "ledger": None, "keyCounts": {"managed": 0}},
                )
            except (ApiException, KubeUnavailable) as exc:
                problem = f"answered {exc.status}" if isinstance(exc, ApiException) else str(exc)
                raise SyncFailed(
                    "Synced",
                    "LedgerNotReleased",
                    f"recording the removal in status failed ({problem})",
                    retryable=True,
                ) from None
        await self.let_go_of_ledger(namespace, name, uid)
        self.forget(namespace, name)
        return len(owned)

    async def release_owned(self, namespace: str, name: str, body: Mapping[str, Any]) -> int:
        """deletionPolicy Retain: keep the keys and their values, drop our ownership metadata
        so that another SecretSync may adopt them (like Kubernetes' orphan deletion)."""
        found = await self._owned_at_last_destination(namespace, name, body)
        items = [
            SecretWrite(
                key=key,
                metadata=_metadata(without_ownership(entry.metadata), entry.encrypted),
            )
            for key, entry in sorted((found[2] if found else {}).items())
            if entry.metadata is not None  # ledger mode: the ledger goes with the object
        ]
        if found and items:
            session, location, _ = found
            try:
                await session.batch_update(location, items)
            except ApprovalRequired as exc:
                log.warning(
                    "%s/%s deleted: releasing its keys is held for approval (%s)",
                    namespace,
                    name,
                    exc,
                )
            except InfisicalError as exc:
                raise self._remote_failure("Synced", exc) from None
        await self.let_go_of_ledger(
            namespace, name, str((body.get("metadata") or {}).get("uid", ""))
        )
        self.forget(namespace, name)
        return len(items)

    # --- the ledger ----------------------------------------------------------------------------

    async def _vouched_ledger(
        self, namespace: str, status: Mapping[str, Any], cache: _Cache
    ) -> frozenset[str]:
        """The ledger status vouches for: managedKeys whole, or the ConfigMap status.ledger
        names with the list of its digest. SyncFailed (LedgerUnavailable) when that cannot be
        had: no key may then be taken for ours."""
        ref = shown_ref(status)
        if ref is None:
            return frozenset(status.get("managedKeys") or [])
        if cache.ledger is not None and cache.ledger[0] == ref.digest:
            return cache.ledger[1]
        try:
            body = await self.kube.read_configmap(namespace, ref.config_map)
        except ApiException as exc:  # e.g. 403: the operator's RBAC lacks configmaps
            problem = f"reading ConfigMap {ref.config_map} was refused ({exc.status})"
            raise SyncFailed(
                "Synced", LEDGER_UNAVAILABLE, ledgers.unavailable_message(problem)
            ) from None
        found = ledgers.read(ref, body)
        if found.keys is None or body is None:
            raise SyncFailed(
                "Synced", LEDGER_UNAVAILABLE, ledgers.unavailable_message(found.problem)
            )
        cache.ledger = (ref.digest, found.keys)
        # A replace must keep others' finalizers: with some, the next write reads it first.
        version = str(body["metadata"].get("resourceVersion"))
        keep = not ledgers.others_finalizers(body)
        cache.ledger_version = (ref.config_map, version) if keep else None
        return found.keys

    async def _pending(
        self, namespace: str, previous: Mapping[str, Any], cache: _Cache
    ) -> tuple[PendingApproval | None, str]:
        """The change request the last plan waits for, with all the plan's keys; and why they
        could not all be had ("" when they were). Past SHOWN_NAMES keys on a server without
        secretMetadata they are in the ConfigMap, believed only with status's digest; without
        them only those status shows are."""
        if cache.approval is not None:
            return cache.approval, ""
        shown = shown_approval(previous)
        ref = ledgers.approval_ref(previous)
        if shown is None or ref is None:
            return shown, ""
        if cache.approval_keys is None or cache.approval_keys[0] != ref.digest:
            try:
                body = await self.kube.read_configmap(namespace, ref.config_map)
            except ApiException as exc:
                return shown, f"reading ConfigMap {ref.config_map} was refused ({exc.status})"
            found = ledgers.read(ref, body, ledgers.APPROVAL)
            if found.keys is None:
                return shown, found.problem
            cache.approval_keys = (ref.digest, found.keys)
        return replace(shown, keys=tuple(sorted(cache.approval_keys[1]))), ""

    async def _keep_ledger(
        self,
        namespace: str,
        owner: Owner,
        previous: Mapping[str, Any],
        status: dict[str, Any],
    ) -> None:
        """Lists status would show whole because ownership depends on them (the ledger, and the
        keys of a plan held for approval) go to the ConfigMap past SHOWN_NAMES keys, written
        before the status that names it; status then shows the first names and the reference.
        Written only when a list changed. Should the ConfigMap not take them, they stay whole in
        status, as before ConfigMaps. A ConfigMap status stops naming is let go."""
        tracking = status.get("ownershipTracking") or previous.get("ownershipTracking")
        name = ledgers.configmap_name(owner.name)
        cache = self._caches.setdefault((owner.namespace, owner.name), _Cache())
        managed = status.get("managedKeys")  # None: the ledger is not changed by this status
        ledger_before = shown_ref(previous)
        ledger = ledger_before if managed is None else ledgers.wanted_ref(name, managed, tracking)
        # pendingApproval absent: unchanged; null: no request is waited for any more.
        pending = status.get("pendingApproval")
        approval_before = ledgers.approval_ref(previous)
        held = None if pending is None else list(pending.get("keys") or [])
        if "pendingApproval" not in status:
            approval = approval_before
        else:
            approval = None if held is None else ledgers.wanted_ref(name, held, tracking)
        if (ledger is not None and ledger != ledger_before) or (
            approval is not None and approval != approval_before
        ):
            try:
                await self._write_lists(
                    namespace,
                    owner,
                    previous,
                    status,
                    cache,
                    ledger=(ledger_before, ledger, managed),
                    approval=(approval_before, approval, held),
                )
            except (ApiException, KubeUnavailable, LedgerNameTaken, LedgerListMissing) as exc:
                problem = exc.status if isinstance(exc, ApiException) else exc
                log.warning(
                    "%s/%s: key lists stay whole in status: writing ConfigMap %s failed (%s)",
                    owner.namespace,
                    owner.name,
                    name,
                    problem,
                )
                ledger = ledger if ledger == ledger_before else None
                approval = approval if approval == approval_before else None
        elif ledger is None and approval is None and (ledger_before or approval_before):
            # Status stops naming the ConfigMap: nothing needs it to outlive the SecretSync.
            # Its lists stay (never believed without status's digest); it goes with the
            # SecretSync, or is written again should a list grow past SHOWN_NAMES.
            try:
                await self._release(namespace, owner.uid, name, cache)
            except (ApiException, KubeUnavailable) as exc:
                log.warning(
                    "%s/%s: our finalizer stays on ConfigMap %s (%s); it goes when the "
                    "SecretSync is deleted",
                    owner.namespace,
                    owner.name,
                    name,
                    exc.status if isinstance(exc, ApiException) else exc,
                )
        if managed is not None:
            status.update(ledgers.status_fields(managed, ledger))
            if ledger is not None:
                cache.ledger = (ledger.digest, frozenset(managed))
        if pending is not None and held is not None:
            status["pendingApproval"] = ledgers.approval_fields(pending, approval)
            if approval is not None:
                cache.approval_keys = (approval.digest, frozenset(held))

    async def _write_lists(
        self,
        namespace: str,
        owner: Owner,
        previous: Mapping[str, Any],
        status: Mapping[str, Any],
        cache: _Cache,
        *,
        ledger: tuple[LedgerRef | None, LedgerRef | None, Sequence[str] | None],
        approval: tuple[LedgerRef | None, LedgerRef | None, Sequence[str] | None],
    ) -> None:
        """Write the ConfigMap with both lists. Each is (what status names now, what it will
        name, the list it will name when this status gives it). A list status names now is kept
        (as the list, or as the change from it) so that a crash before the new status is written
        loses nothing; one that status names now and keeps naming must be had (from memory or
        the ConfigMap), else LedgerListMissing: nothing is written."""
        name = ledgers.configmap_name(owner.name)
        stored: list[Mapping[str, Any] | None] = []  # the ConfigMap, once read

        async def known(ref: LedgerRef | None, entries: ledgers.Entries) -> frozenset[str] | None:
            if ref is None:
                return None
            memory = cache.ledger if entries == ledgers.LEDGER else cache.approval_keys
            if memory is not None and memory[0] == ref.digest:
                return memory[1]
            if not stored:
                stored.append(await self.kube.read_configmap(namespace, ref.config_map))
            return ledgers.read(ref, stored[0], entries).keys

        async def content(
            lists: tuple[LedgerRef | None, LedgerRef | None, Sequence[str] | None],
            entries: ledgers.Entries,
        ) -> tuple[Collection[str] | None, Collection[str] | None]:
            before, after, given = lists
            if after is None:
                return await known(before, entries), None  # status names it until replaced
            if after == before:
                keys = given if given is not None else await known(before, entries)
                if keys is None:
                    raise LedgerListMissing(f"the list status names is not in ConfigMap {name}")
                return keys, keys
            vouched = None if before is None else await known(before, entries)
            return given, vouched

        keys, vouched = await content(ledger, ledgers.LEDGER)
        held, held_vouched = await content(approval, ledgers.APPROVAL)
        where = status.get("destinationLocation") or previous.get("destinationLocation") or {}

        def body(finalizers: Collection[str] = ()) -> dict[str, Any]:
            return ledgers.configmap(
                namespace=namespace,
                secretsync=owner.name,
                uid=owner.uid,
                keys=keys,
                vouched=vouched,
                approval=held,
                approval_vouched=held_vouched,
                finalizers=finalizers,
                belongs_to=" ".join(
                    str(where.get(field, ""))
                    for field in (
                        "instanceUrl",
                        "connection",
                        "projectId",
                        "environment",
                        "secretPath",
                    )
                ),
            )

        known_version = cache.ledger_version
        version = known_version[1] if known_version and known_version[0] == name else None
        try:
            written = await self.kube.write_configmap(namespace, body(), version)
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise
            # Created by an earlier process, changed or deleted since it was read: read it, and
            # replace it only if it is ours (keeping others' finalizers).
            existing = await self.kube.read_configmap(namespace, name)
            if existing is not None and not ledgers.owned_by_us(existing, owner.uid):
                raise LedgerNameTaken(
                    f"ConfigMap {name} exists and is not this SecretSync's"
                ) from None
            version = None if existing is None else str(existing["metadata"]["resourceVersion"])
            others = [] if existing is None else ledgers.others_finalizers(existing)
            written = await self.kube.write_configmap(namespace, body(others), version)
        cache.ledger_version = (name, written)

    async def _release(self, namespace: str, uid: str, name: str, cache: _Cache | None) -> None:
        """Remove our finalizer from the ConfigMap `name`, when it is this SecretSync's and
        carries it. ApiException (409 after retries, 403) and KubeUnavailable are raised."""
        for attempt in range(3):
            body = await self.kube.read_configmap(namespace, name)
            if body is None or not ledgers.owned_by_us(body, uid):
                return
            without = ledgers.released(body)
            if without is None:
                return
            try:
                written = await self.kube.write_configmap(
                    namespace, without, str(body["metadata"]["resourceVersion"])
                )
            except ApiException as exc:
                if exc.status == 404:
                    return
                if exc.status != 409 or attempt == 2:
                    raise
                continue  # changed since read: read it again
            if cache is not None:
                cache.ledger_version = (name, written)
            return

    async def let_go_of_ledger(self, namespace: str, name: str, uid: str) -> None:
        """The SecretSync is going (removed, released or abandoned): our finalizer leaves its
        ConfigMap, which then goes with it. SyncFailed (retryable) when that could not be done:
        the SecretSync's own finalizer stays until it is."""
        configmap = ledgers.configmap_name(name)
        try:
            await self._release(namespace, uid, configmap, None)
        except (ApiException, KubeUnavailable) as exc:
            problem = f"answered {exc.status}" if isinstance(exc, ApiException) else str(exc)
            raise SyncFailed(
                "Synced",
                "LedgerNotReleased",
                f"removing our finalizer from ConfigMap {configmap} failed ({problem})",
                retryable=True,
            ) from None

    # --- status --------------------------------------------------------------------------------

    def _remote_failure(self, condition: str, exc: InfisicalError) -> SyncFailed:
        return SyncFailed(
            condition,
            exc.reason,
            str(exc),
            retryable=exc.retryable,
            retry_after=exc.retry_after if isinstance(exc, RateLimited) else None,
        )

    def _failed(
        self,
        previous: Mapping[str, Any],
        generation: int | None,
        now: dt.datetime,
        failure: SyncFailed,
        described: Mapping[str, str],
        known: Sequence[Condition] = (),
    ) -> CycleResult:
        if failure.status is not None:  # a failure with a status of its own
            status = {**failure.status, **described}
        else:
            status = failed_status(
                previous,
                generation,
                now,
                condition=failure.condition,
                reason=failure.reason,
                message=failure.message,
                described=described,
                known=known,
                cause=failure.cause,
            )
        if failure.managed_keys is not None:
            status["managedKeys"] = ledger_shown(
                failure.managed_keys, previous.get("ownershipTracking")
            )
        return CycleResult(
            status, ok=False, retryable=failure.retryable, retry_after=failure.retry_after
        )

    def _post_transitions(
        self,
        namespace: str,
        name: str,
        body: Mapping[str, Any],
        previous: Mapping[str, Any],
        status: Mapping[str, Any],
    ) -> None:
        line = transition_log(namespace, name, previous, status)
        if line is not None:
            log.log(line.level, "%s", line.message)
        for event in transition_events(previous, status):
            self.post_event(body, event.type, event.reason, event.message)
