"""Which Secrets exist and what labels they carry, never their data: a metadata-only watch.

A Secret change only has to wake the objects that read it (they then read it themselves), so
the operator does not let kopf watch Secrets: kopf would receive, and hold while it processes
them, the full bodies of every Secret in scope. Here the API server is asked for
PartialObjectMetadata (the `Accept` header), so no `data` ever reaches the process; of what
arrives only namespace, name and resourceVersion are kept (to tell, after a relist, what changed).
Annotations do arrive (a kubectl last-applied annotation can hold a whole Secret): they are
parsed one page or event at a time and dropped at once.

I/O only: list (paged) then watch from the list's resourceVersion with bookmarks; a stream that
ends is resumed from the last resourceVersion; 410 Gone (history compacted) lists again and
announces the differences as ADDED/MODIFIED/DELETED. Failures back off and retry until the task
is cancelled. The first list announces nothing: every reader runs at start anyway.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from kubernetes import client

from infisical_sync.kube_http import api_server_proxy, auth_headers, tls_context

log = logging.getLogger(__name__)

ACCEPT_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
ACCEPT_WATCH = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
CHANGES = ("ADDED", "MODIFIED", "DELETED")


@dataclass(frozen=True)
class SecretMeta:
    """What the operator learns about a Secret it does not read: no data, by construction."""

    namespace: str
    name: str
    labels: Mapping[str, str]
    resource_version: str


SecretEvent = Callable[[str, SecretMeta], None]  # (ADDED | MODIFIED | DELETED, the Secret)


@dataclass(frozen=True)
class WatchTimeouts:
    connect: float = 10.0
    request: float = 30.0  # a list page
    server: int = 60  # the API server ends each watch after this long; it is resumed at once
    idle: float = 90.0  # no byte (not even a bookmark) for this long: the stream is dead
    backoff_cap: float = 30.0
    # A stream that ends empty this soon was cut (a proxy closing watches): not reopened at once.
    short_stream: float = 1.0


class WatchGone(Exception):
    """410: the resourceVersion is older than the API server's history; list again."""


class WatchFailed(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"answered {status}")
        self.status = status


# --- the connection, from the kubernetes client's configuration ---------------------------------


class _ConfigurationAuth(httpx.Auth):
    """The client configuration's headers per request: a refreshed in-cluster token is used."""

    def __init__(self, configuration: client.Configuration) -> None:
        self.configuration = configuration

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers.update(auth_headers(self.configuration))
        yield request


def transport_for(configuration: client.Configuration) -> httpx.AsyncHTTPTransport:
    """TLS and proxy as the kubernetes client is configured (kubeconfig or in-cluster)."""
    proxy = api_server_proxy(configuration)
    return httpx.AsyncHTTPTransport(
        verify=tls_context(configuration),
        proxy=httpx.Proxy(proxy, headers=configuration.proxy_headers) if proxy else None,
    )


def _server_name_hook(name: str) -> Callable[[httpx.Request], Awaitable[None]]:
    """kubeconfig's `tls-server-name`: the name sent in SNI and checked in the certificate."""

    async def name_the_server(request: httpx.Request) -> None:
        request.extensions["sni_hostname"] = name

    return name_the_server


