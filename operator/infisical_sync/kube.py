"""Kubernetes reads and writes the operator makes itself (not kopf's own watch traffic).

The calls every sync makes (read the source Secret, patch the status, post an Event) go over
aiohttp on the event loop (kube_http.py). The rest use the official client, which is
synchronous: those run on worker threads so the event loop never blocks. Every call has a
connect and a read timeout, and one that got no answer in time is not sent again (urllib3 would
resend idempotent ones): a hung API server fails the call within its timeouts, the caller's
lock is released, and the next cycle tries again. Failures that say "the API server is not
there right now" (no connection, no answer, 5xx, 429) are raised as KubeUnavailable; real
answers (404, 403, 409, ...) stay ApiException.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar, cast
from urllib.parse import quote

import aiohttp
import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from pydantic import SecretStr

from infisical_sync.fence import Fence
from infisical_sync.kube_http import ApiServerHttp, KubeHttpFailure, SessionClosed

log = logging.getLogger(__name__)
GROUP = "infisical-sync.dev"
VERSION = "v1alpha1"
_T = TypeVar("_T")


@dataclass(frozen=True)
class KubeTimeouts:
    connect: float = 10.0
    read: float = 30.0


class KubeUnavailable(Exception):
    """The API server could not be reached, did not answer in time, or answered 5xx/429."""


def _server_trouble(exc: ApiException) -> bool:
    """An answer that says the API server is not there right now (5xx, 429)."""
    return exc.status is not None and (exc.status >= 500 or exc.status == 429)


def _unavailable(what: str, exc: BaseException, timeouts: KubeTimeouts) -> KubeUnavailable:
    """A short message; never the exception text, which can carry URLs and bodies."""
    cause: object = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) else exc
    if isinstance(exc, KubeHttpFailure):
        cause = exc.cause
    if isinstance(exc, ApiException):
        problem = f"answered {exc.status} {exc.reason or ''}".rstrip()
    elif isinstance(cause, aiohttp.ConnectionTimeoutError):
        problem = f"did not accept a connection within {timeouts.connect:g} s"
    elif isinstance(cause, aiohttp.ClientSSLError):
        problem = "failed the TLS handshake"
    elif isinstance(cause, TimeoutError):
        problem = f"did not answer within {timeouts.read:g} s"
    elif isinstance(cause, aiohttp.ClientConnectorError):
        problem = "refused the connection (or cannot be resolved)"
    elif isinstance(cause, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)):
        problem = "dropped the connection"
    elif isinstance(cause, SessionClosed):
        problem = "is no longer called: the operator is stopping"
    elif isinstance(cause, urllib3.exceptions.ReadTimeoutError):
        problem = f"did not answer within {timeouts.read:g} s"
    elif isinstance(cause, urllib3.exceptions.NewConnectionError):
        problem = "refused the connection (or cannot be resolved)"
    elif isinstance(cause, urllib3.exceptions.ConnectTimeoutError):
        problem = f"did not accept a connection within {timeouts.connect:g} s"
    elif isinstance(cause, urllib3.exceptions.ProtocolError):
        problem = "dropped the connection"
    elif isinstance(cause, urllib3.exceptions.SSLError):
        problem = "failed the TLS handshake"
    else:
        problem = f"failed ({type(cause).__name__})"
    return KubeUnavailable(f"the Kubernetes API server {problem} ({what})")


@dataclass(frozen=True)
class LeaseFound:
    name: str
    spec: dict[str, Any]
    resource_version: str
    annotations: dict[str, str]


class KubeFenced(KubeUnavailable):
    """A write not sent: this replica may have lost the leader Lease (fence.py). Handled like
    an outage (one WARNING per object); the process is stopping anyway."""


class WriteForbidden(Exception):
    """The API server refused a write (403): the operator's RBAC does not grant it."""


@dataclass(frozen=True)
class SecretData:
    name: str
    data: dict[str, bytes]
    resource_version: str
    labels: dict[str, str]

    def __repr__(self) -> str:  # never the values
        return f"SecretData(name={self.name!r}, keys={sorted(self.data)})"


# Kubernetes calls in flight at once (worker threads and pooled connections): a burst of source
# edits needs about three calls per writing sync, and asyncio's default pool has cores + 4.
DEFAULT_KUBE_CONCURRENCY = 32


