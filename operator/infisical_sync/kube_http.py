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

import json
import ssl
from collections.abc import Mapping
from typing import Any

import aiohttp
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException


def tls_context(configuration: client.Configuration) -> ssl.SSLContext:
    """TLS as the kubernetes client is configured (kubeconfig or in-cluster): CA, client cert.
    `insecure-skip-tls-verify` skips checking the server only: the client cert is still sent."""
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert or None)
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file or None)
    return context


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


class ApiServerHttp:
    """One aiohttp session to the API server, opened by the first request (aiohttp binds it to
    the running loop) and closed by `aclose`."""

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
        self._retries = connect_retries(configuration)
        self._timeout = aiohttp.ClientTimeout(
            # Per phase, like the synchronous client's (connect, read): waiting for a pooled
            # connection is not a connect that timed out.
            total=None,
            sock_connect=connect_timeout,
            sock_read=read_timeout,
        )
        self._concurrency = concurrency
        self._tls: ssl.SSLContext | None = (
            tls_context(configuration) if self.base_url.startswith("https:") else None
        )
        self._server_name: str | None = getattr(configuration, "tls_server_name", None) or None
        self._proxy: str | None = configuration.proxy or None
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._concurrency, ssl=self._tls or False),
                timeout=self._timeout,
                headers={"User-Agent": "infisical-sync-operator", "Accept": "application/json"},
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
    ) -> tuple[int, bytes]:
        """(status, body) of a 2xx answer; ApiException for any other answer, KubeHttpFailure
        for none."""
        headers = auth_headers(self.configuration)
        data: bytes | None = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = content_type
        attempt = 0
        while True:
            try:
                async with self._open().request(
                    method,
                    self.base_url + path,
                    data=data,
                    headers=headers,
                    allow_redirects=False,
                    proxy=self._proxy,
                    server_hostname=self._server_name,
                ) as answer:
                    raw = await answer.read()
                    status, reason = answer.status, answer.reason
                break
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                # Not connected, so nothing was sent: safe to try again.
                if isinstance(exc, aiohttp.ClientSSLError) or attempt >= self._retries:
                    raise KubeHttpFailure(exc) from None
                attempt += 1
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise KubeHttpFailure(exc) from None
        if not 200 <= status < 300:
            raise ApiException(status=status, reason=reason, body=raw.decode("utf-8", "replace"))
        return status, raw
