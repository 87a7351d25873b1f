"""One pooled HTTP client per remote Infisical instance: retries, rate-limit gate, concurrency.

Every resource that talks to the same instance shares one `InstanceTransport`, so the 429 gate
(`Retry-After` honoured for the whole instance) and the concurrency limit hold across them.

Requests go out through aiohttp (kopf's own HTTP client): at thousands of SecretSyncs a quiet
cycle is one conditional list, and aiohttp sends one for about a tenth of the CPU httpx takes
(httpcore's anyio streams pause and resume the socket's reading, two epoll_ctl calls, on every
receive). Answers are handed on as `httpx.Response`, the response type the client reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json as jsonlib
import logging
import random
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypedDict
from urllib.parse import urlsplit

import aiohttp
import aiohttp.helpers
import httpx
import yarl

from infisical_sync import metrics
from infisical_sync.fence import Fence
from infisical_sync.infisical.errors import (
    Fenced,
    InfisicalError,
    InsecureUrl,
    RateLimited,
    Redirected,
    ServerError,
    TLSError,
    Unreachable,
)

log = logging.getLogger(__name__)
_RETRY_IN = re.compile(r"try again in (\d+) second", re.IGNORECASE)
DEFAULT_RATE_LIMIT_WAIT = 60.0
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST_PORT = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*\.?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{{1,5}})?")


@dataclass(frozen=True)
class TransportOptions:
    concurrency: int = 5
    connect_timeout: float = 10.0
    request_timeout: float = 30.0  # per attempt, whole request
    max_attempts: int = 4
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    # A 429 gate shorter than this is waited out inside the call; a longer one fails the call
    # with RateLimited at once (the caller reschedules), so no request is sent before it ends.
    max_gate_wait: float = 5.0
    # Leader election: no write (any method but GET) is sent once the fence closed.
    fence: Fence = field(default_factory=Fence)


def retry_after_seconds(response: httpx.Response) -> float:
    """Retry-After header, else the seconds in Infisical's message, else 60 s."""
    header = response.headers.get("retry-after")
    if header:
        try:
            return max(0.0, float(header))
        except ValueError:
            pass
    try:
        message = str(response.json().get("message", ""))
    except ValueError:
        message = ""
    match = _RETRY_IN.search(message)
    return float(match.group(1)) if match else DEFAULT_RATE_LIMIT_WAIT