def load_api_client(
    concurrency: int = DEFAULT_KUBE_CONCURRENCY,
    *,
    kubeconfig: str | None = None,
    context: str | None = None,
) -> client.ApiClient:
    """In-cluster config, else the kubeconfig; a kubeconfig or context named (the CLI's
    --kubeconfig, --context) is used as such."""
    if kubeconfig or context:
        config.load_kube_config(config_file=kubeconfig, context=context)  # type: ignore[no-untyped-call]
    else:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config()  # type: ignore[no-untyped-call]
    configuration = client.Configuration.get_default_copy()
    # Connecting is retried; a request that got no answer in time is not sent again.
    configuration.retries = urllib3.Retry(total=2, connect=2, read=0, redirect=0, status=0)
    # One pooled connection per worker thread: more threads than connections would queue.
    configuration.connection_pool_maxsize = concurrency
    return client.ApiClient(configuration)


def _retrieved(task: asyncio.Future[Any]) -> None:
    """A shielded write whose caller was cancelled: its failure is nobody's news (not asyncio's
    "exception was never retrieved")."""
    if not task.cancelled():
        task.exception()


def _decode(raw: dict[str, str] | None) -> dict[str, bytes]:
    return {key: base64.b64decode(value) for key, value in (raw or {}).items()}


def _secret_data(body: dict[str, Any]) -> SecretData:
    meta = body["metadata"]
    return SecretData(
        name=meta["name"],
        data=_decode(body.get("data")),
        resource_version=str(meta.get("resourceVersion", "")),
        labels=dict(meta.get("labels") or {}),
    )


