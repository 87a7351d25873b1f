"""Composition root: kopf settings and every kopf registration live here, and nothing else.

Every handler that touches the in-memory state is `async`: kopf runs plain functions in a
thread pool, and asyncio objects (the kick events) must only be touched from the event loop.

kopf types `namespace` as optional (cluster-scoped resources); ours are all namespaced, hence
the `type: ignore[arg-type]` on the decorators.

Handlers only translate kopf events into calls on the scheduler (scheduler.py), which owns the
connections' daemon loops and the SecretSyncs' timetable, and decides when the reconcilers
(connection.py, sync.py) run. SecretSyncs have no kopf daemon: at 10,000 of them, kopf's
per-object daemon (a task, its stopper, the body it keeps) cost more than the syncs themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import kopf
from prometheus_client import start_http_server

from infisical_sync import heap, kopf_trim, leader, metrics
from infisical_sync.cluster_access import ClusterAccess
from infisical_sync.cluster_usage import UsageReport
from infisical_sync.config import Settings
from infisical_sync.connection import ConnectionReconciler
from infisical_sync.fence import Fence
from infisical_sync.infisical.client import ClientPool
from infisical_sync.infisical.transport import TransportOptions
from infisical_sync.kube import (
    GROUP,
    VERSION,
    EventPoster,
    Kube,
    KubeTimeouts,
    load_api_client,
)
from infisical_sync.references import Referrers, sync_connections
from infisical_sync.resharding import Resharding
from infisical_sync.resources import CLUSTER_SCOPE
from infisical_sync.scheduler import RetryLater, Scheduler
from infisical_sync.secret_watch import (
    SecretEvent,
    SecretMeta,
    SecretWatches,
    WatchTimeouts,
    http_client_for,
)
from infisical_sync.sync import SyncEngine

CONNECTIONS = "infisicalconnections"
CLUSTER_CONNECTIONS = "clusterinfisicalconnections"
SYNCS = "secretsyncs"
SYNC_KIND = "SecretSync"
# Stopping: kopf stops the connection daemons first (a validation only reads: cut soon), then
# runs cleanup, which lets the SecretSync cycles in flight finish (they write) before cancelling
# them. All of it must fit in the pod's terminationGracePeriodSeconds (the chart: 45).
CONNECTION_STOP_GRACE = 5.0
STOP_GRACE = 20.0  # seconds a SecretSync cycle in flight may take to finish
CANCELLATION_TIMEOUT = 5.0
STOP_BUDGET = CONNECTION_STOP_GRACE + STOP_GRACE + 2 * CANCELLATION_TIMEOUT
log = logging.getLogger("infisical_sync")
registry = kopf.OperatorRegistry()


class OperatorMemo(kopf.Memo):
    settings: Settings  # set by run_operator before kopf starts
    fence: Fence  # likewise: closed when leader election says this replica may not write
    pool: ClientPool
    kube: Kube
    scheduler: Scheduler
    events: EventPoster
    secret_watches: SecretWatches
    resharding: Resharding
    referrers: Referrers
    access: ClusterAccess  # ClusterInfisicalConnections' selectors, namespaces' labels, users
    usage: UsageReport
    operator_namespace: str  # "" when ClusterInfisicalConnections are not served
    heap_release: asyncio.Task[None]


# --- lifecycle ----------------------------------------------------------------------------------


class _DiffBaseOfConnections(kopf.AnnotationsDiffBaseStorage):
    """kopf's last-handled configuration, kept for InfisicalConnections only.

    kopf stores it (an annotation holding a copy of the spec) after an object's change handlers
    ran, and diffs every event against it. SecretSyncs have no change handlers (the scheduler
    reads spec changes from metadata.generation), so for them storing it is only cost: a PATCH
    and one more watch event per SecretSync created or edited, 10,000 of each at a cold start,
    plus two deep copies of every event's body. For SecretSyncs the essence is empty: nothing to
    copy, nothing changed, nothing stored. (An annotation an earlier version stored stays and is
    not read.)"""

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        if body.get("kind") == SYNC_KIND:
            return {}
        return super().build(body=body, extra_fields=extra_fields)

    def fetch(self, *, body: Any) -> Any:
        if body.get("kind") == SYNC_KIND:
            return {}
        return super().fetch(body=body)

    def store(self, *, body: Any, patch: Any, essence: Any) -> None:
        if body.get("kind") != SYNC_KIND:
            super().store(body=body, patch=patch, essence=essence)


@kopf.on.startup(registry=registry)
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config: Settings = memo.settings
    # Fixed on day one: changing these later makes every object look unhandled. Unsharded they
    # are what they always were; each shard has its own (shards.py says why).
    shard = config.shard
    settings.persistence.finalizer = shard.finalizer
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=shard.annotation_prefix, v1=False
    )
    settings.persistence.diffbase_storage = _DiffBaseOfConnections(
        prefix=shard.annotation_prefix, key="last-handled-configuration"
    )
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 310
    # The first list of 10,000 SecretSyncs is about 100 MB of JSON: in pages, its peak (which the
    # process keeps as RSS long after) is a page's.
    settings.watching.chunk_size = 500
    # Events on transitions only (SPEC §4): our own kopf.event() calls are posted (posting
    # stays enabled, which they need), kopf's log lines ("Handler … succeeded") are not. That is
    # kopf's default since 1.44; pinned here because it is the contract.
    settings.posting.loggers = False
    settings.posting.level = logging.INFO
    settings.scanning.disabled = True  # our resources are known: no CRD discovery RBAC needed
    # The connection daemons return as soon as they are told to stop; give them the time to get
    # there (a revoke on a deleted connection) before kopf falls back to polling them.
    settings.background.instant_exit_timeout = 1.0

    api_client = await asyncio.to_thread(load_api_client, config.kube_concurrency)
    kube = Kube(
        api_client,
        KubeTimeouts(config.kube_connect_timeout, config.kube_request_timeout),
        concurrency=config.kube_concurrency,
        fence=memo.fence,
    )
    pool = ClientPool(
        TransportOptions(
            concurrency=config.concurrency_per_connection,
            connect_timeout=config.connect_timeout,
            request_timeout=config.request_timeout,
            max_attempts=config.max_attempts,
            backoff_base=config.backoff_base,
            backoff_cap=config.backoff_cap,
            fence=memo.fence,
        ),
        batch_max_bytes=config.batch_max_bytes,
        batch_max_keys=config.batch_chunk_size,
    )
    events = EventPoster(kube)
    connections = ConnectionReconciler(
        kube,
        pool,
        post_event=events,
        allowed_instances=config.allowed_instances,
        shard=shard,
        operator_namespace=memo.operator_namespace,
    )
    memo.access = access = ClusterAccess(served=bool(memo.operator_namespace))
    engine = SyncEngine(
        kube,
        connections,
        post_event=events,
        cluster_id=await _cluster_id(config, kube),
        access=access,
    )
    memo.pool = pool
    memo.kube = kube
    memo.events = events
    memo.scheduler = scheduler = Scheduler(
        engine=engine,
        connections=connections,
        status=kube,
        shard=shard,
        cycle_slots=config.max_concurrent_syncs,
    )

    memo.referrers = referrers = Referrers()

    async def connection_released(namespace: str, name: str, _body: Any) -> None:
        await scheduler.remove_connection(namespace, name, _users(memo, namespace, name))

    async def cluster_connection_released(_namespace: str, name: str, _body: Any) -> None:
        await scheduler.remove_connection(CLUSTER_SCOPE, name, _users(memo, CLUSTER_SCOPE, name))

    memo.resharding = Resharding(
        shard,
        kube,
        finish={
            SYNCS: scheduler.remove_secretsync,
            CONNECTIONS: connection_released,
            CLUSTER_CONNECTIONS: cluster_connection_released,
        },
    )
    memo.usage = UsageReport(access, kube, shard, CLUSTER_CONNECTIONS)
    if memo.operator_namespace:
        memo.usage.start()
    watched = None if _clusterwide(config) else config.namespaces
    if watched is not None and memo.operator_namespace and memo.operator_namespace not in watched:
        watched = [*watched, memo.operator_namespace]  # cluster connections' Secrets
    # Secrets are not watched by kopf (it would hold every Secret's data): our own watch sees
    # their metadata only, and the referrers (filled from events, live) name who reads each one.
    memo.secret_watches = SecretWatches.start(
        http_client_for(
            api_client.configuration,
            WatchTimeouts(connect=config.kube_connect_timeout, request=config.kube_request_timeout),
        ),
        watched,
        _secret_changed(memo.scheduler, referrers),
    )
    # Quiet cycles take the source's resourceVersions from it instead of reading the Secrets.
    engine.watched_version = memo.secret_watches.version
    memo.heap_release = asyncio.create_task(heap.release_periodically(), name="heap release")
    log.info("infisical-sync operator started (shard %s)", shard)


def _secret_changed(scheduler: Scheduler, referrers: Referrers) -> SecretEvent:
    def changed(change: str, secret: SecretMeta) -> None:
        key = (secret.namespace, secret.name)
        scheduler.on_secret_event(
            secret.namespace,
            secret.name,
            change,
            secret.labels,
            connections=referrers.connections_by_secret.get(key),
            syncs=referrers.syncs_by_secret.get(key),
            selector_syncs=referrers.syncs_by_selector.get(secret.namespace),
        )

    return changed


def _users(memo: Any, namespace: str, name: str) -> Callable[[], Awaitable[list[str]]]:
    """This replica's SecretSyncs that use a connection (a cluster connection's: namespace/name).
    The referrers first; when they name none (they may not have seen every SecretSync yet, right
    after a start), the API server."""
    address = (namespace, name)
    cluster = namespace == CLUSTER_SCOPE

    def named(sync_namespace: str, sync: str) -> str:
        return f"{sync_namespace}/{sync}" if cluster else sync

    async def users() -> list[str]:
        known = memo.referrers.syncs_by_connection.get(address)
        if cluster and not known:  # every shard's users, kept from all SecretSync events
            shard = memo.settings.shard
            known = [sync for sync in memo.access.users(name) if shard.owns(*sync)]
        if known:
            return sorted(named(*sync) for sync in known)
        if not cluster:
            listed = await memo.kube.list_objects(SYNCS, namespace)
        elif _clusterwide(memo.settings):
            listed = await memo.kube.list_objects(SYNCS, None)
        else:  # the watched namespaces: the operator may list nothing beyond them
            listed = [
                item
                for watched in memo.settings.namespaces
                for item in await memo.kube.list_objects(SYNCS, watched)
            ]
        return sorted(
            named(meta["namespace"], meta["name"])
            for item in listed
            if memo.settings.shard.owns((meta := item["metadata"])["namespace"], meta["name"])
            and address in sync_connections(meta["namespace"], "", item.get("spec") or {})
        )

    return users


async def _cluster_id(config: Settings, kube: Kube) -> str:
    """Part of every written key's owner identity: a same-named SecretSync of another cluster
    writing the same Infisical path is then a conflict, not the same owner."""
    if config.cluster_id:
        return config.cluster_id
    try:
        return await kube.namespace_uid("kube-system")
    except Exception as exc:
        raise kopf.PermanentError(
            "cannot read the kube-system namespace for this cluster's identity "
            f"({type(exc).__name__}); grant get on it or set --cluster-id"
        ) from None


@kopf.on.login(registry=registry)
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    # A custom registry gets no default login handlers: in-cluster first, then kubeconfig.
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.cleanup(registry=registry)
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    heap_release: asyncio.Task[None] | None = getattr(memo, "heap_release", None)
    if heap_release is not None:
        heap_release.cancel()
    usage: UsageReport | None = getattr(memo, "usage", None)
    if usage is not None:
        await usage.stop()
    scheduler: Scheduler | None = getattr(memo, "scheduler", None)
    if scheduler is not None:  # first: its cycles in flight still use everything below
        await scheduler.shutdown(STOP_GRACE, cancelled_within=CANCELLATION_TIMEOUT)
    watches: SecretWatches | None = getattr(memo, "secret_watches", None)
    if watches is not None:
        await watches.stop()
    resharding: Resharding | None = getattr(memo, "resharding", None)
    if resharding is not None:
        await resharding.stop()
    events: EventPoster | None = getattr(memo, "events", None)
    if events is not None:
        await events.settle()
    pool: ClientPool | None = getattr(memo, "pool", None)
    if pool is not None:
        await pool.aclose()
    kube: Kube | None = getattr(memo, "kube", None)
    if kube is not None:
        await kube.aclose()


@kopf.on.probe(id="now", registry=registry)
async def probe_now(**_: Any) -> str:
    return dt.datetime.now(dt.UTC).isoformat()


# --- shards -------------------------------------------------------------------------------------


def _owned(*, namespace: str | None, name: str, memo: Any, **_: Any) -> bool:
    """This replica's SecretSyncs (all of them unsharded). Every shard handles every
    InfisicalConnection (its SecretSyncs need a session); the owner of one writes its status."""
    settings: Settings = memo.settings
    return settings.shard.owns(namespace or "", name)


# --- InfisicalConnection ------------------------------------------------------------------------


@kopf.on.event(GROUP, VERSION, CONNECTIONS, registry=registry)  # type: ignore[arg-type]
async def connection_event(
    type: str, namespace: str, name: str, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    # Every shard: its SecretSyncs may read this connection's Secrets.
    spec = body.get("spec") or {}
    memo.referrers.connection_seen(type, (namespace, name), spec, secrets_namespace=namespace)
    if memo.settings.shard.owns(namespace, name):
        memo.resharding.on_event(type, CONNECTIONS, namespace, name, body)


@kopf.on.update(GROUP, VERSION, CONNECTIONS, field="spec", registry=registry)  # type: ignore[arg-type]
async def connection_spec_changed(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    memo.scheduler.on_connection_spec_changed(namespace, name)


# The daemons stop on `stopped`: kopf only cancels one (and says so in a WARNING) that is still
# busy after cancellation_backoff, e.g. a validation stuck behind a slow instance.
@kopf.daemon(  # type: ignore[arg-type]
    GROUP,
    VERSION,
    CONNECTIONS,
    cancellation_backoff=CONNECTION_STOP_GRACE,
    cancellation_timeout=CANCELLATION_TIMEOUT,
    registry=registry,
)
async def connection_daemon(
    namespace: str,
    name: str,
    body: kopf.Body,
    memo: kopf.Memo,
    stopped: kopf.DaemonStopped,
    **_: Any,
) -> None:
    await _run_connection(memo, namespace, name, body, stopped)


async def _run_connection(
    memo: Any, namespace: str, name: str, body: kopf.Body, stopped: kopf.DaemonStopped
) -> None:
    await memo.scheduler.run_connection(
        namespace,
        name,
        body,
        stopped,
        dependents=lambda: memo.referrers.syncs_by_connection.get((namespace, name)),
    )


# --- ClusterInfisicalConnection (registered by run_operator when served) ------------------------
# The same daemon and deletion as an InfisicalConnection's, addressed (CLUSTER_SCOPE, name).


async def cluster_connection_event(
    type: str, name: str, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    spec = body.get("spec") or {}
    address = (CLUSTER_SCOPE, name)
    memo.referrers.connection_seen(type, address, spec, secrets_namespace=memo.operator_namespace)
    if memo.access.connection_seen(type, name, spec):
        users = memo.referrers.syncs_by_connection.get(address)
        memo.scheduler.on_access_changed(users, f"namespaceSelector of {name} changed")
    if memo.settings.shard.owns(CLUSTER_SCOPE, name):
        memo.resharding.on_event(type, CLUSTER_CONNECTIONS, CLUSTER_SCOPE, name, body)
    memo.usage.wake()


async def cluster_connection_spec_changed(
    name: str, diff: kopf.Diff, memo: kopf.Memo, **_: Any
) -> None:
    # Who may use it is not how it logs in: a selector change alone re-validates nothing (its
    # event handler has already kicked the SecretSyncs concerned).
    if not only_namespace_selector(diff):
        memo.scheduler.on_connection_spec_changed(CLUSTER_SCOPE, name)


def only_namespace_selector(diff: kopf.Diff) -> bool:
    """Whether a spec diff (paths relative to spec) changes nothing but namespaceSelector."""
    return bool(diff) and all(tuple(item[1])[:1] == ("namespaceSelector",) for item in diff)


async def cluster_connection_daemon(
    name: str, body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any
) -> None:
    await _run_connection(memo, CLUSTER_SCOPE, name, body, stopped)


async def cluster_connection_deleted(name: str, memo: kopf.Memo, **_: Any) -> None:
    await _connection_deleted(memo, CLUSTER_CONNECTIONS, CLUSTER_SCOPE, name)


async def namespace_event(type: str, name: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A namespace's labels decide which cluster connections its SecretSyncs may use."""
    labels = (body.get("metadata") or {}).get("labels") or {}
    if memo.access.namespace_seen(type, name, labels) and type != "DELETED":
        users = memo.referrers.cluster_users_by_namespace.get(name)
        memo.scheduler.on_access_changed(
            [(name, sync) for sync in users], f"labels of namespace {name} changed"
        )
        memo.usage.wake()