def _is_tls_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        if "CERTIFICATE_VERIFY_FAILED" in str(seen) or "certificate verify failed" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class InstanceTransport:
    """Sends requests to one Infisical instance."""

    def __init__(
        self,
        base_url: str,
        *,
        ca_pem: str | None = None,
        allow_http: bool = False,
        options: TransportOptions | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InsecureUrl(f"instanceUrl {base_url!r} is not an http(s) URL")
        if parts.scheme == "http" and not allow_http:
            raise InsecureUrl(
                "instanceUrl uses http://; "
                "set allowInsecureHttp only for loopback or test instances"
            )
        self.base_url = base_url.rstrip("/")
        self.instance = parts.netloc  # metrics label: host[:port] only
        self.options = options or TransportOptions()
        self._clock = clock
        self._sleep = sleep
        self._blocked_until = 0.0
        self._semaphore = asyncio.Semaphore(self.options.concurrency)
        self.in_flight = 0
        self.max_in_flight = 0
        self._users = 0  # sends, revocations and logins under way (see hold())
        self._idle = asyncio.Event()
        self._idle.set()
        # Which routes this instance serves, learnt on first use from Fastify's unknown-route 404
        # (never from a version string); None until known. Older self-hosted generations serve
        # only the second of each pair:
        #   /api/v4/secrets*               | /api/v3/secrets/raw*, /api/v3/secrets/batch/raw
        #   POST /api/v2/folders           | POST /api/v1/folders
        #   /api/v1/projects/slug/{slug}   | /api/v2/workspace/{slug}
        self.v4_supported: bool | None = None
        self.folders_v2_supported: bool | None = None
        self.project_slug_v1_supported: bool | None = None
        verify: ssl.SSLContext | bool = True
        if parts.scheme == "https":
            verify = ssl.create_default_context()
            if ca_pem:
                try:
                    verify.load_verify_locations(cadata=ca_pem)
                except (ssl.SSLError, ValueError) as exc:
                    # OpenSSL's reason only (e.g. "no start line"), never the bundle itself.
                    reason = getattr(exc, "reason", None) or type(exc).__name__
                    raise TLSError(
                        f"the CA bundle in tls.caSecretRef is not usable PEM ({reason}); "
                        "it must hold one or more -----BEGIN CERTIFICATE----- blocks"
                    ) from None
        self._tls: ssl.SSLContext | bool = verify
        self._session: aiohttp.ClientSession | None = None  # opened by the first request
        self._closed = False
        self._url = httpx.URL(self.base_url)  # parsed once: most answers' request needs no more
        # HTTPS_PROXY / HTTP_PROXY / NO_PROXY, as the httpx client honoured them: looked up once
        # here, not on every request as aiohttp's trust_env does (reading ~/.netrc each time).
        self._proxy: Any = None
        self._proxy_auth: aiohttp.BasicAuth | None = None
        with contextlib.suppress(LookupError):  # none for this URL
            self._proxy, self._proxy_auth = aiohttp.helpers.get_env_proxy_for_url(
                yarl.URL(self.base_url)
            )

    def _open(self) -> aiohttp.ClientSession:
        """The session, made on first use: aiohttp binds it to the running loop."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.options.concurrency, ssl=self._tls),
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=self.options.connect_timeout,
                    sock_read=self.options.request_timeout,
                ),
                headers={"User-Agent": "infisical-sync-operator"},
                # Set-Cookie from an instance or a proxy in front of it is never sent back.
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()

    def hold(self) -> None:
        """Keep the client open until release(): a retirement's close waits for it."""
        self._users += 1
        self._idle.clear()

    def release(self) -> None:
        self._users -= 1
        if not self._users:
            self._idle.set()

    @contextlib.contextmanager
    def in_use(self) -> Iterator[None]:
        self.hold()
        try:
            yield
        finally:
            self.release()

    async def aclose_when_idle(self) -> None:
        """Close once nothing uses the client (the connection moved to another URL or CA)."""
        while self._users:
            await self._idle.wait()
        await self.aclose()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def blocked_for(self) -> float:
        return max(0.0, self._blocked_until - self._clock())

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter."""
        ceiling = min(self.options.backoff_cap, self.options.backoff_base * (2**attempt))
        return random.uniform(0, ceiling)  # noqa: S311 - jitter, not cryptography

    async def _wait_for_gate(self) -> None:
        """Called holding a concurrency slot, right before sending: a request that queued for
        a slot while a 429 arrived must not go out before its Retry-After ends."""
        while (remaining := self.blocked_for) > 0:
            if remaining > self.options.max_gate_wait:
                raise RateLimited(
                    f"{self.instance} is rate limiting; no request to it for {remaining:.0f}s more",
                    retry_after=remaining,
                )
            await self._sleep(remaining)  # another 429 meanwhile extends the gate: look again

    async def send(
        self,
        method: str,
        path: str,
        *,
        endpoint: str,
        json: Any = None,
        content: bytes | None = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Send with retries. Returns any non-retryable response (callers map 4xx to errors).
        `content`: a body the caller serialized itself (e.g. to know its size)."""
        with self.in_use():
            return await self._send(
                method,
                path,
                endpoint=endpoint,
                json=json,
                content=content,
                params=params,
                headers=headers,
            )

    async def _send(
        self,
        method: str,
        path: str,
        *,
        endpoint: str,
        json: Any,
        content: bytes | None,
        params: dict[str, str] | None,
        headers: dict[str, str] | None,
    ) -> httpx.Response:
        last_error: InfisicalError | None = None
        for attempt in range(self.options.max_attempts):
            if attempt:
                await self._sleep(self.backoff(attempt - 1))
            try:
                async with self._semaphore:
                    await self._wait_for_gate()
                    if self.closed:  # retired: the connection moved to another URL or CA
                        raise Unreachable(
                            f"the client for {self.instance} was closed: "
                            "the connection's instanceUrl or CA changed"
                        )
                    what = f"{method} {endpoint} to {self.instance}"
                    fenced = (
                        self.options.fence.sending(what, Fenced)
                        if method.upper() != "GET"
                        else contextlib.nullcontext()
                    )
                    with fenced:
                        started = self._clock()
                        self.in_flight += 1
                        self.max_in_flight = max(self.max_in_flight, self.in_flight)
                        # A deadline for the whole call (httpx's timeouts are per phase);
                        # asyncio.timeout, unlike wait_for on 3.11, runs it in this task.
                        deadline = self.options.request_timeout + self.options.connect_timeout
                        try:
                            async with asyncio.timeout(deadline):
                                response = await self._request(
                                    method, path, json, content, params, headers
                                )
                        finally:
                            self.in_flight -= 1
            except _RedirectAnswer as answer:
                self._count(endpoint, str(answer.response.status_code))
                raise Redirected(
                    redirect_message(answer.response, f"{method} {endpoint}"),
                    status=answer.response.status_code,
                ) from None
            except TimeoutError:  # aiohttp's own timeouts are TimeoutErrors too
                self._count(endpoint, "timeout")
                last_error = Unreachable(
                    f"{method} {endpoint} to {self.instance} timed out "
                    f"after {self._clock() - started:.1f}s"
                )
                continue
            except (aiohttp.ClientError, OSError) as exc:
                if isinstance(exc, aiohttp.ClientSSLError) or _is_tls_failure(exc):
                    self._count(endpoint, "tls_error")
                    raise TLSError(
                        f"TLS verification of {self.instance} failed: {_problem(exc)}. "
                        "Set tls.caSecretRef to the CA that signed its certificate"
                    ) from None
                self._count(endpoint, "network_error")
                last_error = Unreachable(f"{self.instance} unreachable: {_problem(exc)}")
                continue
            self._count(endpoint, str(response.status_code))
            log.debug(
                "%s %s -> %s in %.0f ms",
                method,
                endpoint,
                response.status_code,
                (self._clock() - started) * 1000,
            )
            if response.status_code == 429:
                seconds = retry_after_seconds(response)
                self._blocked_until = max(self._blocked_until, self._clock() + seconds)
                metrics.RATE_LIMITED.labels(self.instance).inc()
                last_error = RateLimited(
                    f"{self.instance} answered 429; retrying after {seconds:.0f}s",
                    retry_after=seconds,
                    status=429,
                    **_remote(response),
                )
                continue
            if response.status_code >= 500:
                last_error = ServerError(
                    f"{method} {endpoint} failed with {response.status_code}",
                    status=response.status_code,
                    **_remote(response),
                )
                continue
            return response
        assert last_error is not None
        raise last_error

    async def _request(
        self,
        method: str,
        path: str,
        json: Any,
        content: bytes | None,
        params: dict[str, str] | None,
        headers: dict[str, str] | None,
    ) -> httpx.Response:
        """One attempt. Redirects are never followed: a 3xx (but 304) raises _RedirectAnswer."""
        url = self.base_url + path
        sent = dict(headers or {})
        if json is not None:
            content = jsonlib.dumps(json, separators=(",", ":"), ensure_ascii=False).encode()
            sent["Content-Type"] = "application/json"
        async with self._open().request(
            method,
            url,
            params=params,
            data=content,
            headers=sent,
            allow_redirects=False,
            proxy=self._proxy,
            proxy_auth=self._proxy_auth,
        ) as answer:
            body = await answer.read()  # decompressed: its encoding headers no longer apply
            status = answer.status
            redirect = 300 <= status < 400 and status != 304  # 304: the answer to If-None-Match
            # Read for its headers (If-None-Match); its URL only places a redirect's Location.
            sent_to = httpx.URL(str(answer.url)) if redirect else self._url
            response = httpx.Response(
                status,
                headers=[item for item in answer.raw_headers if item[0].lower() not in _FRAMING],
                content=body,
                request=httpx.Request(method, sent_to, headers=sent),
            )
        if redirect:
            raise _RedirectAnswer(response)
        return response

    def _count(self, endpoint: str, status: str) -> None:
        metrics.API_CALLS.labels(self.instance, endpoint, status).inc()


# Headers about how the body came over the wire, not what it is.
_FRAMING = frozenset({b"content-encoding", b"content-length", b"transfer-encoding"})


class _RedirectAnswer(Exception):
    """Raised by _request() for a 3xx (but 304); send() turns it into Redirected."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def redirect_message(response: httpx.Response, what: str) -> str:
    """Where a 3xx pointed, without its query string (redirects are never followed)."""
    location = response.headers.get("location")
    if location:
        target = _redirect_target(response, location)
        where = "gave an invalid Location" if target is None else f"redirects to {target}"
    else:
        where = "gave no Location"
    return (
        f"{what} answered {response.status_code}: {where}; redirects are not followed, "
        "set instanceUrl to the final URL of the Infisical API"
    )


def _redirect_target(response: httpx.Response, location: str) -> str | None:
    """scheme://host[:port]/path of a Location, or None when it is no usable http(s) URL (then
    nothing of it is quoted: a malformed header may hold anything)."""
    try:
        target = urlsplit(str(response.url.join(location)))
        host = target.netloc.rpartition("@")[2]  # never userinfo
        if target.scheme not in ("http", "https") or not _HOST_PORT.fullmatch(host):
            return None
        return f"{target.scheme}://{host}{target.path}"
    except (httpx.InvalidURL, ValueError):
        return None


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:200]


def _problem(exc: BaseException) -> str:
    """What went wrong, the same text every time: aiohttp's own text for a failed connection
    quotes its SSL setting, for a CA an object address that differs in each process."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return _short(exc.certificate_error)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return _short(exc.os_error)
    return _short(exc)