class Kube:
    def __init__(
        self,
        api_client: client.ApiClient,
        timeouts: KubeTimeouts | None = None,
        concurrency: int = DEFAULT_KUBE_CONCURRENCY,
        fence: Fence | None = None,
    ) -> None:
        self.core = client.CoreV1Api(api_client)
        self.coordination = client.CoordinationV1Api(api_client)
        self.fence = fence or Fence()
        self.custom = client.CustomObjectsApi(api_client)
        self.timeouts = timeouts or KubeTimeouts()
        self._timeout = (self.timeouts.connect, self.timeouts.read)  # per call: _request_timeout
        # Its own workers: the synchronous client must not queue behind anything else that uses
        # asyncio's default pool, nor be limited to its few threads.
        self._workers = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="kube")
        self.http = ApiServerHttp(
            api_client.configuration,
            connect_timeout=self.timeouts.connect,
            read_timeout=self.timeouts.read,
            concurrency=concurrency,
        )

    async def aclose(self) -> None:
        """At shutdown: no new calls; the ones under way on workers end within their timeouts."""
        self._workers.shutdown(wait=False, cancel_futures=True)
        await self.http.aclose()

    async def _send(
        self,
        what: str,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        write: bool = False,
    ) -> bytes:
        """One request on the event loop (kube_http.py), with _call's failures and fencing.

        A write runs in a task of its own, shielded: once the fence let it through it counts
        as under way until it has finished, also when its caller is cancelled meanwhile (the
        leader stepping down waits for it). The fence is asked with a connection slot in hand,
        right before the request goes."""
        try:
            if not write:
                async with self.http.slots:
                    return await self.http.request(method, path)
            sending = asyncio.ensure_future(self._write(what, method, path, body, content_type))
            sending.add_done_callback(_retrieved)
            return await asyncio.shield(sending)
        except ApiException as exc:
            if _server_trouble(exc):
                raise _unavailable(what, exc, self.timeouts) from None
            raise
        except KubeHttpFailure as exc:
            raise _unavailable(what, exc, self.timeouts) from None

    async def _write(
        self, what: str, method: str, path: str, body: Any, content_type: str
    ) -> bytes:
        async with self.http.slots:
            with self.fence.sending(what, KubeFenced):
                return await self.http.request(method, path, body=body, content_type=content_type)

    async def _call(self, what: str, call: Callable[[], _T], *, write: bool = False) -> _T:
        """`write`: refused when the fence is closed, checked in the worker right before the
        request (a call may have queued for a worker meanwhile)."""

        def fenced() -> _T:
            with self.fence.sending(what, KubeFenced):
                return call()

        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._workers, fenced if write else call
            )
        except ApiException as exc:
            if _server_trouble(exc):
                raise _unavailable(what, exc, self.timeouts) from None
            raise
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _unavailable(what, exc, self.timeouts) from None

    async def read_secret(self, namespace: str, name: str) -> SecretData | None:
        """The Secret's decoded data, or None when it does not exist."""
        path = f"/api/v1/namespaces/{quote(namespace)}/secrets/{quote(name)}"
        try:
            raw = await self._send(f"reading Secret {namespace}/{name}", "GET", path)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return _secret_data(json.loads(raw))

    async def request_service_account_token(
        self, namespace: str, name: str, audiences: tuple[str, ...], expiration_seconds: int
    ) -> SecretStr:
        """A new token for the service account (TokenRequest), bound to nothing but its expiry.
        Not fenced: it changes no state, and every replica validates its own connections. A 404
        (no such service account) or 403 (RBAC) stays an ApiException."""
        spec: dict[str, Any] = {"expirationSeconds": expiration_seconds}
        if audiences:
            spec["audiences"] = list(audiences)
        body: Any = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}

        def create() -> SecretStr:
            response = self.core.create_namespaced_service_account_token(
                name, namespace, body, _preload_content=False, _request_timeout=self._timeout
            )
            answer: dict[str, Any] = json.loads(cast(Any, response).data)
            return SecretStr(str((answer.get("status") or {}).get("token") or ""))

        return await self._call(f"requesting a token for ServiceAccount {namespace}/{name}", create)

    async def list_secrets(self, namespace: str, label_selector: str) -> list[SecretData]:
        def read() -> list[SecretData]:
            response = self.core.list_namespaced_secret(
                namespace,
                label_selector=label_selector,
                _preload_content=False,
                _request_timeout=self._timeout,
            )
            body: dict[str, Any] = json.loads(cast(Any, response).data)
            return [_secret_data(item) for item in body.get("items", [])]

        return await self._call(f"listing Secrets in {namespace}", read)

    async def write_secret_keys(
        self, namespace: str, name: str, values: dict[str, str], resource_version: str
    ) -> None:
        """Add or change keys of a Secret (import modes), guarded by its resourceVersion."""
        patch = {
            "metadata": {"resourceVersion": resource_version},
            "data": {
                key: base64.b64encode(value.encode()).decode() for key, value in values.items()
            },
        }

        def write() -> None:
            try:
                self.core.patch_namespaced_secret(
                    name, namespace, patch, _request_timeout=self._timeout
                )
            except ApiException as exc:
                if exc.status == 403:
                    raise WriteForbidden(
                        f"patching Secret {namespace}/{name} refused (403)"
                    ) from None
                raise

        await self._call(f"writing Secret {namespace}/{name}", write, write=True)

    async def read_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The ConfigMap's body as the API server sent it, or None when it does not exist."""

        def read() -> dict[str, Any] | None:
            try:
                response = self.core.read_namespaced_config_map(
                    name, namespace, _preload_content=False, _request_timeout=self._timeout
                )
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise
            body: dict[str, Any] = json.loads(cast(Any, response).data)
            return body

        return await self._call(f"reading ConfigMap {namespace}/{name}", read)

    async def write_configmap(
        self, namespace: str, body: dict[str, Any], resource_version: str | None
    ) -> str:
        """Create the ConfigMap (`resource_version` None) or replace the version read; returns
        the new resourceVersion. A 409 (exists, or changed since) stays an ApiException."""
        name = body["metadata"]["name"]
        sent: Any = body  # the client takes plain dicts as well as its models

        def write() -> str:
            if resource_version is None:
                response = self.core.create_namespaced_config_map(
                    namespace, sent, _preload_content=False, _request_timeout=self._timeout
                )
            else:
                versioned: Any = {
                    **body,
                    "metadata": {**body["metadata"], "resourceVersion": resource_version},
                }
                response = self.core.replace_namespaced_config_map(
                    name,
                    namespace,
                    versioned,
                    _preload_content=False,
                    _request_timeout=self._timeout,
                )
            written: dict[str, Any] = json.loads(cast(Any, response).data)
            return str(written["metadata"]["resourceVersion"])

        return await self._call(f"writing ConfigMap {namespace}/{name}", write, write=True)

    async def namespace_uid(self, name: str) -> str:
        def read() -> str:
            namespace = self.core.read_namespace(name, _request_timeout=self._timeout)
            uid = namespace.metadata.uid if namespace.metadata else None
            if not uid:
                raise ValueError(f"namespace {name} has no UID")
            return str(uid)

        return await self._call(f"reading namespace {name}", read)

    async def namespace_labels(self, name: str) -> dict[str, str] | None:
        """A namespace's labels (None: no such namespace), for a ClusterInfisicalConnection's
        namespaceSelector when the Namespace watch has not told of it yet."""

        def read() -> dict[str, str] | None:
            try:
                namespace = self.core.read_namespace(name, _request_timeout=self._timeout)
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise
            return dict((namespace.metadata.labels if namespace.metadata else None) or {})

        return await self._call(f"reading namespace {name}", read)

    async def remove_annotation(self, plural: str, namespace: str, name: str, key: str) -> None:
        """Drop one annotation of our own resource (a merge patch with null)."""
        patch = {"metadata": {"annotations": {key: None}}}

        def remove() -> None:
            self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name, patch, _request_timeout=self._timeout
            )

        await self._call(
            f"removing annotation {key} of {plural} {namespace}/{name}", remove, write=True
        )

    async def remove_finalizers(
        self, plural: str, namespace: str, name: str, which: Callable[[list[str]], list[str]]
    ) -> list[str]:
        """Remove the finalizers `which` picks from our resource's current list; the removed
        ones. A JSON patch that tests the list it read: kopf adding or removing its own
        finalizer meanwhile makes it read and decide again, never overwrite."""

        what = f"removing finalizers of {plural} {namespace}/{name}"

        def remove() -> list[str]:
            for _attempt in range(5):
                try:
                    found = cast(
                        dict[str, Any],
                        self.custom.get_namespaced_custom_object(
                            GROUP, VERSION, namespace, plural, name, _request_timeout=self._timeout
                        )
                        if namespace
                        else self.custom.get_cluster_custom_object(
                            GROUP, VERSION, plural, name, _request_timeout=self._timeout
                        ),
                    )
                except ApiException as exc:
                    if exc.status == 404:
                        return []
                    raise
                current = list((found.get("metadata") or {}).get("finalizers") or [])
                drop = which(current)
                if not drop:
                    return []
                kept = [f for f in current if f not in drop]
                operations = [
                    {"op": "test", "path": "/metadata/finalizers", "value": current},
                    {"op": "replace", "path": "/metadata/finalizers", "value": kept},
                ]
                try:
                    # Fenced here, after the read (which may have waited), right before the PATCH.
                    options: Any = {
                        "_content_type": "application/json-patch+json",
                        "_request_timeout": self._timeout,
                    }
                    with self.fence.sending(what, KubeFenced):
                        if namespace:
                            self.custom.patch_namespaced_custom_object(
                                GROUP, VERSION, namespace, plural, name, operations, **options
                            )
                        else:  # cluster-scoped
                            self.custom.patch_cluster_custom_object(
                                GROUP, VERSION, plural, name, operations, **options
                            )
                except ApiException as exc:
                    if exc.status == 404:
                        return []
                    if exc.status in (409, 422):  # the list changed since it was read
                        continue
                    raise
                return drop
            return []

        return await self._call(what, remove)

    async def object_exists(self, plural: str, namespace: str, name: str) -> bool:
        """Whether one of our objects exists (a GET; only on failure paths)."""

        def read() -> bool:
            try:
                if namespace:
                    self.custom.get_namespaced_custom_object(
                        GROUP, VERSION, namespace, plural, name, _request_timeout=self._timeout
                    )
                else:  # cluster-scoped
                    self.custom.get_cluster_custom_object(
                        GROUP, VERSION, plural, name, _request_timeout=self._timeout
                    )
            except ApiException as exc:
                if exc.status == 404:
                    return False
                raise
            return True

        return await self._call(f"reading {plural} {namespace}/{name}", read)

    async def list_objects(self, plural: str, namespace: str | None) -> list[dict[str, Any]]:
        """Every object of one of our resources in a namespace, or in all of them (None), in
        pages of 500."""

        def read() -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = []
            token: str | None = None
            while True:
                page: Any = (
                    self.custom.list_namespaced_custom_object(
                        GROUP,
                        VERSION,
                        namespace,
                        plural,
                        limit=500,
                        _continue=token,
                        _request_timeout=self._timeout,
                    )
                    if namespace is not None
                    else self.custom.list_cluster_custom_object(
                        GROUP,
                        VERSION,
                        plural,
                        limit=500,
                        _continue=token,
                        _request_timeout=self._timeout,
                    )
                )
                items += page.get("items") or []
                token = (page.get("metadata") or {}).get("continue") or None
                if token is None:
                    return items

        return await self._call(f"listing {plural} in {namespace or 'all namespaces'}", read)

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: dict[str, Any]
    ) -> bool:
        """Merge-patch our own status (namespace "": a cluster-scoped object's). False when the
        object is gone."""
        scope = f"/namespaces/{quote(namespace)}" if namespace else ""
        path = f"/apis/{GROUP}/{VERSION}{scope}/{plural}/{quote(name)}/status"
        try:
            await self._send(
                f"patching the status of {plural} {namespace}/{name}",
                "PATCH",
                path,
                body={"status": status},
                content_type="application/merge-patch+json",
                write=True,
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    # --- the leader election Lease (leader.py); never fenced: renewing it is what opens the fence

    async def read_lease(self, namespace: str, name: str) -> tuple[dict[str, Any], str] | None:
        """(spec, resourceVersion), or None when there is no such Lease."""

        def read() -> tuple[dict[str, Any], str] | None:
            try:
                response = self.coordination.read_namespaced_lease(
                    name, namespace, _preload_content=False, _request_timeout=self._timeout
                )
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise
            body: dict[str, Any] = json.loads(cast(Any, response).data)
            return dict(body.get("spec") or {}), str(body["metadata"].get("resourceVersion", ""))

        return await self._call(f"reading Lease {namespace}/{name}", read)

    async def list_leases(self, namespace: str) -> list[LeaseFound]:
        def read() -> list[LeaseFound]:
            response = self.coordination.list_namespaced_lease(
                namespace, _preload_content=False, _request_timeout=self._timeout
            )
            body: dict[str, Any] = json.loads(cast(Any, response).data)
            return [
                LeaseFound(
                    name=str(item["metadata"]["name"]),
                    spec=dict(item.get("spec") or {}),
                    resource_version=str(item["metadata"].get("resourceVersion", "")),
                    annotations=dict(item["metadata"].get("annotations") or {}),
                )
                for item in body.get("items", [])
            ]

        return await self._call(f"listing Leases in {namespace}", read)

    async def write_lease(
        self,
        namespace: str,
        name: str,
        spec: dict[str, Any],
        resource_version: str | None,
        annotations: dict[str, str] | None = None,
    ) -> bool:
        """Create the Lease (`resource_version` None) or replace the version read, with these
        annotations. False when another wrote first (409): optimistic concurrency decides who
        holds it."""
        metadata: dict[str, Any] = {
            "name": name,
            "namespace": namespace,
            "annotations": annotations or {},
        }
        if resource_version is not None:
            metadata["resourceVersion"] = resource_version
        body: Any = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": spec,
        }

        def write() -> bool:
            try:
                if resource_version is None:
                    self.coordination.create_namespaced_lease(
                        namespace, body, _request_timeout=self._timeout
                    )
                else:
                    self.coordination.replace_namespaced_lease(
                        name, namespace, body, _request_timeout=self._timeout
                    )
            except ApiException as exc:
                if exc.status == 409:
                    return False
                raise
            return True

        return await self._call(f"writing Lease {namespace}/{name}", write)