def _serve_cluster_connections() -> None:
    """Register the ClusterInfisicalConnection and Namespace handlers (once per process)."""
    if getattr(_serve_cluster_connections, "done", False):
        return
    _serve_cluster_connections.done = True  # type: ignore[attr-defined]
    kopf.on.event(GROUP, VERSION, CLUSTER_CONNECTIONS, registry=registry)(cluster_connection_event)
    kopf.on.update(GROUP, VERSION, CLUSTER_CONNECTIONS, field="spec", registry=registry)(
        cluster_connection_spec_changed
    )
    kopf.daemon(
        GROUP,
        VERSION,
        CLUSTER_CONNECTIONS,
        cancellation_backoff=CONNECTION_STOP_GRACE,
        cancellation_timeout=CANCELLATION_TIMEOUT,
        registry=registry,
    )(cluster_connection_daemon)
    kopf.on.delete(GROUP, VERSION, CLUSTER_CONNECTIONS, registry=registry)(
        cluster_connection_deleted
    )
    kopf.on.event("", "v1", "namespaces", registry=registry)(namespace_event)


@kopf.on.delete(GROUP, VERSION, CONNECTIONS, registry=registry)  # type: ignore[arg-type]
async def connection_deleted(
    namespace: str,
    name: str,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """Kept while SecretSyncs use it: deleting a namespace deletes both at once, and theirs
    must finish removing or releasing keys through it first."""
    await _connection_deleted(memo, CONNECTIONS, namespace, name)


async def _connection_deleted(memo: Any, plural: str, namespace: str, name: str) -> None:
    if memo.settings.shard.owns(namespace, name):
        await memo.resharding.on_deleting(plural, namespace, name)
    try:
        await memo.scheduler.remove_connection(namespace, name, _users(memo, namespace, name))
    except RetryLater as retry:
        raise kopf.TemporaryError(retry.message, delay=retry.delay) from None


# --- SecretSync ---------------------------------------------------------------------------------


@kopf.on.event(GROUP, VERSION, SYNCS, registry=registry)  # type: ignore[arg-type]
async def secretsync_event(
    type: str, namespace: str, name: str, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    # Every shard: a cluster connection's status counts all its users (UsageReport).
    memo.access.sync_seen(type, namespace, name, body)
    memo.usage.wake()
    if not memo.settings.shard.owns(namespace, name):
        return
    if memo.scheduler.superseded(type, namespace, name, body):
        return  # the last events of an earlier object of this name: the maps are the new one's
    memo.referrers.sync_seen(type, namespace, name, body.get("spec") or {})
    memo.resharding.on_event(type, SYNCS, namespace, name, body)
    memo.scheduler.on_secretsync_event(type, namespace, name, body)


@kopf.on.delete(GROUP, VERSION, SYNCS, when=_owned, registry=registry)  # type: ignore[arg-type]
async def secretsync_deleted(
    namespace: str, name: str, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    await memo.resharding.on_deleting(SYNCS, namespace, name)
    try:
        await memo.scheduler.remove_secretsync(namespace, name, body)
    except RetryLater as retry:
        raise kopf.TemporaryError(retry.message, delay=retry.delay) from None


# --- entry point --------------------------------------------------------------------------------


def _operator_namespace(settings: Settings) -> str:
    """Where ClusterInfisicalConnections' Secrets are: the setting, else the pod's namespace;
    "" when they are not served."""
    if not settings.cluster_connections:
        return ""
    if settings.operator_namespace:
        return settings.operator_namespace
    with contextlib.suppress(OSError):
        return leader.SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    return ""


def _clusterwide(settings: Settings) -> bool:
    return settings.all_namespaces or not settings.namespaces


class _NoNewsAtDebug(logging.Filter):
    """kopf logs every successful run of an event handler at INFO, i.e. a line per
    watch event (thousands an hour at 1000 SecretSyncs) saying nothing happened: DEBUG here.
    Failures, change handlers (update, delete), daemons and activities keep their levels."""

    def __init__(self, event_handlers: list[str]) -> None:
        super().__init__()
        handlers = "|".join(re.escape(name) for name in event_handlers)
        self.no_news = re.compile(rf"^Handler '(?:{handlers})' succeeded\.$")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and self.no_news.match(record.getMessage()):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


class RetriesAreWarnings(logging.Filter):
    """kopf logs every Kubernetes API request it is about to retry at ERROR ("Request attempt
    #1/9 failed; will retry"), e.g. a 429 while the API server's cache for a new CRD fills, or
    a 503 during its upgrade. Nothing failed yet: WARNING. The last attempt, when it fails,
    keeps kopf's ERROR ("escalating")."""

    RETRY = re.compile(r"^Request attempt #?[\d/]+ failed; will retry")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and self.RETRY.match(record.getMessage()):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _trim_kopf_bodies() -> None:
    """Half of what kopf holds per object: see kopf_trim."""
    watching: Any = None
    with contextlib.suppress(ImportError):  # moved: kopf_trim says so and leaves bodies whole
        from kopf._cogs.clients import watching
    kopf_trim.trim_watched_bodies(watching)


def run_operator(settings: Settings) -> int:
    kopf.configure(
        debug=settings.log_level == "DEBUG",
        verbose=settings.log_level == "DEBUG",
        quiet=settings.log_level in ("WARNING", "ERROR"),
        log_format=kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.PLAIN,
    )
    # Third-party HTTP loggers would print URLs at INFO and more at DEBUG: keep them quiet.
    for noisy in ("httpx", "httpcore", "kubernetes"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # urllib3 (the Kubernetes client's) WARNs on every retried connection: during an API server
    # outage that is three lines a call; the scheduler reports outages once per object.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    for handler in logging.getLogger().handlers:  # the one kopf.configure installed
        handler.addFilter(RetriesAreWarnings())
    logging.getLogger("kopf.objects").addFilter(
        _NoNewsAtDebug(
            ["secretsync_event", "connection_event", "cluster_connection_event", "namespace_event"]
        )
    )
    served_from = _operator_namespace(settings)
    if served_from:
        _serve_cluster_connections()
    elif settings.cluster_connections:  # outside a pod: development and tests
        log.info(
            "ClusterInfisicalConnections are not served: the operator's namespace (where their "
            "Secrets are) is unknown outside a pod; set --operator-namespace"
        )
    _trim_kopf_bodies()
    metrics.SHARD.labels(str(settings.shard.index), str(settings.shard.count)).set(1)
    if settings.metrics_port:  # before leader election: a standby reports its gauges too
        start_http_server(settings.metrics_port)
    liveness = f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None

    async def operate(fence: Fence, stop_flag: asyncio.Event | None) -> None:
        await kopf.operator(
            registry=registry,
            clusterwide=_clusterwide(settings),
            namespaces=settings.namespaces,
            standalone=True,  # several replicas: leader election (leader.py), not kopf peering
            liveness_endpoint=liveness,
            stop_flag=stop_flag,
            memo=OperatorMemo(settings=settings, fence=fence, operator_namespace=served_from),
        )

    if settings.leader_election:
        return asyncio.run(leader.run_elected(settings, operate))
    metrics.LEADER.set(1)
    asyncio.run(operate(Fence(), None))
    return 0
