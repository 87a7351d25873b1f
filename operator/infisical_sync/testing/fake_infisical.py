"""A faithful fake of the Infisical HTTP API over real HTTP(S) on loopback (aiohttp).

It follows ../shared/reference/infisical-api.md: Universal Auth (login, renew, revoke, TTL, max TTL,
lockout, client-secret use limits, trusted IPs), Kubernetes Auth (a real TokenReview against the
identity's API server: fake_kubernetes_auth.py, with its sources), the error envelope, projects,
environments, folders, v4 and legacy v3 secret routes (single and all-or-nothing batches), strong
ETags with If-None-Match, per-bucket rate limits with Retry-After, and fault injection for tests.

Use it from Python (``async with FakeInfisical() as fake``; seed via ``fake.state``) or standalone
with ``infisical-sync fake-infisical --seed seed.yaml`` (see README for the seed format).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets as random_ids
import ssl
import string
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from infisical_sync.testing import fake_kubernetes_auth
from infisical_sync.testing.fake_profiles import ServerProfile, profile_named
from infisical_sync.testing.fake_references import (
    LIST_REFUSED,
    ReferenceForbidden,
    expand_listing,
    expand_references,
)
from infisical_sync.testing.fake_state import (
    AccessToken,
    ApprovalRequest,
    Environment,
    FakeState,
    Identity,
    Project,
    Secret,
    js_trim,
    normalise_path,
    stored_value,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_KEY_LENGTH = 500
LOCKOUT_THRESHOLD = 3
LOCKOUT_SECONDS = 300
LOCKOUT_COUNTER_RESET = 30
HIDDEN_VALUE = "<hidden-by-infisical>"
# Infisical sets no bodyLimit, so Fastify's default holds: a larger body is refused with 413
# before any handler (or the error envelope) sees it.
FASTIFY_BODY_LIMIT = 1024 * 1024
BODY_TOO_LARGE = {
    "statusCode": 413,
    "code": "FST_ERR_CTP_BODY_TOO_LARGE",
    "error": "Payload Too Large",
    "message": "Request body is too large",
}
INVALID_FOLDER_NAME = (
    "Invalid folder name. Only alphanumeric characters, dashes, and underscores are allowed."
)


class ApiError(Exception):
    """Raised by handlers; rendered as Infisical's error envelope."""

    def __init__(
        self,
        status: int,
        message: Any,
        error: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(str(message))
        self.status = status
        self.message = message
        self.error = error
        self.details = details
        self.headers = headers or {}


def bad_request(message: str, error: str = "BadRequest") -> ApiError:
    return ApiError(400, message, error)


def not_found(message: str, error: str = "NotFound") -> ApiError:
    return ApiError(404, message, error)


def validation(issues: list[dict[str, Any]]) -> ApiError:
    return ApiError(422, issues, "ValidationFailure")


def _issue(path: list[str | int], message: str, code: str = "custom") -> dict[str, Any]:
    return {"code": code, "message": message, "path": path}


@dataclass
class Fault:
    """An injected misbehaviour for requests whose method and path match."""

    kind: str  # "latency" | "status" | "reset" | "hang" | "missing" (Fastify's unknown route)
    path_pattern: str = ".*"  # regex searched in the request path
    method: str | None = None
    times: int | None = None  # None = until cleared
    skip: int = 0  # the first `skip` matching requests pass untouched (not counted in `times`)
    status: int = 503  # a 3xx redirects to `location`
    delay: float = 0.0
    retry_after: int = 60  # for status 429
    error: str = "InternalServerError"  # the envelope's `error` for other statuses
    location: str | None = None  # for 3xx; default: the same path on another host
    body: str | None = None  # for "status": this text as is (e.g. a proxy's HTML page)

    def matches(self, request: web.Request) -> bool:
        if self.method and request.method != self.method.upper():
            return False
        return re.search(self.path_pattern, request.path) is not None


@dataclass
class RequestRecord:
    method: str
    path: str
    status: int
    bucket: str | None
    query: dict[str, str]
    authorized: bool
    at: float  # when the answer was written
    started_at: float = 0.0  # when the request arrived
    retry_after: int | None = None  # the Retry-After of a 429
    if_none_match: str | None = None
    body_bytes: int | None = None  # the request's Content-Length


@dataclass
class RateLimits:
    """Requests per minute per client IP and bucket (Infisical's instance defaults)."""

    enabled: bool = True
    read: int = 60
    write: int = 200
    secrets: int = 60

    def limit(self, bucket: str) -> int:
        return int(getattr(self, bucket))


@dataclass
class _Window:
    started: float
    count: int = 0


@dataclass
class FakeInfisical:
    """The fake server and its test handle."""

    host: str = "127.0.0.1"
    port: int = 0
    tls: bool = False
    state: FakeState = field(default_factory=FakeState)
    # The server generation answered as: a name from PROFILES or a ServerProfile.
    profile: ServerProfile | str = "current"
    rate_limits: RateLimits = field(default_factory=lambda: RateLimits(enabled=False))
    faults: list[Fault] = field(default_factory=list)
    log: list[RequestRecord] = field(default_factory=list)
    counters: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    ca_pem: bytes | None = None
    in_flight: int = 0
    max_in_flight: int = 0  # the most requests seen at once (concurrency-limit tests)
    body_limit: int = FASTIFY_BODY_LIMIT  # bytes; a larger request body is answered 413
    _runner: web.AppRunner | None = None
    _windows: dict[tuple[str, str], _Window] = field(default_factory=dict)
    _tls_dir: tempfile.TemporaryDirectory[str] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.profile, str):
            self.profile = profile_named(self.profile)

    @property
    def server(self) -> ServerProfile:
        """The profile in force (a ServerProfile, whatever `profile` was given as)."""
        assert isinstance(self.profile, ServerProfile)
        return self.profile

    def override(self, **fields: Any) -> None:
        """Fine-grained switches on top of the profile (e.g. etag=False, rate limits aside)."""
        self.profile = self.server.with_overrides(**fields)

    # The switches from before profiles, kept as overrides of single profile fields.
    @property
    def etag_enabled(self) -> bool:
        return self.server.etag

    @etag_enabled.setter
    def etag_enabled(self, value: bool) -> None:
        self.override(etag=value)

    @property
    def v4_enabled(self) -> bool:
        return self.server.v4_routes

    @v4_enabled.setter
    def v4_enabled(self, value: bool) -> None:
        self.override(v4_routes=value)

    @property
    def metadata_supported(self) -> bool:
        return self.server.secret_metadata

    @metadata_supported.setter
    def metadata_supported(self, value: bool) -> None:
        self.override(secret_metadata=value)

    # --- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> FakeInfisical:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def ca_file(self) -> Path:
        """Path of the CA bundle that signed the TLS certificate (tls=True only)."""
        if self._tls_dir is None:
            raise RuntimeError("the fake serves plain HTTP")
        return Path(self._tls_dir.name) / "ca.crt"

    def build_app(self) -> web.Application:
        # aiohttp's own cap (1 MiB by default) must not answer first: the middleware applies
        # body_limit the way Fastify does. A body without Content-Length is read to the cap.
        app = web.Application(middlewares=[self._middleware], client_max_size=self.body_limit)
        self._routes(app)
        return app

    async def start(self) -> None:
        ssl_context: ssl.SSLContext | None = None
        if self.tls:
            # Imported here: cryptography is a test extra, not in the operator image.
            from infisical_sync.testing.certs import CertificateAuthority

            self._tls_dir = tempfile.TemporaryDirectory(prefix="fake-infisical-tls-")
            ca = CertificateAuthority("fake-infisical-ca")
            self.ca_pem = ca.cert_pem
            directory = Path(self._tls_dir.name)
            (directory / "ca.crt").write_bytes(ca.cert_pem)
            cert, key = ca.issue_server([self.host, "localhost"]).write(directory, "server")
            ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_context.load_cert_chain(cert, key)
        self._runner = web.AppRunner(self.build_app(), access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=ssl_context)
        await site.start()
        if self.port == 0:
            server = site._server
            assert server is not None
            sockets = getattr(server, "sockets", None) or []
            self.port = int(sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._tls_dir is not None:
            self._tls_dir.cleanup()
            self._tls_dir = None

    # --- test handle ---------------------------------------------------------------------------

    def inject(self, fault: Fault) -> Fault:
        self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        self.faults.clear()

    def count(
        self, path_pattern: str = ".*", method: str | None = None, status: int | None = None
    ) -> int:
        return sum(
            1
            for record in self.log
            if re.search(path_pattern, record.path)
            and (method is None or record.method == method.upper())
            and (status is None or record.status == status)
        )

    def sent_while_rate_limited(self, margin: float = 0.0) -> list[RequestRecord]:
        """Requests that arrived while a 429's Retry-After was running.

        `margin`: requests arriving within that many seconds after the 429 was answered are not
        counted; they may have been sent before the client could read the 429.
        """
        windows = [
            (record.at + margin, record.at + record.retry_after)
            for record in self.log
            if record.status == 429 and record.retry_after
        ]
        return [
            record
            for record in self.log
            if any(start < record.started_at < end for start, end in windows)
        ]

    def reset_log(self) -> None:
        self.log.clear()
        self.counters.clear()

    # --- middleware: faults, rate limits, envelope, ETag, request log -------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        bucket = _bucket(request)
        status = 500
        started_at = self.state.clock.now()
        retry_after: int | None = None
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            response = await self._apply_faults(request)
            if response is None:
                self._check_rate_limit(request, bucket)  # an onRequest hook: before the body
                if (request.content_length or 0) > self.body_limit:
                    response = web.json_response(BODY_TOO_LARGE, status=413)
                else:
                    response = await handler(request)
                    response = self._apply_etag(request, response)
            status = response.status
            return response
        except ApiError as exc:
            if "retry-after" in exc.headers:
                retry_after = int(exc.headers["retry-after"])
            error_response = self._error_response(exc)
            status = error_response.status  # the profile may answer another status (401)
            return error_response
        except web.HTTPNotFound:
            status = 404
            return web.json_response(
                {
                    "message": f"Route {request.method}:{request.raw_path} not found",
                    "error": "Not Found",
                    "statusCode": 404,
                },
                status=404,
            )
        except web.HTTPRequestEntityTooLarge:  # a body without Content-Length, over the limit
            status = 413
            return web.json_response(BODY_TOO_LARGE, status=413)
        except json.JSONDecodeError:
            status = 400
            return self._error_response(bad_request("Body is not valid JSON", "Bad Request"))
        finally:
            self.in_flight -= 1
            self.log.append(
                RequestRecord(
                    method=request.method,
                    path=request.path,
                    status=status,
                    bucket=bucket,
                    query=dict(request.query),
                    authorized="Authorization" in request.headers,
                    at=self.state.clock.now(),
                    started_at=started_at,
                    retry_after=retry_after,
                    if_none_match=request.headers.get("If-None-Match"),
                    body_bytes=request.content_length,
                )
            )
            self.counters[(request.method, _route_name(request.path), status)] += 1

    async def _apply_faults(self, request: web.Request) -> web.StreamResponse | None:
        for fault in list(self.faults):
            # Checked again on every step: while this request waited on an earlier fault, a
            # concurrent one may have used up (and removed) a later counted fault.
            if not any(f is fault for f in self.faults) or not fault.matches(request):
                continue
            if fault.skip > 0:
                fault.skip -= 1
                continue
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    # By identity: an equal fault injected twice is two faults.
                    self.faults = [f for f in self.faults if f is not fault]
            if fault.kind == "latency":
                await asyncio.sleep(fault.delay)
            elif fault.kind == "hang":
                await asyncio.sleep(fault.delay or 3600)
            elif fault.kind == "reset":
                transport = request.transport
                if transport is not None:
                    transport.abort()
                raise ApiError(500, "connection reset by fault injection", "Fault")
            elif fault.kind == "status" and fault.status == 429:
                raise ApiError(
                    429,
                    f"Rate limit exceeded. Please try again in {fault.retry_after} seconds",
                    "RateLimitExceeded",
                    headers={"retry-after": str(fault.retry_after)},
                )
            elif fault.kind == "status" and fault.body is not None:
                return web.Response(status=fault.status, text=fault.body, content_type="text/html")
            elif fault.kind == "status" and 300 <= fault.status < 400:
                location = fault.location or f"https://infisical.example.com{request.path_qs}"
                return web.Response(status=fault.status, headers={"Location": location})
            elif fault.kind == "status":
                messages = {
                    403: "You are not allowed to access this resource",
                    502: "Bad Gateway",
                    503: "Service Unavailable",
                    504: "Gateway Timeout",
                }
                raise ApiError(
                    fault.status,
                    messages.get(fault.status, "Something went wrong"),
                    fault.error,
                )
            elif fault.kind == "missing":
                raise web.HTTPNotFound()
        return None

    def _check_rate_limit(self, request: web.Request, bucket: str | None) -> None:
        if not self.rate_limits.enabled or bucket is None:
            return
        limit = self.rate_limits.limit(bucket)
        now = self.state.clock.now()
        key = (request.remote or "?", bucket)
        window = self._windows.get(key)
        if window is None or now - window.started >= 60:
            window = self._windows[key] = _Window(started=now)
        window.count += 1
        reset_in = max(1, int(-(-(window.started + 60 - now) // 1)))
        if window.count > limit:
            raise ApiError(
                429,
                f"Rate limit exceeded. Please try again in {reset_in} seconds",
                "RateLimitExceeded",
                headers={
                    "retry-after": str(reset_in),
                    "x-ratelimit-limit": str(limit),
                    "x-ratelimit-remaining": "0",
                    "x-ratelimit-reset": str(reset_in),
                },
            )

    def _apply_etag(self, request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        if not self.server.etag or not isinstance(response, web.Response) or response.status != 200:
            return response
        body = response.body
        if not isinstance(body, bytes):
            return response
        etag = '"' + hashlib.sha1(body, usedforsecurity=False).hexdigest() + '"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        response.headers["ETag"] = etag
        return response

    def _error_response(self, exc: ApiError) -> web.Response:
        status = exc.status
        if exc.error == "ValidationFailure":
            status = self.server.validation_status  # 422; 401 on older generations
        body: dict[str, Any] = {}
        if self.server.request_ids:
            body["reqId"] = "req-" + "".join(
                random_ids.choice(string.ascii_letters + string.digits) for _ in range(14)
            )
        body.update({"statusCode": status, "message": exc.message, "error": exc.error})
        if exc.details is not None:
            body["details"] = exc.details
        return web.json_response(body, status=status, headers=exc.headers)

    # --- routes --------------------------------------------------------------------------------

    def _routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/api/status", self._status)
        r.add_post("/api/v1/auth/universal-auth/login", self._login)
        r.add_post("/api/v1/auth/kubernetes-auth/login", self._kubernetes_login)
        r.add_post("/api/v1/auth/token/renew", self._renew)
        r.add_post("/api/v1/auth/token/revoke", self._revoke)
        r.add_get("/api/v1/projects", self._list_projects)
        r.add_get(
            "/api/v1/projects/slug/{slug}", self._served("project_slug_v1", self._project_by_slug)
        )
        r.add_get("/api/v2/workspace/{slug}", self._project_by_slug)
        r.add_get("/api/v1/projects/{id}", self._project_by_id)
        r.add_post("/api/v2/folders", self._served("folders_v2", self._create_folder))
        r.add_get("/api/v2/folders", self._served("folders_v2", self._list_folders))
        r.add_post("/api/v1/folders", self._served("folders_v1", self._create_folder_v1))
        r.add_get("/api/v1/folders", self._served("folders_v1", self._list_folders))
        for version in ("v3", "v4"):
            base = "/api/v4/secrets" if version == "v4" else "/api/v3/secrets"
            batch = f"{base}/batch" if version == "v4" else f"{base}/batch/raw"
            single = f"{base}/{{name}}" if version == "v4" else f"{base}/raw/{{name}}"
            listing = base if version == "v4" else f"{base}/raw"
            r.add_get(listing, self._versioned(version, self._list_secrets))
            r.add_post(batch, self._versioned(version, self._batch_create))
            r.add_patch(batch, self._versioned(version, self._batch_update))
            r.add_delete(batch, self._versioned(version, self._batch_delete))
            r.add_get(single, self._versioned(version, self._get_secret))
            r.add_post(single, self._versioned(version, self._create_secret))
            r.add_patch(single, self._versioned(version, self._update_secret))
            r.add_delete(single, self._versioned(version, self._delete_secret))

    def _versioned(
        self, version: str, handler: Callable[[web.Request, str], Awaitable[web.Response]]
    ) -> Handler:
        async def route(request: web.Request) -> web.StreamResponse:
            if version == "v4" and not self.server.v4_routes:
                raise web.HTTPNotFound()
            return await handler(request, version)

        return route

    def _served(self, feature: str, handler: Handler) -> Handler:
        """A route only the profiles with `feature` serve (others: Fastify's unknown route)."""

        async def route(request: web.Request) -> web.StreamResponse:
            if not getattr(self.server, feature):
                raise web.HTTPNotFound()
            return await handler(request)

        return route

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response({"date": self.state.clock.now(), "message": "Ok"})

    # --- auth ----------------------------------------------------------------------------------

    async def _login(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        client_id = js_trim(str(body.get("clientId") or ""))
        client_secret = js_trim(str(body.get("clientSecret") or ""))
        issues = [
            _issue([name], "Required", "invalid_type")
            for name, value in (("clientId", client_id), ("clientSecret", client_secret))
            if not value
        ]
        if issues:
            raise validation(issues)
        identity = self.state.identities.get(client_id)
        if identity is None:
            raise ApiError(401, "Invalid credentials", "UnauthorizedError")
        if not identity.ip_trusted(request.remote):
            raise ApiError(
                403,
                "You are not allowed to access this resource from the current IP address",
                "ForbiddenError",
            )
        now = self.state.clock.now()
        if identity.locked_until > now:
            raise ApiError(
                401,
                "This identity auth method is temporarily locked, please try again later",
                "UnauthorizedError",
            )
        if identity.secret_revoked or client_secret != identity.client_secret:
            if now - identity.last_failure_at > LOCKOUT_COUNTER_RESET:
                identity.failed_attempts = 0
            identity.failed_attempts += 1
            identity.last_failure_at = now
            if identity.failed_attempts >= LOCKOUT_THRESHOLD:
                identity.locked_until = now + LOCKOUT_SECONDS
                identity.failed_attempts = 0
            raise ApiError(401, "Invalid credentials", "UnauthorizedError")
        if (
            identity.client_secret_ttl > 0
            and now > identity.created_at + identity.client_secret_ttl
        ):
            identity.secret_revoked = True
            raise ApiError(401, "Access denied due to expired client secret", "UnauthorizedError")
        if identity.num_uses_limit > 0 and identity.num_uses >= identity.num_uses_limit:
            identity.secret_revoked = True
            raise ApiError(
                401, "Access denied due to client secret usage limit reached", "UnauthorizedError"
            )
        if body.get("organizationSlug") and identity.organization_slug not in (
            None,
            body["organizationSlug"],
        ):
            raise ApiError(
                403, "Identity is not part of the requested organization", "ForbiddenError"
            )
        identity.num_uses += 1
        identity.failed_attempts = 0
        token = self.state.issue_token(identity)
        return web.json_response(_token_body(token))

    async def _kubernetes_login(self, request: web.Request) -> web.Response:
        """Kubernetes Auth: the JWT goes to the identity's API server (TokenReview), then the
        identity's allow-lists decide (fake_kubernetes_auth.py)."""
        body = await _json_body(request)
        issues = [
            _not_a_string([name], body.get(name))
            for name in ("identityId", "jwt")
            if not isinstance(body.get(name), str)
        ]
        if issues:
            raise validation(issues)
        identity_id, jwt = js_trim(body["identityId"]), js_trim(body["jwt"])
        self.state.kubernetes_jwts_seen.append(jwt)
        identity = self.state.identity_by_id(identity_id)
        if identity is None or identity.kubernetes_auth is None:
            raise ApiError(404, fake_kubernetes_auth.NOT_CONFIGURED, "NotFound")
        try:
            await fake_kubernetes_auth.review(identity.kubernetes_auth, jwt)
        except fake_kubernetes_auth.Refusal as refusal:
            raise ApiError(refusal.status, refusal.message, refusal.error) from None
        token = self.state.issue_token(identity)
        return web.json_response(_token_body(token))

    async def _renew(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        token = self._token_record(str(body.get("accessToken") or ""))
        now = self.state.clock.now()
        if token.ttl_expired(now):
            raise ApiError(
                401, "Failed to renew MI access token due to TTL expiration", "UnauthorizedError"
            )
        if token.max_ttl > 0 and now + token.ttl > token.created_at + token.max_ttl:
            if self.server.refused_renewal_deletes_token:
                self.state.tokens.pop(token.token, None)
            raise ApiError(
                401,
                "Failed to renew MI access token past its Max TTL expiration",
                "UnauthorizedError",
            )
        token.renewed_at = now
        return web.json_response(_token_body(token))

    async def _revoke(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        token = self._token_record(str(body.get("accessToken") or ""))
        token.revoked = True
        return web.json_response({"message": "Successfully revoked access token"})

    def _token_record(self, raw: str) -> AccessToken:
        if not raw.startswith("eyJ") or raw.count(".") != 2:
            raise ApiError(403, "jwt malformed", "TokenError")
        token = self.state.tokens.get(raw)
        now = self.state.clock.now()
        if token is not None and token.jwt_expired(now):
            raise ApiError(403, "Your token has expired. Please re-authenticate.", "TokenError")
        if token is None or token.revoked:
            raise ApiError(401, "No identity access token found", "UnauthorizedError")
        return token

    def _authenticate(self, request: web.Request) -> Identity:
        header = request.headers.get("Authorization", "")
        if not header:
            raise ApiError(401, "Token missing", "UnauthorizedError")
        # The server cuts the first 7 characters ("Bearer ") unchecked and verifies the rest.
        raw = header[7:]
        if not raw:
            raise ApiError(403, "jwt must be provided", "TokenError")
        token = self._token_record(raw)
        if token.ttl_expired(self.state.clock.now()):
            raise ApiError(
                401,
                "Failed to authenticate MI access token due to TTL expiration",
                "UnauthorizedError",
            )
        identity = self.state.identities.get(token.identity_id)
        if identity is None:
            raise ApiError(401, "No identity access token found", "UnauthorizedError")
        return identity

    # --- projects and folders ------------------------------------------------------------------

    async def _list_projects(self, request: web.Request) -> web.Response:
        identity = self._authenticate(request)
        projects = [p.public() for p in self.state.projects.values() if p.id in identity.projects]
        return web.json_response({"projects": projects})

    async def _project_by_slug(self, request: web.Request) -> web.Response:
        identity = self._authenticate(request)
        slug = request.match_info["slug"]
        project = next((p for p in self.state.projects.values() if p.slug == slug), None)
        if project is None:
            raise not_found(f"Project with slug '{slug}' not found")
        self._member(identity, project.id)
        return web.json_response(project.public())

    async def _project_by_id(self, request: web.Request) -> web.Response:
        identity = self._authenticate(request)
        project_id = request.match_info["id"]
        project = self._member(identity, project_id)
        return web.json_response({"project": project.public()})

    def _member(self, identity: Identity, project_id: str) -> Project:
        project = self.state.projects.get(project_id)
        if project is None or project_id not in identity.projects:
            raise ApiError(
                403,
                "You are not allowed to access this resource",
                f"Identity is not a member of the specified project with ID '{project_id}'",
            )
        return project

    def _permit(
        self, identity: Identity, project: Project, environment: str, action: str, subject: str
    ) -> None:
        if not identity.projects[project.id].allows(environment, action):
            verb = {"read": "readValue", "write": "edit", "create": "create", "delete": "delete"}[
                action
            ]
            raise ApiError(
                403,
                f"You are not allowed to {verb} on {subject}",
                "PermissionDenied",
                details=[
                    {
                        "action": verb,
                        "inverted": False,
                        "subject": subject,
                        "conditions": {"environment": environment},
                    }
                ],
            )

    async def _create_folder(self, request: web.Request) -> web.Response:
        """POST /api/v2/folders: creates the missing segments of `path`, then the leaf."""
        identity = self._authenticate(request)
        body = await _json_body(request)
        name = js_trim(str(body.get("name") or ""))
        if not _valid_folder_name(name):
            raise validation([_issue(["name"], INVALID_FOLDER_NAME)])
        project = self._member(
            identity, str(body.get("projectId") or body.get("workspaceId") or "")
        )
        env, path = self._make_folder(identity, project, body, name)
        folder = {
            **self._folder_json(env, path),
            "isReserved": False,
            "description": body.get("description"),
            "path": path,
        }
        return web.json_response({"folder": folder})

    async def _create_folder_v1(self, request: web.Request) -> web.Response:
        """POST /api/v1/folders, the legacy route (`workspaceId`, `path` or `directory`)."""
        identity = self._authenticate(request)
        body = await _json_body(request)
        name = js_trim(str(body.get("name") or ""))
        if not _valid_folder_name(name) and self.server.v1_folder_name_validated:
            raise validation([_issue(["name"], INVALID_FOLDER_NAME)])
        project = self._member(identity, str(body.get("workspaceId") or ""))
        if not _valid_folder_name(name):  # unvalidated: it fails deep in the service
            raise ApiError(500, "Something went wrong", "InternalServerError")
        env, path = self._make_folder(identity, project, body, name)
        return web.json_response({"folder": {**self._folder_json(env, path), "isReserved": False}})

    def _make_folder(
        self, identity: Identity, project: Project, body: dict[str, Any], name: str
    ) -> tuple[Environment, str]:
        """The folder service (both routes): mkdir -p; an existing leaf by profile."""
        env = self._environment(project, str(body.get("environment") or ""))
        self._permit(identity, project, env.slug, "write", "secret-folders")
        parent = normalise_path(body.get("path") or body.get("directory"))
        path = normalise_path(f"{parent}/{name}")
        if path in env.folders:
            if self.server.existing_folder_conflict:
                raise bad_request(f"Folder with name '{name}' already exists in path '{parent}'")
            return env, path  # the existing folder, as it is
        env.mkdir(path, self.state.clock.now())
        return env, path

    def _folder_json(self, env: Environment, path: str) -> dict[str, Any]:
        """A folder as folder listings carry it (creates add a few fields)."""
        record = env.folder_records[path]
        parent = path.rsplit("/", 1)[0] or "/"
        return {
            "id": record.id,
            "name": path.rsplit("/", 1)[-1],
            "envId": env.id,
            "version": record.version,
            "createdAt": _iso(record.created_at),
            "updatedAt": _iso(record.updated_at),
            "parentId": env.folder_records[parent].id,
        }

    async def _list_folders(self, request: web.Request) -> web.Response:
        identity = self._authenticate(request)
        query = request.query
        project = self._member(identity, query.get("projectId") or query.get("workspaceId") or "")
        env = self._environment(project, query.get("environment", ""))
        parent = normalise_path(query.get("path") or query.get("directory"))
        recursive = _bool(query, "recursive")
        folders = []
        for path in env.folder_records:
            if path == "/" or not path.startswith(parent.rstrip("/") + "/"):
                continue
            relative = path[len(parent.rstrip("/")) + 1 :]
            if not recursive and "/" in relative:
                continue
            folders.append(self._folder_json(env, path))
        return web.json_response({"folders": folders})

    def _environment(self, project: Project, slug: str) -> Environment:
        env = project.environments.get(slug)
        if env is None:
            raise not_found(
                f"Environment with slug '{slug}' in project with ID '{project.id}' not found"
            )
        return env

    # --- secrets: common -----------------------------------------------------------------------

    def _project_from(self, identity: Identity, fields: Any, version: str) -> Project:
        if version == "v4":
            project_id = str(fields.get("projectId") or "")
            if not project_id:
                raise bad_request("Missing project id or environment")
            return self._member(identity, project_id)
        project_id = str(fields.get("workspaceId") or "")
        slug = str(fields.get("workspaceSlug") or fields.get("projectSlug") or "")
        if not project_id and slug:
            found = next((p for p in self.state.projects.values() if p.slug == slug), None)
            if found is None:
                raise not_found(f"Project with slug '{slug}' not found")
            project_id = found.id
        if not project_id:
            raise bad_request("Missing project id or environment")
        return self._member(identity, project_id)

    def _folder_for_write(self, env: Environment, path: str, error: str) -> dict[str, Secret]:
        folder = env.folders.get(path)
        if folder is None:
            raise not_found(
                f"Folder with path '{path}' in environment with slug '{env.slug}' not found", error
            )
        return folder

    def _secret_json(
        self,
        secret: Secret,
        project: Project,
        env: Environment,
        path: str | None,
        with_dates: bool = True,
    ) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": secret.id,
            "_id": secret.id,
            "workspace": project.id,
            "environment": env.slug,
            "version": secret.version,
            "type": "shared",
            "secretKey": secret.key,
            "secretValue": secret.value,
            "secretComment": secret.comment,
            "skipMultilineEncoding": secret.skip_multiline_encoding,
            "secretValueHidden": False,
            "tags": [],
        }
        if path is not None:
            data["secretPath"] = path
        if self.server.secret_metadata:
            data["secretMetadata"] = [dict(item) for item in secret.metadata]
        if self.server.legacy_metadata_field:
            data["metadata"] = None
        if with_dates:
            data["createdAt"] = _iso(secret.created_at)
            data["updatedAt"] = _iso(secret.updated_at)
        return data

    def _clean_metadata(self, raw: Any) -> list[dict[str, Any]]:
        if not self.server.secret_metadata or not isinstance(raw, list):
            return []
        return [
            {
                "key": str(item.get("key")),
                "value": str(item.get("value", "")),
                "isEncrypted": bool(item.get("isEncrypted", False)),
            }
            for item in raw
            if isinstance(item, dict) and item.get("key")
        ]

    def _metadata_issues(self, fields: dict[str, Any], at: list[str | int]) -> list[dict[str, Any]]:
        """Zod's checks of a write's metadata: the legacy `metadata` record (every generation)
        and `secretMetadata` (only where the schema has it; elsewhere it is stripped unread)."""
        issues: list[dict[str, Any]] = []
        legacy = fields.get("metadata")
        if isinstance(legacy, dict):
            issues += [
                _not_a_string([*at, "metadata", key], value)
                for key, value in legacy.items()
                if not isinstance(value, str)
            ]
        items = fields.get("secretMetadata")
        if self.server.secret_metadata and isinstance(items, list):
            issues += [
                _not_a_string([*at, "secretMetadata", index, "value"], item["value"])
                for index, item in enumerate(items)
                if isinstance(item, dict) and "value" in item and not isinstance(item["value"], str)
            ]
        return issues

    # --- secrets: list -------------------------------------------------------------------------

    async def _list_secrets(self, request: web.Request, version: str) -> web.Response:
        identity = self._authenticate(request)
        query = request.query
        for name in (
            "recursive",
            "include_imports",
            "includeImports",
            "expandSecretReferences",
            "viewSecretValue",
        ):
            _bool(query, name)
        project = self._project_from(identity, query, version)
        env_slug = query.get("environment", "")
        if not env_slug:
            raise bad_request("Missing project id or environment")
        path = normalise_path(query.get("secretPath"))
        env = project.environments.get(env_slug)
        if (env is None or path not in env.folders) and not self.server.missing_path_not_found:
            # Older generations: a path (or environment) that does not exist lists as empty.
            self._permit(identity, project, env_slug, "read", "secrets")
            return web.json_response({"secrets": [], "imports": []})
        if env is None or path not in env.folders:
            raise ApiError(
                404,
                f"Folder with path '{path}' in environment '{env_slug}' was not found. "
                "Please ensure the environment slug and secret path is correct.",
                "SecretPathNotFound",
            )
        self._permit(identity, project, env_slug, "read", "secrets")
        recursive = _bool(query, "recursive")
        view_value = _bool(query, "viewSecretValue", default=True)
        paths = [path]
        if recursive:
            prefix = path.rstrip("/") + "/"
            paths += sorted(p for p in env.folders if p.startswith(prefix) and p != path)
        secrets = []
        for folder_path in paths:
            for secret in env.folders[folder_path].values():
                item = self._secret_json(secret, project, env, folder_path)
                if not view_value:
                    item["secretValue"] = HIDDEN_VALUE
                    item["secretValueHidden"] = True
                secrets.append(item)
        imports = []
        if _bool(query, "include_imports") or _bool(query, "includeImports"):
            for imported_env, imported_path in env.imports.get(path, []):
                source_env = project.environments.get(imported_env)
                folder = source_env.folders.get(imported_path) if source_env else None
                if source_env is None or folder is None:
                    continue
                imports.append(
                    {
                        "secretPath": imported_path,
                        "environment": imported_env,
                        "folderId": source_env.folder_ids[imported_path],
                        "secrets": [
                            self._secret_json(s, project, source_env, None, with_dates=False)
                            for s in folder.values()
                        ],
                    }
                )
        listing = {"secrets": secrets, "imports": imports}
        self._expand_references(identity, project, listing, query)
        return web.json_response(listing)

    def _expand_references(
        self, identity: Identity, project: Project, listing: dict[str, Any], query: Any
    ) -> None:
        """Secret references, as fake_references.py describes (imports: on every list)."""
        refused = expand_listing(
            project,
            listing,
            own=_bool(query, "expandSecretReferences"),
            can_read=lambda env: identity.projects[project.id].allows(env, "read"),
        )
        if refused:
            raise ApiError(403, LIST_REFUSED, "ForbiddenError", details=refused)

    # --- secrets: single -----------------------------------------------------------------------

    async def _single_context(
        self, request: web.Request, version: str, action: str
    ) -> tuple[Identity, Project, Environment, str, dict[str, Any], str]:
        identity = self._authenticate(request)
        fields: Any = request.query if request.method == "GET" else await _json_body(request)
        if request.method in ("POST", "PATCH"):
            issues = self._metadata_issues(fields, [])
            value_required = version == "v3" and self.server.v3_update_requires_value
            if request.method == "PATCH" and value_required and "secretValue" not in fields:
                issues.insert(0, _issue(["secretValue"], "Required", "invalid_type"))
            if issues:
                raise validation(issues)
        project = self._project_from(identity, fields, version)
        env = self._environment(project, str(fields.get("environment") or ""))
        path = normalise_path(fields.get("secretPath"))
        self._permit(identity, project, env.slug, action, "secrets")
        name = js_trim(request.match_info["name"])
        _check_key(name, ["secretName"])
        if str(fields.get("type") or "shared") == "personal":
            raise bad_request("Must be user to create personal secret")
        return identity, project, env, path, dict(fields), name

    async def _get_secret(self, request: web.Request, version: str) -> web.Response:
        identity, project, env, path, query, name = await self._single_context(
            request, version, "read"
        )
        folder = env.folders.get(path) or {}
        secret = folder.get(name)
        if secret is None:
            raise not_found(f"Secret with name '{name}' not found")
        item = self._secret_json(secret, project, env, path)
        if _bool(query, "expandSecretReferences"):
            try:
                item["secretValue"] = expand_references(
                    project,
                    env.slug,
                    path,
                    name,
                    secret.value,
                    can_read=lambda slug: identity.projects[project.id].allows(slug, "read"),
                    skip_multiline_encoding=secret.skip_multiline_encoding,
                )
            except ReferenceForbidden as exc:
                raise ApiError(403, str(exc), "ForbiddenError") from None
        return web.json_response({"secret": item})

    async def _create_secret(self, request: web.Request, version: str) -> web.Response:
        _, project, env, path, body, name = await self._single_context(request, version, "write")
        if "secretValue" not in body:
            raise validation([_issue(["secretValue"], "Required", "invalid_type")])
        folder = self._folder_for_write(env, path, "CreateSecret")
        if name in folder:
            raise bad_request("Secret already exists")
        if held := self._held_for_approval(request, project, env, path, "create", [body], name):
            return held
        secret = self._new_secret(name, body)
        folder[name] = secret
        return web.json_response({"secret": self._secret_json(secret, project, env, path)})

    async def _update_secret(self, request: web.Request, version: str) -> web.Response:
        _, project, env, path, body, name = await self._single_context(request, version, "write")
        folder = self._folder_for_write(env, path, "UpdateSecret")
        secret = folder.get(name)
        if secret is None:
            raise not_found(f"Secret with name {name} not found")
        new_name = body.get("newSecretName")
        if new_name:
            new_name = js_trim(str(new_name))
            _check_key(new_name, ["newSecretName"])
            if new_name != name and new_name in folder:
                raise bad_request("Secret with the new name already exists")
        if held := self._held_for_approval(request, project, env, path, "update", [body], name):
            return held
        self._apply_update(secret, body)
        if new_name and new_name != name:
            del folder[name]
            secret.key = new_name
            folder[new_name] = secret
        return web.json_response({"secret": self._secret_json(secret, project, env, path)})

    async def _delete_secret(self, request: web.Request, version: str) -> web.Response:
        _, project, env, path, body, name = await self._single_context(request, version, "write")
        folder = self._folder_for_write(env, path, "DeleteSecret")
        if name not in folder:
            raise not_found("Secret not found")
        if held := self._held_for_approval(request, project, env, path, "delete", [body], name):
            return held
        secret = folder.pop(name)
        return web.json_response({"secret": self._secret_json(secret, project, env, path)})

    def _new_secret(self, key: str, body: dict[str, Any]) -> Secret:
        now = self.state.clock.now()
        return Secret(
            key=key,
            value=stored_value(str(body.get("secretValue", ""))),
            comment=str(body.get("secretComment") or ""),
            metadata=self._clean_metadata(body.get("secretMetadata") or body.get("metadata")),
            skip_multiline_encoding=bool(body.get("skipMultilineEncoding", False)),
            created_at=now,
            updated_at=now,
        )

    def _apply_update(self, secret: Secret, body: dict[str, Any]) -> None:
        if "secretValue" in body and body["secretValue"] is not None:
            secret.value = stored_value(str(body["secretValue"]))
        if body.get("secretComment") is not None:
            secret.comment = str(body["secretComment"])
        if body.get("secretMetadata") is not None:
            secret.metadata = self._clean_metadata(body["secretMetadata"])
        if body.get("skipMultilineEncoding") is not None:
            secret.skip_multiline_encoding = bool(body["skipMultilineEncoding"])
        secret.version += 1
        secret.updated_at = self.state.clock.now()

    # --- secrets: batch (one transaction each: all or nothing) --------------------------------

    async def _batch_context(
        self, request: web.Request, version: str
    ) -> tuple[Project, Environment, str, list[dict[str, Any]], dict[str, Any]]:
        identity = self._authenticate(request)
        body = await _json_body(request)
        items = body.get("secrets")
        if not isinstance(items, list) or not items:
            raise validation(
                [_issue(["secrets"], "Array must contain at least 1 element(s)", "too_small")]
            )
        issues: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                issues.append(_issue(["secrets", index], "Expected object", "invalid_type"))
                continue
            key = js_trim(str(item.get("secretKey") or ""))
            issues += _key_issues(key, ["secrets", index, "secretKey"])
            issues += self._metadata_issues(item, ["secrets", index])
            item["secretKey"] = key
        if issues:
            raise validation(issues)
        project = self._project_from(identity, body, version)
        env = self._environment(project, str(body.get("environment") or ""))
        action = "read" if request.method == "GET" else "write"
        self._permit(identity, project, env.slug, action, "secrets")
        for item in items:
            if len(item["secretKey"]) > MAX_KEY_LENGTH:
                raise ApiError(500, "Something went wrong", "DatabaseError")
        return project, env, normalise_path(body.get("secretPath")), items, body

    async def _batch_create(self, request: web.Request, version: str) -> web.Response:
        project, env, path, items, _ = await self._batch_context(request, version)
        for item in items:
            if "secretValue" not in item:
                raise validation(
                    [_issue(["secrets", 0, "secretValue"], "Required", "invalid_type")]
                )
        folder = env.folders.get(path)
        if folder is None:
            raise not_found(
                f"Folder with path '{path}' in environment with slug '{env.slug}' not found",
                "CreateManySecret",
            )
        existing = [item["secretKey"] for item in items if item["secretKey"] in folder]
        keys = [item["secretKey"] for item in items]
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        if existing or duplicates:
            raise bad_request(f"Secret already exists: {','.join(existing or duplicates)}")
        if held := self._held_for_approval(request, project, env, path, "create", items):
            return held
        created = [self._new_secret(item["secretKey"], item) for item in items]
        for secret in created:
            folder[secret.key] = secret
        return web.json_response(
            {"secrets": [self._secret_json(s, project, env, path) for s in created]}
        )

    async def _batch_update(self, request: web.Request, version: str) -> web.Response:
        project, env, path, items, body = await self._batch_context(request, version)
        legacy = version == "v3" and not self.server.v3_batch_mode
        # Older generations drop `mode` (not in their schema): every update is failOnNotFound.
        mode = "failOnNotFound" if legacy else str(body.get("mode") or "failOnNotFound")
        if mode not in ("failOnNotFound", "upsert", "ignore"):
            raise validation([_issue(["mode"], "Invalid enum value", "invalid_enum_value")])
        # Validate everything first: one transaction, all or nothing.
        plan: list[tuple[dict[str, Secret], str, dict[str, Any]]] = []
        missing: list[str] = []
        for item in items:
            item_path = normalise_path(item.get("secretPath") or path)
            folder = env.folders.get(item_path)
            if folder is None:
                raise not_found(
                    f"Folder with path 'null' in environment with slug '{env.slug}' not found",
                    "UpdateManySecret",
                )
            if item["secretKey"] not in folder:
                if mode == "failOnNotFound":
                    missing.append(item["secretKey"])
                    continue
                if mode == "ignore":
                    continue
            plan.append((folder, item_path, item))
        if missing and legacy:
            # Observed: one key named, not necessarily a missing one (the batch's first).
            raise not_found(f"Secret does not exist: {items[0]['secretKey']}")
        if missing:
            raise not_found(f"Secret does not exist: {', '.join(missing)} in path {path}")
        for folder, _, item in plan:
            new_name = item.get("newSecretName")
            if (
                new_name
                and js_trim(str(new_name)) in folder
                and js_trim(str(new_name)) != item["secretKey"]
            ):
                raise bad_request("Secret with the new name already exists")
        updates = [item for _, _, item in plan]
        if held := self._held_for_approval(request, project, env, path, "update", updates):
            return held
        results = []
        for folder, item_path, item in plan:
            secret = folder.get(item["secretKey"])
            if secret is None:  # upsert
                if "secretValue" not in item:
                    item = {**item, "secretValue": ""}
                secret = self._new_secret(item["secretKey"], item)
                folder[secret.key] = secret
            else:
                self._apply_update(secret, item)
                new_name = item.get("newSecretName")
                if new_name and js_trim(str(new_name)) != secret.key:
                    del folder[secret.key]
                    secret.key = js_trim(str(new_name))
                    folder[secret.key] = secret
            results.append(self._secret_json(secret, project, env, item_path))
        return web.json_response({"secrets": results})

    async def _batch_delete(self, request: web.Request, version: str) -> web.Response:
        project, env, path, items, _ = await self._batch_context(request, version)
        folder = env.folders.get(path)
        if folder is None:
            raise not_found(
                f"Folder with path '{path}' in environment with slug '{env.slug}' not found",
                "DeleteManySecret",
            )
        found = [item["secretKey"] for item in items if item["secretKey"] in folder]
        if len(set(found)) != len(items):
            raise not_found(f"One or more secrets does not exist: {', '.join(sorted(set(found)))}")
        if held := self._held_for_approval(request, project, env, path, "delete", items):
            return held
        deleted = [folder.pop(key) for key in found]
        return web.json_response(
            {"secrets": [self._secret_json(s, project, env, path) for s in deleted]}
        )

    # --- change approvals (a policy on the environment holds every write back) -----------------

    def _held_for_approval(
        self,
        request: web.Request,
        project: Project,
        env: Environment,
        path: str,
        action: str,
        items: list[dict[str, Any]],
        single_key: str | None = None,
    ) -> web.Response | None:
        """Under a change-approval policy: store the write as an open request and answer
        200 `{"approval": ...}` (nothing written). None when no policy covers the environment."""
        policy_id = self.state.approval_policy(project.id, env.slug)
        if policy_id is None:
            return None
        now = self.state.clock.now()
        changes = [
            (action, {**item, "secretKey": single_key} if single_key else dict(item))
            for item in items
        ]
        approval = ApprovalRequest(
            project_id=project.id,
            environment=env.slug,
            path=path,
            folder_id=env.folder_ids[path],
            policy_id=policy_id,
            committer_identity_id=self._authenticate(request).id,
            changes=changes,
            created_at=now,
            updated_at=now,
        )
        self.state.approval_requests[approval.id] = approval
        return web.json_response({"approval": _approval_json(approval)})

    def open_approvals(self) -> list[ApprovalRequest]:
        """Approval requests nobody merged or closed yet, oldest first."""
        return self.state.open_approvals()

    def merge_approval(self, request_id: str) -> ApprovalRequest:
        """A human approved and merged the request: its writes are applied now."""
        approval = self._open_approval(request_id)
        env = self.state.projects[approval.project_id].environments[approval.environment]
        env.mkdir(approval.path)
        folder = env.folders[approval.path]
        for action, item in approval.changes:
            key = str(item["secretKey"])
            if action == "delete":
                folder.pop(key, None)
            elif action == "update" and key in folder:
                self._apply_update(folder[key], item)
            else:  # a create, or an upsert of a key that is not there
                folder[key] = self._new_secret(key, item)
        approval.status, approval.has_merged = "close", True
        approval.updated_at = self.state.clock.now()
        return approval

    def close_approval(self, request_id: str) -> ApprovalRequest:
        """A human closed (rejected) the request: nothing is written."""
        approval = self._open_approval(request_id)
        approval.status = "close"
        approval.updated_at = self.state.clock.now()
        return approval

    def _open_approval(self, request_id: str) -> ApprovalRequest:
        approval = self.state.approval_requests[request_id]
        if approval.status != "open":
            raise ValueError(f"approval request {request_id} is not open")
        return approval


# --- helpers ------------------------------------------------------------------------------------


def _approval_json(approval: ApprovalRequest) -> dict[str, Any]:
    """The secret-approval-request row as write routes return it (SecretApprovalRequestsSchema)."""
    return {
        "id": approval.id,
        "policyId": approval.policy_id,
        "hasMerged": approval.has_merged,
        "status": approval.status,
        "conflicts": None,
        "slug": approval.slug,
        "folderId": approval.folder_id,
        "bypassReason": None,
        "createdAt": _iso(approval.created_at),
        "updatedAt": _iso(approval.updated_at),
        "isReplicated": False,
        "committerUserId": None,
        "committerIdentityId": approval.committer_identity_id,
        "statusChangedByUserId": None,
    }


def _token_body(token: AccessToken) -> dict[str, Any]:
    return {
        "accessToken": token.token,
        "expiresIn": token.ttl,
        "accessTokenMaxTTL": token.max_ttl,
        "tokenType": "Bearer",
    }


def _bucket(request: web.Request) -> str | None:
    path = request.path
    if path in ("/api/status", "/healthcheck"):
        return None
    folders = path.startswith(("/api/v1/folders", "/api/v2/folders"))
    if "/secrets" in path or (folders and request.method != "GET"):
        return "secrets"
    return "read" if request.method == "GET" else "write"


def _route_name(path: str) -> str:
    if path.startswith("/api/v4/secrets/batch") or path.startswith("/api/v3/secrets/batch"):
        return path.rsplit("/raw", 1)[0]
    if path.startswith("/api/v4/secrets/"):
        return "/api/v4/secrets/{name}"
    if path.startswith("/api/v3/secrets/raw/"):
        return "/api/v3/secrets/raw/{name}"
    if path.startswith("/api/v1/projects/slug/"):
        return "/api/v1/projects/slug/{slug}"
    if path.startswith("/api/v1/projects/"):
        return "/api/v1/projects/{id}"
    return path


async def _json_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    data = await request.json()
    if not isinstance(data, dict):
        raise validation([_issue([], "Expected object, received array", "invalid_type")])
    return data


def _bool(query: Any, name: str, default: bool = False) -> bool:
    value = query.get(name)
    if value is None:
        return default
    if value not in ("true", "false"):
        raise validation(
            [_issue([name], "Invalid enum value. Expected 'true' | 'false'", "invalid_enum_value")]
        )
    return bool(value == "true")


def _valid_folder_name(name: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9_-]+", name) is not None


def _zod_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else "string"


def _not_a_string(path: list[str | int], value: Any) -> dict[str, Any]:
    received = _zod_type(value)
    return {
        **_issue(path, f"Expected string, received {received}", "invalid_type"),
        "expected": "string",
        "received": received,
    }


def _key_issues(key: str, path: list[str | int]) -> list[dict[str, Any]]:
    if not key:
        return [_issue(path, "String must contain at least 1 character(s)", "too_small")]
    if ":" in key or "/" in key:
        return [_issue(path, "Secret name cannot contain colon or forward slash.")]
    return []


def _check_key(key: str, path: list[str | int]) -> None:
    issues = _key_issues(key, path)
    if issues:
        raise validation(issues)
    if len(key) > MAX_KEY_LENGTH:
        raise ApiError(500, "Something went wrong", "DatabaseError")


def _iso(timestamp: float) -> str:
    import datetime as dt

    return (
        dt.datetime.fromtimestamp(timestamp, dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


class BackgroundFake:
    """Runs a FakeInfisical on its own event loop in a thread.

    For tests whose own code blocks (the synchronous kubernetes client) while an operator in
    another process talks to the fake. Touch `fake.state` between requests, not during them.
    """

    def __init__(self, fake: FakeInfisical | None = None) -> None:
        import threading

        self.fake = fake or FakeInfisical()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> FakeInfisical:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.fake.start(), self._loop).result(timeout=30)
        return self.fake

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self.fake.stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def pause(self) -> None:
        """Stop listening (instance down); `resume()` listens again on the same port."""
        asyncio.run_coroutine_threadsafe(self.fake.stop(), self._loop).result(timeout=30)

    def resume(self) -> None:
        asyncio.run_coroutine_threadsafe(self.fake.start(), self._loop).result(timeout=30)