CLUSTER_EVENTS_NAMESPACE = "default"


class EventPoster:
    """Posts an object's Events (our transition events) in the background.

    Not kopf's poster: a namespace being deleted refuses new Events (403 NamespaceTerminating),
    which kopf logs as an ERROR and retries nine times. Here that refusal, and an object already
    gone, are expected and quiet; any other failure is one WARNING, never the message text.
    """

    def __init__(self, kube: Kube, component: str = "infisical-sync") -> None:
        self.kube = kube
        self.component = component
        self._pending: set[asyncio.Task[None]] = set()

    def __call__(self, body: Any, type_: str, reason: str, message: str) -> None:
        task = asyncio.get_running_loop().create_task(self._post(body, type_, reason, message))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def settle(self) -> None:
        """Wait for the Events still being posted (shutdown, tests)."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def _post(self, body: Any, type_: str, reason: str, message: str) -> None:
        meta = body.get("metadata") or {}
        name = str(meta.get("name"))
        # A cluster-scoped object's Events: the API server takes them in "default" only
        # (`kubectl describe` finds them there).
        namespace = str(meta.get("namespace") or CLUSTER_EVENTS_NAMESPACE)
        now = datetime.datetime.now(datetime.UTC).isoformat()
        event: Any = {
            "metadata": {"generateName": f"{name}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": body.get("apiVersion"),
                "kind": body.get("kind"),
                "name": name,
                "namespace": meta.get("namespace") or "",
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1000],
            "source": {"component": self.component},
            "reportingComponent": self.component,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }

        try:
            # Fenced too: a replica that lost the Lease would tell of syncs another one runs.
            await self.kube._send(
                f"posting an Event for {namespace}/{name}",
                "POST",
                f"/api/v1/namespaces/{quote(namespace)}/events",
                body=event,
                write=True,
            )
        except KubeFenced:
            log.debug("Event %s for %s/%s not posted: not the leader", reason, namespace, name)
        except ApiException as exc:
            if exc.status == 404 or (exc.status == 403 and "terminat" in str(exc.body or "")):
                log.debug("Event %s for %s/%s not posted: %s", reason, namespace, name, exc.status)
                return
            log.warning("Event %s for %s/%s not posted: %s", reason, namespace, name, exc.status)
        except KubeUnavailable as exc:
            log.warning("Event %s for %s/%s not posted: %s", reason, namespace, name, exc)
