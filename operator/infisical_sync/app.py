"""Composition root: kopf settings and every kopf registration live here, and nothing else.

Every handler that touches the in-memory runtime is `async`: kopf runs plain functions in a
thread pool, and asyncio objects (the kick events) must only be touched from the event loop.

kopf types `namespace` as optional (cluster-scoped resources); ours are all namespaced, hence
the `type: ignore[arg-type]` on the decorators.

Handlers only translate kopf events into calls on the reconcilers (connection.py, sync
engine) and kicks of per-object daemons; the logic and the I/O adapters live elsewhere.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
from typing import Any

import kopf
from prometheus_client import start_http_server

from infisical_sync.config import Settings
from infisical_sync.connection import ConnectionReconciler
from infisical_sync.durations import jittered, retry_delay, sync_interval, validation_interval
from infisical_sync.infisical.client import ClientPool
from infisical_sync.infisical.transport import TransportOptions
from infisical_sync.kube import GROUP, VERSION, Kube, load_api_client
from infisical_sync.planner import ALLOW_MASS_DELETE
from infisical_sync.runtime import Kicks, Runtime
from infisical_sync.selectors import selector_matches
from infisical_sync.sync import (
    ABANDON,
    SYNC_REQUESTED_AT,
    SyncEngine,
    SyncFailed,
)

PREFIX = "infisical-sync.dev"
CONNECTIONS = "infisicalconnections"
SYNCS = "secretsyncs"
log = logging.getLogger("infisical_sync")
registry = kopf.OperatorRegistry()
_settings = Settings()  # replaced by run_operator before kopf starts


class OperatorMemo(kopf.Memo):
    runtime: Runtime
    connections: ConnectionReconciler
    engine: SyncEngine
    kube: Kube


def _post_event(body: Any, type_: str, reason: str, message: str) -> None:
    kopf.event(body, type=type_, reason=reason, message=message[:1000])


# --- lifecycle ----------------------------------------------------------------------------------


@kopf.on.startup(registry=registry)
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Fixed on day one: changing these later makes every object look unhandled.
    settings.persistence.finalizer = f"{PREFIX}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX, v1=False)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration"
    )
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 310
    settings.posting.level = logging.INFO
    settings.scanning.disabled = True  # our resources are known: no CRD discovery RBAC needed

    config = _settings
    if config.metrics_port:
        start_http_server(config.metrics_port)
    api_client = await asyncio.to_thread(load_api_client)
    kube = Kube(api_client)
    pool = ClientPool(
        TransportOptions(
            concurrency=config.concurrency_per_connection,
            connect_timeout=config.connect_timeout,
            request_timeout=config.request_timeout,
            max_attempts=config.max_attempts,
            backoff_base=config.backoff_base,
            backoff_cap=config.backoff_cap,
        ),
        chunk_size=config.batch_chunk_size,
    )
    memo.runtime = Runtime(settings=config, pool=pool, kicks=Kicks())
    memo.connections = ConnectionReconciler(
        kube, pool, post_event=_post_event, allowed_instances=config.allowed_instances
    )
    memo.engine = SyncEngine(
        kube, memo.connections, post_event=_post_event, cluster_id=await _cluster_id(config, kube)
    )
    memo.kube = kube
    log.info("infisical-sync operator started")


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
    runtime: Runtime | None = getattr(memo, "runtime", None)
    if runtime is not None:
        await runtime.pool.aclose()


@kopf.on.probe(id="now", registry=registry)
async def probe_now(**_: Any) -> str:
    return dt.datetime.now(dt.UTC).isoformat()


# --- indexes ------------------------------------------------------------------------------------


@kopf.index(GROUP, VERSION, CONNECTIONS, registry=registry)  # type: ignore[arg-type]
async def connections_by_secret(
    namespace: str, name: str, spec: kopf.Spec, **_: Any
) -> dict[tuple[str, str], str]:
    """(namespace, Secret name) -> connection name, for the credentials and CA Secrets."""
    credentials = (spec.get("credentials") or {}).get("secretRef") or {}
    ca_ref = (spec.get("tls") or {}).get("caSecretRef") or {}
    keys = {credentials.get("name"), ca_ref.get("name")} - {None}
    return {(namespace, str(secret)): name for secret in keys}


@kopf.index(GROUP, VERSION, SYNCS, registry=registry)  # type: ignore[arg-type]
async def syncs_by_connection(
    namespace: str, name: str, spec: kopf.Spec, **_: Any
) -> dict[tuple[str, str], str]:
    """(namespace, connection name) -> SecretSync name, for destination and Infisical source."""
    refs = [
        ((spec.get("destination") or {}).get("connectionRef") or {}).get("name"),
        (((spec.get("source") or {}).get("infisical") or {}).get("connectionRef") or {}).get(
            "name"
        ),
    ]
    return {(namespace, str(ref)): name for ref in refs if ref}


@kopf.index(GROUP, VERSION, SYNCS, registry=registry)  # type: ignore[arg-type]
async def syncs_by_secret(
    namespace: str, name: str, spec: kopf.Spec, **_: Any
) -> dict[tuple[str, str], str]:
    """(namespace, Secret name) -> SecretSync name, for Secrets listed by name."""
    listed = ((spec.get("source") or {}).get("kubernetes") or {}).get("secrets") or []
    return {(namespace, str(item["name"])): name for item in listed if item.get("name")}


@kopf.index(GROUP, VERSION, SYNCS, registry=registry)  # type: ignore[arg-type]
async def syncs_by_selector(
    namespace: str, name: str, spec: kopf.Spec, **_: Any
) -> dict[str, tuple[str, dict[str, Any]]]:
    """namespace -> (SecretSync name, label selector), for selector sources."""
    selector = ((spec.get("source") or {}).get("kubernetes") or {}).get("selector")
    return {namespace: (name, dict(selector))} if selector else {}


# --- Secrets ------------------------------------------------------------------------------------


@kopf.on.event("", "v1", "secrets", registry=registry)  # type: ignore[arg-type]
async def secret_event(
    type: str,
    namespace: str,
    name: str,
    labels: kopf.Labels,
    memo: kopf.Memo,
    connections_by_secret: kopf.Index[tuple[str, str], str],
    syncs_by_secret: kopf.Index[tuple[str, str], str],
    syncs_by_selector: kopf.Index[str, tuple[str, dict[str, Any]]],
    **_: Any,
) -> None:
    """Index lookups only: a Secret event never scans all resources."""
    if not type or not namespace:  # the initial listing: daemons run on start anyway
        return
    runtime: Runtime = memo.runtime
    reason = f"secret {name} {type.lower()}"
    for connection in connections_by_secret.get((namespace, name), []):
        runtime.kicks.kick(("InfisicalConnection", namespace, connection), reason)
    for sync in syncs_by_secret.get((namespace, name), []):
        runtime.kicks.kick(("SecretSync", namespace, sync), reason)
    for sync, selector in syncs_by_selector.get(namespace, []):
        if selector_matches(selector, dict(labels)):
            runtime.kicks.kick(("SecretSync", namespace, sync), reason)
    for sync in memo.engine.readers_of(namespace, name):  # e.g. its label was just removed
        runtime.kicks.kick(("SecretSync", namespace, sync), reason)


# --- InfisicalConnection ------------------------------------------------------------------------


@kopf.on.update(GROUP, VERSION, CONNECTIONS, field="spec", registry=registry)  # type: ignore[arg-type]
async def connection_spec_changed(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    memo.runtime.kicks.kick(("InfisicalConnection", namespace, name), "spec changed", force=True)


@kopf.daemon(GROUP, VERSION, CONNECTIONS, cancellation_timeout=10, registry=registry)  # type: ignore[arg-type]
async def connection_daemon(
    namespace: str,
    name: str,
    body: kopf.Body,
    memo: kopf.Memo,
    syncs_by_connection: kopf.Index[tuple[str, str], str],
    **_: Any,
) -> None:
    """Validates at start, on kicks (spec or Secret changes) and every validationInterval."""
    runtime: Runtime = memo.runtime
    reconciler: ConnectionReconciler = memo.connections
    key = ("InfisicalConnection", namespace, name)
    slot = runtime.kicks.slot(key)
    force, failures = True, 0
    try:
        while True:
            interval = validation_interval(body.get("spec") or {})
            try:
                outcome, notify = await reconciler.reconcile(
                    namespace, name, body, force_login=force
                )
            except Exception:
                log.exception("validating connection %s/%s failed", namespace, name)
                outcome, notify = None, False
            if notify:
                for sync in syncs_by_connection.get((namespace, name), []):
                    runtime.kicks.kick(("SecretSync", namespace, sync), f"connection {name} ready")
            if outcome is not None and outcome.ready:
                failures, delay = 0, jittered(interval)
            else:
                failures += 1
                retry_after = outcome.retry_after if outcome is not None else None
                delay = jittered(retry_delay(interval, failures, retry_after))
            force, _reasons = await slot.wait(delay)
    finally:
        runtime.kicks.discard(key)
        if (body.get("metadata") or {}).get("deletionTimestamp"):
            await reconciler.forget(namespace, name)


# --- SecretSync ---------------------------------------------------------------------------------

# Kicks that only an auto-syncing SecretSync follows (autoSyncEnabled: false ignores them).
MANUAL_REASONS = {"created", "spec changed", "sync requested"}


@kopf.on.event(GROUP, VERSION, SYNCS, registry=registry)  # type: ignore[arg-type]
async def secretsync_event(
    type: str, namespace: str, name: str, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    """Spec changes and the sync-requested-at / allow-mass-delete annotations wake the daemon."""
    runtime: Runtime = memo.runtime
    key = ("SecretSync", namespace, name)
    if type == "DELETED":
        runtime.seen.pop(key, None)
        return
    annotations = body.get("metadata", {}).get("annotations") or {}
    current = (
        body.get("metadata", {}).get("generation"),
        annotations.get(SYNC_REQUESTED_AT),
        annotations.get(ALLOW_MASS_DELETE),
    )
    before = runtime.seen.get(key)
    runtime.seen[key] = current
    if before is None or before == current:
        return  # first sight: the daemon's first run covers it
    if before[0] != current[0]:
        runtime.kicks.kick(key, "spec changed")
    elif before[1] != current[1]:
        runtime.kicks.kick(key, "sync requested")
    else:
        runtime.kicks.kick(key, "spec changed")  # allow-mass-delete changed: re-plan


@kopf.daemon(GROUP, VERSION, SYNCS, cancellation_timeout=30, registry=registry)  # type: ignore[arg-type]
async def secretsync_daemon(
    namespace: str, name: str, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    """Runs every sync of one SecretSync: at start, on kicks, and every syncInterval."""
    runtime: Runtime = memo.runtime
    engine: SyncEngine = memo.engine
    kube: Kube = memo.kube
    key = ("SecretSync", namespace, name)
    slot = runtime.kicks.slot(key)
    status = body.get("status") or {}
    interval = sync_interval(body.get("spec") or {})
    if status.get("lastSyncedAt") and status.get("observedGeneration") == body.meta.get(
        "generation"
    ):
        # Already in sync before a restart: spread the first runs so they do not all fire at once.
        await slot.wait(random.uniform(0, min(interval, 30.0)))  # noqa: S311 - jitter
    reasons = {"created"}
    failures = 0
    # The status this daemon last wrote: the watched body can lag behind it, and a stale
    # lastSyncedAt or managedKeys must never make a later cycle look like the initial one.
    written: dict[str, Any] | None = None

    async def mark_running() -> None:
        await kube.patch_status(SYNCS, namespace, name, {"syncStatus": "Running"})

    try:
        while True:
            spec = body.get("spec") or {}
            interval = sync_interval(spec)
            auto = spec.get("autoSyncEnabled", True)
            if auto or reasons & MANUAL_REASONS:
                async with runtime.lock(key):
                    try:
                        result = await engine.run(
                            namespace, name, body, written, on_writing=mark_running
                        )
                        await kube.patch_status(SYNCS, namespace, name, result.status)
                        written = {**(written or dict(body.get("status") or {})), **result.status}
                    except Exception:
                        log.exception("sync of %s/%s failed unexpectedly", namespace, name)
                        result = None
                if result is not None and (result.ok or not result.retryable):
                    failures, delay = 0, interval
                else:
                    failures += 1
                    retry_after = result.retry_after if result is not None else None
                    delay = retry_delay(interval, failures, retry_after)
            else:
                delay = interval
            _force, reasons = await slot.wait(jittered(delay))
    finally:
        runtime.kicks.discard(key)


@kopf.on.delete(GROUP, VERSION, SYNCS, registry=registry)  # type: ignore[arg-type]
async def secretsync_deleted(
    namespace: str, name: str, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    """Delete removes the owned keys; Retain keeps them and releases their ownership."""
    runtime: Runtime = memo.runtime
    engine: SyncEngine = memo.engine
    key = ("SecretSync", namespace, name)
    annotations = body.get("metadata", {}).get("annotations") or {}
    policy = (body.get("spec") or {}).get("deletionPolicy", "Retain")
    if annotations.get(ABANDON) == "true":
        engine.forget(namespace, name)
        runtime.locks.pop(key, None)
        return
    async with runtime.lock(key):
        try:
            if policy == "Delete":
                done = await engine.remove_owned(namespace, name, body)
                what = "removed %d owned destination keys"
            else:
                done = await engine.release_owned(namespace, name, body)
                what = "released ownership of %d destination keys (kept)"
        except SyncFailed as failure:
            action = "removing" if policy == "Delete" else "releasing ownership of"
            message = (
                f"deletionPolicy {policy}: {action} owned keys failed: {failure.message}; "
                f'retrying. Annotate {ABANDON}: "true" to let go without it'
            )
            await memo.kube.patch_status(
                SYNCS, namespace, name, {"syncStatus": "Failed", "lastSyncMessage": message[:1024]}
            )
            raise kopf.TemporaryError(message, delay=10) from None
    log.info("%s/%s deleted: " + what, namespace, name, done)
    runtime.locks.pop(key, None)


# --- entry point --------------------------------------------------------------------------------


def run_operator(settings: Settings) -> int:
    global _settings
    _settings = settings
    kopf.configure(
        debug=settings.log_level == "DEBUG",
        verbose=settings.log_level == "DEBUG",
        quiet=settings.log_level in ("WARNING", "ERROR"),
        log_format=kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.PLAIN,
    )
    # Third-party HTTP loggers would print URLs at INFO and more at DEBUG: keep them quiet.
    for noisy in ("httpx", "httpcore", "kubernetes", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    liveness = f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None
    asyncio.run(
        kopf.operator(
            registry=registry,
            clusterwide=settings.all_namespaces or not settings.namespaces,
            namespaces=settings.namespaces,
            standalone=not settings.peering,
            liveness_endpoint=liveness,
            memo=OperatorMemo(),
        )
    )
    return 0