class RemoteDetails(TypedDict):
    remote_message: str | None
    request_id: str | None
    error: str | None


def _remote(response: httpx.Response) -> RemoteDetails:
    """Infisical's own message, reqId and error name from an error envelope."""
    try:
        body = response.json()
    except ValueError:
        return {"remote_message": None, "request_id": None, "error": None}
    if not isinstance(body, dict):
        return {"remote_message": None, "request_id": None, "error": None}
    message = body.get("message")
    if isinstance(message, list):  # zod issues (a validation failure)
        message = "; ".join(_issue_text(issue) for issue in message)
    return {
        "remote_message": None if message is None else str(message)[:500],
        "request_id": body.get("reqId"),
        "error": None if body.get("error") is None else str(body.get("error")),
    }


remote_details = _remote

# zod's enum and literal messages end by quoting the value received: never repeat a request's.
_RECEIVED = re.compile(r",? received '.*'$", re.DOTALL)


def _issue_text(issue: object) -> str:
    """One zod issue as `path.to.field: message` (`secrets.0.secretKey: Required`). Only its
    path and message are read: other fields (`received`, ...) may hold request values."""
    if not isinstance(issue, dict):
        return str(issue)
    text = _RECEIVED.sub("", str(issue.get("message") or issue.get("code") or "invalid"))
    path = issue.get("path")
    where = ".".join(str(part) for part in path) if isinstance(path, list) else ""
    return f"{where}: {text}" if where else text