def http_client_for(
    configuration: client.Configuration,
    timeouts: WatchTimeouts,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """An HTTP client for the API server the kubernetes client is configured for: its URL,
    TLS and token (`transport`: a wrapper around transport_for's, in tests)."""
    server_name = getattr(configuration, "tls_server_name", None)
    return httpx.AsyncClient(
        base_url=str(configuration.host),
        transport=transport or transport_for(configuration),
        auth=_ConfigurationAuth(configuration),
        trust_env=False,  # like the kubernetes client: only the configured proxy
        timeout=httpx.Timeout(timeouts.request, connect=timeouts.connect),
        event_hooks={"request": [_server_name_hook(server_name)]} if server_name else None,
    )


# --- the watch ----------------------------------------------------------------------------------


def _meta(obj: Mapping[str, Any]) -> SecretMeta:
    meta = obj.get("metadata") or {}
    return SecretMeta(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        labels={str(k): str(v) for k, v in (meta.get("labels") or {}).items()},
        resource_version=str(meta.get("resourceVersion") or ""),
    )


Known = dict[tuple[str, str], str]  # (namespace, name) -> resourceVersion


def differences(known: Known, listed: Iterable[SecretMeta]) -> list[tuple[str, SecretMeta]]:
    """What a relist shows that the watch missed: new, changed and vanished Secrets."""
    changes: list[tuple[str, SecretMeta]] = []
    seen: set[tuple[str, str]] = set()
    for secret in listed:
        key = (secret.namespace, secret.name)
        seen.add(key)
        before = known.get(key)
        if before is None:
            changes.append(("ADDED", secret))
        elif before != secret.resource_version:
            changes.append(("MODIFIED", secret))
    for (namespace, name), version in known.items():
        if (namespace, name) not in seen:
            changes.append(("DELETED", SecretMeta(namespace, name, {}, version)))
    return changes


@dataclass
class SecretWatch:
    """Secrets of one namespace (or all: `namespace=None`), until the task running `run` is
    cancelled."""

    http: httpx.AsyncClient
    on_event: SecretEvent
    namespace: str | None = None
    timeouts: WatchTimeouts = field(default_factory=WatchTimeouts)
    page_size: int = 500
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    listed: asyncio.Event = field(default_factory=asyncio.Event)  # the first list is in
    _known: Known = field(default_factory=dict)
    _failing: bool = False
    # The newest resourceVersion a stream delivered: a stream that breaks resumes from there,
    # not from where it began (which would deliver its events twice, or expire sooner).
    _seen_version: str | None = None
    # The first list failed at least once: changes made meanwhile were never announced.
    _missed_start: bool = False
    _lines: int = 0  # lines the current stream delivered
    # The versions in _known are current up to the watch's lag: listed, and no failure or
    # expired history since the last stream opened. Cleared the moment that stops being so.
    _current: bool = False

    @property
    def path(self) -> str:
        if self.namespace is None:
            return "/api/v1/secrets"
        return f"/api/v1/namespaces/{self.namespace}/secrets"

    @property
    def scope(self) -> str:
        return "in all namespaces" if self.namespace is None else f"in {self.namespace}"

    async def run(self) -> None:
        log.debug("watching Secrets %s (metadata only)", self.scope)
        version: str | None = None
        failures = 0
        while True:
            try:
                if version is None:
                    version = await self._relist()
                self._seen_version = version
                opened = asyncio.get_running_loop().time()
                version = await self._watch(version)
                cut = asyncio.get_running_loop().time() - opened < self.timeouts.short_stream
                if cut and not self._lines:
                    # Ended at once with nothing said: a proxy cutting watches. Back off as
                    # for a failure rather than reconnect in a tight loop.
                    self._current = False
                    failures += 1
                    await self.sleep(min(self.timeouts.backoff_cap, 0.5 * 2 ** (failures - 1)))
                    continue
                failures = 0
                self._recovered()
            except WatchGone:
                self._current = False
                log.debug("Secret watch %s: history expired (410), listing again", self.scope)
                version = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if version is not None:
                    version = self._seen_version or version
                failures += 1
                self._failed(exc)
                await self.sleep(min(self.timeouts.backoff_cap, 0.5 * 2 ** (failures - 1)))

    def _failed(self, exc: Exception) -> None:
        """An outage is DEBUG (every object reports it once already); a refusal is a WARNING
        once (RBAC or credentials: nobody else would say why Secret changes go unnoticed)."""
        self._current = False
        problem = _describe(exc)
        if not self.listed.is_set():
            self._missed_start = True
        refused = isinstance(exc, WatchFailed) and exc.status in (401, 403)
        if refused and not self._failing:
            self._failing = True
            log.warning("cannot watch Secrets %s: the API server %s", self.scope, problem)
        else:
            log.debug("Secret watch %s failed (%s); retrying", self.scope, problem)

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            log.info("watching Secrets %s again", self.scope)

    async def _relist(self) -> str:
        listed, version = await self._list()
        metas = [m for m in listed if m.name]
        if self.listed.is_set():
            for change, secret in differences(self._known, metas):
                self._deliver(change, secret)
        elif self._missed_start:
            # The first list came only after failures: whatever changed meanwhile was never
            # announced, so every Secret counts as changed (cheap: indexed lookups).
            for secret in metas:
                self._deliver("MODIFIED", secret)
        self._known = {(m.namespace, m.name): m.resource_version for m in metas}
        self.listed.set()
        self._recovered()
        return version

    async def _list(self) -> tuple[list[SecretMeta], str]:
        found: list[SecretMeta] = []
        params: dict[str, str | int] = {"limit": self.page_size}
        while True:
            response = await self.http.get(
                self.path, params=params, headers={"Accept": ACCEPT_LIST}
            )
            if response.status_code == 410:  # the continue token expired: start over
                found, params = [], {"limit": self.page_size}
                continue
            if response.status_code != 200:
                raise WatchFailed(response.status_code)
            page = response.json()
            del response  # the page's annotations go with it
            found.extend(_meta(item) for item in page.get("items") or [])
            metadata = page.get("metadata") or {}
            token = metadata.get("continue")
            if not token:
                return found, str(metadata.get("resourceVersion") or "")
            params = {"limit": self.page_size, "continue": str(token)}

    async def _watch(self, version: str) -> str:
        """Deliver events until the API server ends the stream; the last resourceVersion."""
        params: dict[str, str | int] = {
            "watch": "true",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": self.timeouts.server,
        }
        timeout = httpx.Timeout(self.timeouts.idle, connect=self.timeouts.connect)
        async with self.http.stream(
            "GET", self.path, params=params, headers={"Accept": ACCEPT_WATCH}, timeout=timeout
        ) as response:
            if response.status_code == 410:
                raise WatchGone()
            if response.status_code != 200:
                raise WatchFailed(response.status_code)
            self._recovered()
            self._current = True
            self._lines = 0
            async for line in response.aiter_lines():
                self._lines += 1
                if line.strip():
                    version = self._handle(json.loads(line)) or version
                    self._seen_version = version
        return version

    def version(self, namespace: str, name: str) -> str | None:
        """The Secret's resourceVersion as the open stream last told it; None when the watch
        cannot vouch for it now (not listed yet, failing, between a 410 and its list) or does
        not know the Secret."""
        if not self._current:
            return None
        return self._known.get((namespace, name))

    def _handle(self, event: Mapping[str, Any]) -> str | None:
        change, obj = event.get("type"), event.get("object") or {}
        if change == "ERROR":
            code = obj.get("code")
            if code == 410:
                raise WatchGone()
            raise WatchFailed(int(code or 500))
        secret = _meta(obj)
        if change == "BOOKMARK" or change not in CHANGES or not secret.name:
            return secret.resource_version or None
        key = (secret.namespace, secret.name)
        if change == "DELETED":
            self._known.pop(key, None)
        else:
            self._known[key] = secret.resource_version
        self._deliver(str(change), secret)
        return secret.resource_version or None

    def _deliver(self, change: str, secret: SecretMeta) -> None:
        try:
            self.on_event(change, secret)
        except Exception:  # a bug in a reader must not stop the watch
            log.exception("handling a change of Secret %s/%s failed", secret.namespace, secret.name)


def _describe(exc: Exception) -> str:
    """Short, never the exception text (URLs, bodies)."""
    if isinstance(exc, WatchFailed):
        return str(exc)
    if isinstance(exc, httpx.TimeoutException):
        return "did not answer in time"
    if isinstance(exc, httpx.TransportError):
        return "could not be reached"
    return type(exc).__name__


# --- several namespaces -------------------------------------------------------------------------


@dataclass
class SecretWatches:
    """One watch per watched namespace (or one for all), run as tasks until `stop`."""

    http: httpx.AsyncClient
    watches: list[SecretWatch]
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        http: httpx.AsyncClient,
        namespaces: Iterable[str] | None,
        on_event: SecretEvent,
        timeouts: WatchTimeouts | None = None,
    ) -> SecretWatches:
        scopes: list[str | None] = [None] if namespaces is None else list(namespaces)
        watches = [
            SecretWatch(http, on_event, scope, timeouts or WatchTimeouts()) for scope in scopes
        ]
        tasks = [
            asyncio.create_task(watch.run(), name=f"secret watch {watch.scope}")
            for watch in watches
        ]
        return cls(http, watches, tasks)

    def version(self, namespace: str, name: str) -> str | None:
        """A Secret's resourceVersion from the watch of its namespace, when it can vouch for it."""
        for watch in self.watches:
            if watch.namespace in (None, namespace):
                return watch.version(namespace, name)
        return None

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.http.aclose()
