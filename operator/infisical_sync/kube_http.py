"""The API server over aiohttp, on the event loop: the calls every sync makes.

Reading the source Secret, patching the status and posting an Event are made for each sync
that writes; through the synchronous client each costs about twice the CPU and a worker thread
that holds the GIL while the event loop waits for it (a burst of 100 edits is 300 such calls).
Here they are plain requests on one pooled session, made with the kubernetes client's own
configuration (server URL, CA, client certificate, token, proxy), so a kubeconfig or the
in-cluster service account work as they do for every other call.

Errors keep the synchronous client's shapes, so callers handle both alike: an answer other
than 2xx is an ApiException (status, reason, body); no answer raises KubeHttpFailure, which
kube.py turns into KubeUnavailable.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.client.rest import should_bypass_proxies


def tls_context(configuration: client.Configuration) -> ssl.SSLContext:
    """TLS as the kubernetes client is configured (kubeconfig or in-cluster): CA, client cert.
    `insecure-skip-tls-verify` skips checking the server only: the client cert is still sent."""
    ca_data = getattr(configuration, "ca_cert_data", None)
    if isinstance(ca_data, bytes):
        ca_data = ca_data.decode()
    context = ssl.create_default_context(
        cafile=configuration.ssl_ca_cert or None, cadata=ca_data or None
    )
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file or None)
    return context


def api_server_proxy(configuration: client.Configuration) -> str | None:
    """The proxy to the API server as the kubernetes client picks it: `proxy`, unless
    `no_proxy` names the server. A SOCKS proxy is refused: aiohttp does not speak SOCKS."""
    proxy = configuration.proxy or None
    if proxy is None or should_bypass_proxies(
        str(configuration.host), configuration.no_proxy or ""
    ):
        return None
    if proxy.lower().startswith("socks"):
        raise ValueError("a SOCKS proxy to the Kubernetes API server is not supported")
    return str(proxy)


def auth_headers(configuration: client.Configuration) -> dict[str, str]:
    """The configuration's auth headers, asked anew each time: the kubernetes client refreshes
    an in-cluster token (or a kubeconfig exec plugin's) behind `auth_settings()`."""
    headers: dict[str, str] = {}
    settings: Mapping[str, Any] = dict(configuration.auth_settings())
    for setting in settings.values():
        if setting.get("in") == "header" and setting.get("value"):
            headers[str(setting.get("key"))] = str(setting.get("value"))
    return headers


def connect_retries(configuration: client.Configuration) -> int:
    """How often a failed connection is tried again: as the synchronous client is configured
    (a request that was sent is never sent again)."""
    retries = configuration.retries
    if isinstance(retries, urllib3.Retry):
        return int(retries.connect or 0)
    return int(retries or 0)


class KubeHttpFailure(Exception):
    """No answer: `cause` is aiohttp's (or the OS's) exception, never put in a message."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(type(cause).__name__)
        self.cause = cause


class SessionClosed(Exception):
    """A call after `aclose()`: the operator is stopping."""


# How long the auth headers are used before the configuration is asked again. Asking runs the
# kubernetes client's refresh hook (an in-cluster token file read, or a kubeconfig exec plugin:
# a subprocess), so it runs on a thread; a 401 asks again at once.
AUTH_REUSE = 10.0


class ApiServerHttp:
    """One aiohttp session to the API server, opened by the first request (aiohttp binds it to
    the running loop) and closed by `aclose`.

    `slots` bounds the requests in flight; a caller holds one around everything it checks
    before sending (the write fence), so that nothing waits between that check and the wire
    (aiohttp's pool never makes a request wait: it has as many connections as slots).
    """

    def __init__(
        self,
        configuration: client.Configuration,
        *,
        connect_timeout: float,
        read_timeout: float,
        concurrency: int,
    ) -> None:
        self.configuration = configuration
        self.base_url = str(configuration.host).rstrip("/")
        self.slots = asyncio.Semaphore(concurrency)
        self._retries = connect_retries(configuration)
        self._timeout = aiohttp.ClientTimeout(
            # Per phase, like the synchronous client's (connect, read).
            total=None,
            sock_connect=connect_timeout,
            sock_read=read_timeout,
        )
        self._concurrency = concurrency
        self._tls: ssl.SSLContext | None = (
            tls_context(configuration) if self.base_url.startswith("https:") else None
        )
        self._server_name: str | None = getattr(configuration, "tls_server_name", None) or None
        self._proxy = api_server_proxy(configuration)
        self._proxy_headers: Mapping[str, str] | None = configuration.proxy_headers or None
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._auth: dict[str, str] | None = None
        self._auth_at = 0.0
        self._auth_lock = asyncio.Lock()

    def _open(self) -> aiohttp.ClientSession:
        if self._closed:
            raise KubeHttpFailure(SessionClosed())
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._concurrency, ssl=self._tls or False),
                timeout=self._timeout,
                headers={"User-Agent": "infisical-sync-operator", "Accept": "application/json"},
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _auth_headers(self, *, renew: bool = False) -> dict[str, str]:
        async with self._auth_lock:
            if renew or self._auth is None or time.monotonic() - self._auth_at > AUTH_REUSE:
                self._auth = await asyncio.to_thread(auth_headers, self.configuration)
                self._auth_at = time.monotonic()
            return self._auth  # callers copy it into their own headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
    ) -> bytes:
        """The body of a 2xx answer; ApiException for any other answer, KubeHttpFailure for
        none. Call it holding one of `slots`."""
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        typed = {} if data is None else {"Content-Type": content_type}
        headers = {**await self._auth_headers(), **typed}
        connect_failures, renewed = 0, False
        while True:
            try:
                async with self._open().request(
                    method,
                    self.base_url + path,
                    data=data,
                    headers=headers,
                    allow_redirects=False,
                    proxy=self._proxy,
                    proxy_headers=self._proxy_headers,
                    server_hostname=self._server_name,
                ) as answer:
                    raw = await answer.read()
                    status, reason = answer.status, answer.reason
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                # Not connected, so nothing was sent: safe to try again.
                if isinstance(exc, aiohttp.ClientSSLError) or connect_failures >= self._retries:
                    raise KubeHttpFailure(exc) from None
                connect_failures += 1
                continue
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise KubeHttpFailure(exc) from None
            if status == 401 and not renewed:
                # An expired token (a rotated service-account token, an exec plugin's): the
                # request was refused unread, so it goes again with headers asked anew.
                headers, renewed = {**await self._auth_headers(renew=True), **typed}, True
                continue
            if not 200 <= status < 300:
                raise ApiException(
                    status=status, reason=reason, body=raw.decode("utf-8", "replace")
                )
            return raw
