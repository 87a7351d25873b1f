"""The Infisical client the operator uses: a per-connection session over a shared transport.

`InfisicalSession` holds one connection's access token, obtained by a Universal Auth or a
Kubernetes Auth login (cached, renewed at 2/3 of its TTL, re-acquired by login when renewal is
refused or a call answers 401 / 403 TokenError, with one login shared by concurrent callers; a
token a login replaces is revoked) and offers exactly the calls the operator needs. A login
refused with 401 is not repeated with the same credentials for a while (Infisical locks
Universal Auth identities after repeated failures). A Kubernetes Auth login sends a service
account token requested for that login only; it is never kept.
`ClientPool` owns every transport and session; it is opened at startup and closed at cleanup.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import SecretStr, ValidationError

from infisical_sync import metrics
from infisical_sync.infisical.errors import (
    ApprovalRequired,
    Conflict,
    CredentialsLocked,
    Forbidden,
    IdentityNotConfiguredForKubernetesAuth,
    InfisicalError,
    InvalidCredentials,
    KubernetesAuthRefused,
    NotFound,
    Redirected,
    ServerError,
    Unreachable,
    ValidationFailed,
)
from infisical_sync.infisical.models import (
    LoginResult,
    Project,
    ProjectList,
    SecretListing,
    SecretLocation,
    SecretWrite,
)
from infisical_sync.infisical.transport import (
    InstanceTransport,
    TransportOptions,
    redirect_message,
    remote_details,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
LOGIN_PATH = "/api/v1/auth/universal-auth/login"
KUBERNETES_LOGIN_PATH = "/api/v1/auth/kubernetes-auth/login"
# A project slug resolves to its id for this long (a project deleted and created again under
# the same slug gets a new id); a 403 or 404 for the project drops the entry at once.
PROJECT_ID_TTL = 600.0
# Re-validation with a cached token: the projects the identity is a member of. Open to any
# identity (no permission beyond membership), read bucket. Only its list, or the 403 of a server
# that serves it to users only, proves the token.
PROBE_PATH = "/api/v1/projects"
# After a login refused with 401, the same credentials are not tried again for this long (unless
# the spec changes): Infisical locks an identity for 300 s after 3 failed logins within 30 s, so
# retries on the usual failure back-off would lock it out and keep it locked after a fix.
LOGIN_REFUSED_BACKOFF = 600.0
# Kubernetes Auth has no lockout in Infisical (identity-kubernetes-auth-service.ts): a refused
# login is tried again sooner, so that a fix of the identity's allow-lists shows within a minute.
KUBERNETES_LOGIN_REFUSED_BACKOFF = 60.0
# How long Infisical's default lockout lasts; a locked identity is not tried before it ends.
LOCKOUT_WAIT = 300.0
# Bytes of JSON per batch request. Infisical's batches have no item limit, only Fastify's default
# body limit (1 MiB); the margin leaves room for a proxy's smaller limit or a larger envelope.
BATCH_MAX_BYTES = 900 * 1024


def _digest(*parts: str | None) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update((part or "").encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Credentials:
    """Universal Auth: a client ID and client secret."""

    client_id: str
    client_secret: SecretStr
    organization_slug: str | None = None

    method = "Universal Auth"
    login_path = LOGIN_PATH
    refusal_backoff = LOGIN_REFUSED_BACKOFF
    refusal_fix = "the credentials Secret or the connection's spec changes"

    @property
    def principal(self) -> str:
        """Who logs in, for logs and messages (never a secret)."""
        return self.client_id

    @property
    def version(self) -> str:
        """Changes whenever the identity or its secret changes (rotation)."""
        return _digest(
            self.client_id, self.client_secret.get_secret_value(), self.organization_slug
        )

    async def login_body(self) -> dict[str, str]:
        body = {"clientId": self.client_id, "clientSecret": self.client_secret.get_secret_value()}
        if self.organization_slug:
            body["organizationSlug"] = self.organization_slug
        return body

    def login_error(self, exc: InfisicalError) -> InfisicalError:
        return exc

    def __repr__(self) -> str:
        return f"Credentials(client_id={self.client_id!r}, client_secret=SecretStr('**********'))"


# Requests a fresh service account token (the JWT) for one login; raises
# ServiceAccountTokenUnavailable (or the Kubernetes adapter's KubeUnavailable) when it cannot.
JwtSource = Callable[[], Awaitable[SecretStr]]


@dataclass(frozen=True)
class KubernetesAuthCredentials:
    """Kubernetes Auth: an identity ID, and where each login's service account token comes from.
    The token is asked for right before each login and dropped after it."""

    identity_id: str
    service_account: str  # namespace/name, for messages
    audiences: tuple[str, ...]
    request_jwt: JwtSource = field(compare=False, repr=False)
    organization_slug: str | None = None

    method = "Kubernetes Auth"
    login_path = KUBERNETES_LOGIN_PATH
    refusal_backoff = KUBERNETES_LOGIN_REFUSED_BACKOFF
    refusal_fix = "the connection's spec changes"

    @property
    def principal(self) -> str:
        return f"identity {self.identity_id} (service account {self.service_account})"

    @property
    def version(self) -> str:
        """Changes with the identity, the service account or the audiences."""
        return _digest(
            "kubernetes-auth",
            self.identity_id,
            self.service_account,
            ",".join(self.audiences),
            self.organization_slug,
        )

    async def login_body(self) -> dict[str, str]:
        jwt = await self.request_jwt()
        body = {"identityId": self.identity_id, "jwt": jwt.get_secret_value()}
        if self.organization_slug:
            body["organizationSlug"] = self.organization_slug
        return body

    def login_error(self, exc: InfisicalError) -> InfisicalError:
        """Infisical's answers to a Kubernetes Auth login, as reasons a user can act on."""
        error: type[InfisicalError]
        if isinstance(exc, InvalidCredentials):
            error = KubernetesAuthRefused
            message = f"Kubernetes Auth login as {self.principal} refused"
        elif isinstance(exc, NotFound):
            error = IdentityNotConfiguredForKubernetesAuth
            message = (
                f"Kubernetes Auth login refused: identity {self.identity_id} has no Kubernetes "
                "Auth configured (or does not exist)"
            )
        else:
            return exc
        return error(
            message,
            status=exc.status,
            remote_message=exc.remote_message,
            request_id=exc.request_id,
            error=exc.error,
        )


AnyCredentials = Credentials | KubernetesAuthCredentials


@dataclass
class _Token:
    value: SecretStr
    issued_at: float  # monotonic; reset on renewal
    login_at: float  # monotonic, for the max TTL
    ttl: int
    max_ttl: int
    expires_at_wall: float | None

    def renew_due(self, now: float) -> bool:
        return self.ttl > 0 and now >= self.issued_at + self.ttl * 2 / 3

    def can_renew(self, now: float) -> bool:
        if self.ttl <= 0 or now >= self.issued_at + self.ttl:
            return False
        return self.max_ttl <= 0 or now + self.ttl <= self.login_at + self.max_ttl

    def expired(self, now: float) -> bool:
        return (self.ttl > 0 and now >= self.issued_at + self.ttl) or (
            self.max_ttl > 0 and now >= self.login_at + self.max_ttl
        )

    def __repr__(self) -> str:
        return f"_Token(ttl={self.ttl}, max_ttl={self.max_ttl})"


@dataclass(frozen=True)
class _LoginRefusal:
    """The last login refusal, so that it is not repeated against Infisical's lockout."""

    error: InvalidCredentials
    credentials_version: str
    until: float  # monotonic
    locked: bool
    fix: str  # what makes a new attempt worth it before `until`

    def applies(self, credentials: AnyCredentials, now: float) -> bool:
        if now >= self.until:
            return False
        # A lock holds whatever the secret; a plain refusal only for the same credentials.
        return self.locked or credentials.version == self.credentials_version

    def again(self, now: float) -> InvalidCredentials:
        """The refusal, re-raised without asking Infisical."""
        wait = self.until - now
        if self.locked:
            note = f"waiting out the lock: next login attempt in {wait:.0f}s"
        else:
            note = (
                f"not logging in again with these credentials until {self.fix} (or for {wait:.0f}s)"
            )
        error = type(self.error)(f"{self.error}; {note}", status=self.error.status)
        error.retry_after = wait
        return error


@dataclass(frozen=True)
class TokenInfo:
    """What validation reports: never the token itself."""

    expires_at: dt.datetime | None
    logged_in: bool  # a fresh login (True) or a renewal / cached token (False)


def _validation_failure(response: httpx.Response) -> bool:
    """Infisical refused the request's shape (zod): 422, or 401 on older generations (late
    2024). Not a token problem: the token is kept and nobody logs in again."""
    return (
        response.status_code in (401, 422)
        and remote_details(response).get("error") == "ValidationFailure"
    )


def _token_rejected(response: httpx.Response) -> bool:
    if response.status_code == 401:
        return not _validation_failure(response)
    if response.status_code == 403:
        return remote_details(response).get("error") == "TokenError"
    return False


def _users_only(response: httpx.Response) -> bool:
    """The 403 of a route that serves user sessions only (older servers' project list): Infisical
    answers `error: "Forbidden access to <url>"` after it verified the token."""
    return response.status_code == 403 and str(remote_details(response).get("error")).startswith(
        "Forbidden access to "
    )


def _folder_exists(response: httpx.Response) -> bool:
    """A folder create refused because the leaf exists (current servers, on either route):
    success for a mkdir -p. Older servers answer 200 with the existing folder instead."""
    return response.status_code == 400 and "already exists" in str(
        remote_details(response).get("remote_message", "")
    )


def _route_missing(response: httpx.Response) -> bool:
    """Fastify's unknown-route 404 (an old server without /api/v4)."""
    if response.status_code != 404:
        return False
    details = remote_details(response)
    return details.get("error") == "Not Found" and str(
        details.get("remote_message", "")
    ).startswith("Route ")


# Every generation's answer to a write into a folder that does not exist (`error` names the call,
# e.g. CreateManySecret; a batch update's message may read path 'null').
_FOLDER_MISSING = re.compile(r"^Folder with path '.*' in environment with slug '.*' not found")


def _folder_missing(response: httpx.Response) -> bool:
    return response.status_code == 404 and bool(
        _FOLDER_MISSING.match(str(remote_details(response).get("remote_message") or ""))
    )


def raise_for_response(response: httpx.Response, what: str) -> None:
    """Map a non-2xx response to a typed error carrying Infisical's message and reqId."""
    status = response.status_code
    if status < 300:
        return
    if status == 304:  # success only as the answer to If-None-Match, handled by the caller
        raise ServerError(
            f"{what} answered 304 Not Modified to a request that was not conditional",
            status=status,
        )
    if status < 400:  # the transport already refuses redirects
        raise Redirected(redirect_message(response, what), status=status)
    details = remote_details(response)
    message = f"{what} failed with {status}"
    error: type[InfisicalError]
    if _validation_failure(response):
        message = f"{what} was refused as invalid ({status} ValidationFailure)"
        error = ValidationFailed
    elif status == 401:
        error = InvalidCredentials
    elif status == 403:
        error = Forbidden
    elif status == 404:
        error = NotFound
    elif status == 400 and "already exists" in str(details.get("remote_message", "")):
        error = Conflict
    elif status in (400, 422):
        error = ValidationFailed
    elif status >= 500:
        error = ServerError
    else:
        error = ValidationFailed
    raise error(message, status=status, **details)


def _parse(model: type[T], response: httpx.Response, what: str) -> T:
    try:
        data = response.json()
    except ValueError:
        raise ServerError(
            f"unexpected response from {what}: {response.status_code} without a JSON body",
            status=response.status_code,
        ) from None
    try:
        return model.model_validate(data)  # type: ignore[attr-defined, no-any-return]
    except ValidationError as exc:
        # The pydantic error could quote input values: report field locations only.
        fields = ", ".join(".".join(str(p) for p in err["loc"]) for err in exc.errors()[:5])
        raise ServerError(f"unexpected response shape from {what} (fields: {fields})") from None


def encode_json(value: object) -> bytes:
    """Compact UTF-8 JSON: the bytes a request body is made of (and measured by)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def pack(sizes: Sequence[int], budget: int, max_items: int | None = None) -> list[list[int]]:
    """Indices of items grouped into few chunks whose sizes, plus one separator per item, fit
    `budget` (first fit decreasing; each chunk keeps the items' order). An item larger than the
    budget gets a chunk of its own, so that the server's refusal names it alone."""
    chunks: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        need = sizes[index] + 1
        for slot, chunk in enumerate(chunks):
            if need <= room[slot] and (max_items is None or len(chunk) < max_items):
                chunk.append(index)
                room[slot] -= need
                break
        else:
            chunks.append([index])
            room.append(budget - need)
    return [sorted(chunk) for chunk in sorted(chunks, key=min)]


class InfisicalSession:
    """One InfisicalConnection's authenticated access to its instance."""

    def __init__(
        self,
        transport: InstanceTransport,
        credentials: AnyCredentials,
        *,
        batch_max_bytes: int = BATCH_MAX_BYTES,
        batch_max_keys: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.transport = transport
        self.credentials = credentials
        self.batch_max_bytes = batch_max_bytes
        self.batch_max_keys = batch_max_keys
        self._clock = clock
        self._token: _Token | None = None
        self._lock = asyncio.Lock()
        self._project_ids: dict[str, tuple[str, float]] = {}  # slug -> (id, resolved at)
        # Lookups under way: concurrent callers of one slug share one request (and its failure).
        self._slug_lookups: dict[str, asyncio.Task[str]] = {}
        self._refusal: _LoginRefusal | None = None
        self._probe_supported = True
        self.retired = False  # the connection moved to another URL or CA: no more tokens here
        self._revocations: set[asyncio.Task[None]] = set()
        self.logins = 0
        self.renewals = 0

    # --- auth ----------------------------------------------------------------------------------

    @property
    def token_expires_at(self) -> dt.datetime | None:
        if self._token is None or self._token.expires_at_wall is None:
            return None
        return dt.datetime.fromtimestamp(self._token.expires_at_wall, dt.UTC)

    def retire(self) -> _Token | None:
        """No token is obtained from now on; the cached one is returned for revocation. A login
        or renewal already under way revokes what it gets."""
        self.retired = True
        token, self._token = self._token, None
        return token

    def holds_token_for(self, credentials: AnyCredentials) -> bool:
        """A token obtained with exactly these credentials is cached (rotation drops it)."""
        return self._token is not None and self.credentials.version == credentials.version

    def replace_credentials(self, credentials: AnyCredentials) -> _Token | None:
        """Rotation: a new client ID or secret, or another identity, service account or audience,
        drops the cached token (returned for revocation)."""
        if credentials.version == self.credentials.version:
            # The same identity; keep the newest JWT source (it holds the current adapter).
            self.credentials = credentials
            return None
        self.credentials = credentials
        old, self._token = self._token, None
        return old

    async def validate(self, *, force_login: bool) -> TokenInfo:
        """Prove the credentials against the instance, logging in only when it must.

        A fresh login when asked (the spec changed, or the first validation) or when no usable
        token is cached. Otherwise the cached token is used: renewed when its renewal is due,
        else shown to one cheap authenticated call. Neither spends a client-secret use nor
        mints a token. A token that a login replaces is revoked.
        """
        async with self._lock:
            if force_login and self._refusal is not None and not self._refusal.locked:
                self._refusal = None  # the spec changed: worth one more try
            now = self._clock()
            token = self._token
            if not force_login and token is not None and not token.expired(now):
                if token.renew_due(now):
                    if token.can_renew(now):
                        with contextlib.suppress(InvalidCredentials):
                            await self._renew(token)
                            return TokenInfo(self.token_expires_at, logged_in=False)
                elif self._probe_supported and await self._token_accepted(token):
                    return TokenInfo(self.token_expires_at, logged_in=False)
            await self._login()
            return TokenInfo(self.token_expires_at, logged_in=True)

    async def _token_accepted(self, token: _Token) -> bool:
        response = await self.transport.send(
            "GET",
            PROBE_PATH,
            endpoint="projects.list",
            params={"type": "secret-manager"},
            headers={"Authorization": f"Bearer {token.value.get_secret_value()}"},
        )
        if _route_missing(response):
            # A server without this route: re-validation logs in (and revokes the old token).
            self._probe_supported = False
            return False
        if _token_rejected(response):
            self._drop(token)  # refused: nothing left to revoke
            return False
        if _users_only(response):
            return True  # the token was verified before the route refused the auth mode
        # Only the list itself proves the token; any other answer fails validation with its
        # own reason (a 403 Forbidden, e.g. trusted IPs that changed; a proxy's page; a 304).
        raise_for_response(response, "token check (project list)")
        _parse(ProjectList, response, "token check (project list)")
        return True

    async def _access_token(self) -> _Token:
        token = self._token
        if token is not None and not token.renew_due(self._clock()):
            return token
        async with self._lock:  # single flight: concurrent callers share one login
            token = self._token
            now = self._clock()
            if token is not None and not token.renew_due(now):
                return token
            if token is not None and token.can_renew(now):
                with contextlib.suppress(InvalidCredentials):
                    await self._renew(token)
                    assert self._token is not None
                    return self._token
            await self._login()
            assert self._token is not None
            return self._token

    async def _login(self) -> None:
        while True:
            if self.retired:
                raise _settings_changed()
            credentials = self.credentials
            refusal = self._refusal
            if refusal is not None and refusal.applies(credentials, self._clock()):
                raise refusal.again(self._clock())
            # Kubernetes Auth: a fresh service account token, for this login only (not kept).
            body = await credentials.login_body()
            with self.transport.in_use():  # a retirement closes the client only after the revoke
                response = await self.transport.send(
                    "POST", credentials.login_path, endpoint="auth.login", json=body
                )
                del body
                if self.retired or self._rotated_since(credentials):
                    # Retired, or the credentials were replaced while this login was on its
                    # way: whatever it got must not stay live. Revoke a token it got.
                    if response.status_code == 200:
                        stale = _parse(LoginResult, response, "login")
                        self._revoke_later(stale.access_token)
                    if self.retired:
                        raise _settings_changed()
                    continue  # log in with the new credentials
            try:
                try:
                    raise_for_response(response, f"{credentials.method} login")
                except InfisicalError as exc:
                    raise credentials.login_error(exc) from None
            except InvalidCredentials as exc:
                raise self._refused(exc, credentials) from None
            self._refusal = None
            result = _parse(LoginResult, response, "login")
            replaced = self._token
            self._store(result, fresh=True)
            if replaced is not None and not replaced.expired(self._clock()):
                # Still valid: never leave it live. Not awaited here: this runs under the lock
                # and a revocation may wait out retries or a 429 gate.
                self._revoke_later(replaced.value)
            self.logins += 1
            metrics.TOKEN_EVENTS.labels(self.transport.instance, "login").inc()
            log.info("logged in to %s as %s", self.transport.instance, credentials.principal)
            return

    def _rotated_since(self, credentials: AnyCredentials) -> bool:
        return self.credentials.version != credentials.version

    def _refused(self, exc: InvalidCredentials, credentials: AnyCredentials) -> InvalidCredentials:
        """Remember a 401 at login; the returned error says when the next attempt comes."""
        now = self._clock()
        locked = "temporarily locked" in (exc.remote_message or "")
        if locked:
            exc = CredentialsLocked(
                "Universal Auth login refused: the identity is temporarily locked after "
                "repeated failed logins",
                status=exc.status,
                remote_message=exc.remote_message,
                request_id=exc.request_id,
                error=exc.error,
            )
        wait = LOCKOUT_WAIT if locked else credentials.refusal_backoff
        self._refusal = _LoginRefusal(
            exc, credentials.version, now + wait, locked, credentials.refusal_fix
        )
        log.warning(
            "login to %s as %s refused (%s); next attempt in %.0fs%s",
            self.transport.instance,
            credentials.principal,
            exc.remote_message or exc.status,
            wait,
            "" if locked else f", or when {credentials.refusal_fix}",
        )
        return self._refusal.again(now)

    async def _renew(self, token: _Token) -> None:
        if self.retired:
            raise _settings_changed()
        credentials = self.credentials
        response = await self.transport.send(
            "POST",
            "/api/v1/auth/token/renew",
            endpoint="auth.renew",
            json={"accessToken": token.value.get_secret_value()},
        )
        if self.retired:  # retirement revoked that token (or is revoking it): never store it
            raise _settings_changed()
        if self._rotated_since(credentials):
            # That token was dropped (and is being revoked) by the rotation: never store it.
            raise InvalidCredentials("the credentials were replaced during the token renewal")
        if _token_rejected(response):
            self._token = None
            raise InvalidCredentials("token renewal refused", **remote_details(response))
        raise_for_response(response, "token renewal")
        result = _parse(LoginResult, response, "token renewal")
        self._store(result, fresh=False)
        self.renewals += 1
        metrics.TOKEN_EVENTS.labels(self.transport.instance, "renewal").inc()

    def _store(self, result: LoginResult, *, fresh: bool) -> None:
        now = self._clock()
        login_at = now if fresh or self._token is None else self._token.login_at
        self._token = _Token(
            value=result.access_token,
            issued_at=now,
            login_at=login_at,
            ttl=result.expires_in,
            max_ttl=result.access_token_max_ttl,
            expires_at_wall=time.time() + result.expires_in if result.expires_in > 0 else None,
        )

    def _drop(self, token: _Token) -> None:
        if self._token is token:
            self._token = None

    async def revoke(self, token: _Token | None = None) -> None:
        """Best effort: revoke a token we no longer use (rotation, deletion, shutdown)."""
        token = token or self._token
        if token is None:
            return
        await self._revoke_value(token.value)
        self._drop(token)

    def revoke_later(self, token: _Token) -> None:
        """revoke() off the caller's path; the client stays open until it is done."""
        self._drop(token)
        self._revoke_later(token.value)

    def _revoke_later(self, value: SecretStr) -> None:
        self.transport.hold()  # taken now: a close must not slip in before the task runs
        task = asyncio.get_running_loop().create_task(self._revoke_value(value))
        self._revocations.add(task)
        task.add_done_callback(self._revocation_done)

    def _revocation_done(self, task: asyncio.Task[None]) -> None:
        self._revocations.discard(task)
        self.transport.release()

    async def settle(self) -> None:
        """Wait for the revocations under way, and for any started meanwhile."""
        # Only the unfinished ones: a finished task stays in the set until its done callback
        # runs in a later loop pass, and on Python >= 3.12 gather() of finished tasks returns
        # without yielding, so waiting for "the set is empty" would spin and never let it run.
        while pending := [task for task in self._revocations if not task.done()]:
            await asyncio.wait(pending)

    async def _revoke_value(self, value: SecretStr) -> None:
        with contextlib.suppress(InfisicalError, httpx.HTTPError):
            await self.transport.send(
                "POST",
                "/api/v1/auth/token/revoke",
                endpoint="auth.revoke",
                json={"accessToken": value.get_secret_value()},
            )

    async def call(
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
        """An authenticated call; a refused token is dropped, then one login and one retry."""
        for attempt in range(2):
            token = await self._access_token()
            response = await self.transport.send(
                method,
                path,
                endpoint=endpoint,
                json=json,
                content=content,
                params=params,
                headers={
                    "Authorization": f"Bearer {token.value.get_secret_value()}",
                    **(headers or {}),
                },
            )
            if not _token_rejected(response):
                return response
            self._drop(token)
            if attempt == 1:
                raise InvalidCredentials(
                    f"{endpoint}: the instance refused a freshly issued token",
                    status=response.status_code,
                    **remote_details(response),
                )
        raise AssertionError("unreachable")

    # --- projects and folders ------------------------------------------------------------------

    async def project_id(self, *, project_id: str | None, project_slug: str | None) -> str:
        if project_id:
            return project_id
        if not project_slug:
            raise ValidationFailed("neither projectId nor projectSlug is set")
        cached = self._project_ids.get(project_slug)
        if cached is not None and self._clock() < cached[1] + PROJECT_ID_TTL:
            return cached[0]
        lookup = self._slug_lookups.get(project_slug)
        if lookup is None:
            lookup = asyncio.get_running_loop().create_task(self._look_up_slug(project_slug))
            self._slug_lookups[project_slug] = lookup
            lookup.add_done_callback(lambda done: self._slug_lookup_done(project_slug, done))
        # Shielded: a caller that is cancelled leaves the lookup to the others.
        return await asyncio.shield(lookup)

    async def _look_up_slug(self, slug: str) -> str:
        response = await self._project_by_slug(slug)
        raise_for_response(response, f"project lookup of slug {slug!r}")
        project = _parse(Project, response, "project lookup")
        self._project_ids[slug] = (project.id, self._clock())
        return project.id

    def _slug_lookup_done(self, slug: str, lookup: asyncio.Task[str]) -> None:
        """The next caller asks again if this one failed (nothing but a success is kept)."""
        if self._slug_lookups.get(slug) is lookup:
            del self._slug_lookups[slug]
        if not lookup.cancelled():
            lookup.exception()  # seen, even when every caller was cancelled meanwhile

    async def _project_by_slug(self, slug: str) -> httpx.Response:
        """The current route, else (older generations) its deprecated twin, which every
        generation serves."""
        # One path segment whatever the slug holds: never another route, nor a query.
        slug = quote(slug, safe="")
        if self.transport.project_slug_v1_supported is not False:
            response = await self.call(
                "GET", f"/api/v1/projects/slug/{slug}", endpoint="projects.get_by_slug"
            )
            if not _route_missing(response):
                self.transport.project_slug_v1_supported = True
                return response
            self.transport.project_slug_v1_supported = False
        return await self.call(
            "GET", f"/api/v2/workspace/{slug}", endpoint="projects.get_by_slug_v2"
        )

    def _check(self, response: httpx.Response, what: str, location: SecretLocation) -> None:
        """raise_for_response, and forget a slug that resolved to a project now refused."""
        try:
            raise_for_response(response, what)
        except (Forbidden, NotFound):
            for slug, (project_id, _) in list(self._project_ids.items()):
                if project_id == location.project_id:
                    del self._project_ids[slug]
            raise

    async def ensure_folder(self, location: SecretLocation) -> None:
        """mkdir -p of the secret path; an existing folder is success. The v2 route, else (older
        generations) v1, which answers 200 for an existing folder too."""
        parts = [part for part in location.secret_path.split("/") if part]
        if not parts:
            return
        parent, name = "/" + "/".join(parts[:-1]), parts[-1]
        what = f"creating folder {location.secret_path}"
        fields = {"environment": location.environment, "path": parent, "name": name}
        if self.transport.folders_v2_supported is not False:
            response = await self.call(
                "POST",
                "/api/v2/folders",
                endpoint="folders.create",
                json={"projectId": location.project_id, **fields},
            )
            if not _route_missing(response):
                self.transport.folders_v2_supported = True
                if not _folder_exists(response):
                    self._check(response, what, location)
                return
            self.transport.folders_v2_supported = False
        response = await self.call(
            "POST",
            "/api/v1/folders",
            endpoint="folders.create_v1",
            json={"workspaceId": location.project_id, **fields},
        )
        if not _folder_exists(response):
            self._check(response, what, location)

    # --- secrets -------------------------------------------------------------------------------

    async def list_secrets(
        self,
        location: SecretLocation,
        *,
        recursive: bool = False,
        include_imports: bool = False,
        expand_references: bool = False,
        etag: str | None = None,
    ) -> SecretListing:
        """The whole folder in one call. With `etag`, a 304 gives `not_modified=True`.

        `expand_references`: ${...} references resolved by the server (what applications
        read); off, the stored text (what a destination is diffed against)."""
        flags = {
            "environment": location.environment,
            "secretPath": location.secret_path,
            "recursive": _flag(recursive),
            "include_imports": _flag(include_imports),
            "expandSecretReferences": _flag(expand_references),
        }
        headers = {"If-None-Match": etag} if etag else None
        what = f"listing {location.environment}:{location.secret_path}"
        if self.transport.v4_supported is not False:
            response = await self.call(
                "GET",
                "/api/v4/secrets",
                endpoint="secrets.list",
                params={"projectId": location.project_id, **flags},
                headers=headers,
            )
            if not _route_missing(response):
                self.transport.v4_supported = True
                return self._listing(response, what, location)
            self.transport.v4_supported = False
        response = await self.call(
            "GET",
            "/api/v3/secrets/raw",
            endpoint="secrets.list_v3",
            params={"workspaceId": location.project_id, **flags},
            headers=headers,
        )
        return self._listing(response, what, location)

    def _listing(
        self, response: httpx.Response, what: str, location: SecretLocation
    ) -> SecretListing:
        etag = response.headers.get("etag")
        if response.status_code == 304 and "If-None-Match" in response.request.headers:
            return SecretListing(etag=etag, not_modified=True)
        self._check(response, what, location)
        listing = _parse(SecretListing, response, what)
        return listing.model_copy(update={"etag": etag})

    async def batch_create(self, location: SecretLocation, items: Sequence[SecretWrite]) -> None:
        await self._batch("POST", location, [item.wire() for item in items], "create")

    async def batch_update(self, location: SecretLocation, items: Sequence[SecretWrite]) -> None:
        """Every key must exist (the server's default mode; `mode` is never sent: older
        generations drop it)."""
        await self._batch("PATCH", location, [item.wire() for item in items], "update")

    async def batch_upsert(self, location: SecretLocation, items: Sequence[SecretWrite]) -> None:
        """Create the keys the folder lacks and update the others, from a fresh read of the
        folder. Not the batch update's `mode: upsert`: older generations drop it and refuse the
        whole batch on a missing key. A key created or deleted in between fails the write
        (Conflict or NotFound), for the caller to try again."""
        try:
            listing = await self.list_secrets(location)
            existing = {secret.key for secret in listing.secrets if secret.type == "shared"}
        except NotFound:  # the folder does not exist yet: the create makes it
            existing = set()
        missing = [item for item in items if item.key not in existing]
        present = [item for item in items if item.key in existing]
        held: list[str] = []  # one round of approvals: a held create does not stop the update
        for write, part in ((self.batch_create, missing), (self.batch_update, present)):
            if not part:
                continue
            try:
                await write(location, part)
            except ApprovalRequired as exc:
                held += exc.approval_ids
        if held:
            raise ApprovalRequired(_held_message("upsert", location, held), approval_ids=held)

    async def batch_delete(self, location: SecretLocation, keys: Iterable[str]) -> None:
        items: list[dict[str, object]] = [{"secretKey": key, "type": "shared"} for key in keys]
        await self._batch("DELETE", location, items, "delete")

    async def _batch(
        self,
        method: str,
        location: SecretLocation,
        items: list[dict[str, object]],
        action: str,
    ) -> None:
        """As few requests as the body budget allows (Infisical limits bodies, not items)."""
        encoded = [encode_json(item) for item in items]
        budget = self.batch_max_bytes - len(_batch_body(location, "workspaceId", []))
        held: list[str] = []
        for indices in pack([len(item) for item in encoded], budget, self.batch_max_keys):
            chunk = _BatchChunk(
                keys=[str(items[i].get("secretKey")) for i in indices],
                items=[encoded[i] for i in indices],
            )
            try:
                await self._batch_chunk(method, location, chunk, action)
            except ApprovalRequired as exc:
                held += exc.approval_ids  # the other chunks still go: one round of approvals
        if held:
            raise ApprovalRequired(_held_message(action, location, held), approval_ids=held)

    async def _batch_chunk(
        self, method: str, location: SecretLocation, chunk: _BatchChunk, action: str
    ) -> None:
        place = f"{location.environment}:{location.secret_path}"
        what = f"batch {action} of {len(chunk.keys)} keys in {place}"
        response = await self._send_batch(method, location, chunk.items, action)
        if method != "DELETE" and _folder_missing(response):
            # Older generations list a missing folder as empty, so a write is the first to say
            # so: make it, then write once more. (Deleting from a missing folder has nothing to
            # delete: the caller re-reads.)
            await self.ensure_folder(location)
            response = await self._send_batch(method, location, chunk.items, action)
        if response.status_code == 413:
            raise _too_large(response, what, chunk)
        self._check(response, what, location)
        _raise_if_held(response, action, location)

    async def _send_batch(
        self, method: str, location: SecretLocation, items: list[bytes], action: str
    ) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        if self.transport.v4_supported is not False:
            response = await self.call(
                method,
                "/api/v4/secrets/batch",
                endpoint=f"secrets.batch_{action}",
                content=_batch_body(location, "projectId", items),
                headers=headers,
            )
            if not _route_missing(response):
                return response
            self.transport.v4_supported = False
        return await self.call(
            method,
            "/api/v3/secrets/batch/raw",
            endpoint=f"secrets.batch_{action}_v3",
            content=_batch_body(location, "workspaceId", items),
            headers=headers,
        )


@dataclass(frozen=True)
class _BatchChunk:
    keys: list[str]  # for messages (key names are not secret)
    items: list[bytes]  # each item's JSON


def _batch_body(location: SecretLocation, project_field: str, items: list[bytes]) -> bytes:
    """A batch request's JSON from items already encoded (and measured)."""
    head = encode_json(
        {
            project_field: location.project_id,
            "environment": location.environment,
            "secretPath": location.secret_path,
        }
    )
    return head[:-1] + b',"secrets":[' + b",".join(items) + b"]}"


def _too_large(response: httpx.Response, what: str, chunk: _BatchChunk) -> ValidationFailed:
    """The instance (or a proxy) refused the body's size (413)."""
    size = len(b",".join(chunk.items))
    if len(chunk.keys) == 1:
        detail = f"key {chunk.keys[0]} alone is {size} bytes of JSON, more than the instance takes"
    else:
        detail = (
            f"{size} bytes of JSON; the instance or a proxy in front of it takes less: "
            "lower INFISICAL_SYNC_BATCH_MAX_BYTES"
        )
    return ValidationFailed(
        f"{what} was refused as too large (413): {detail}",
        status=413,
        **remote_details(response),
    )


def _raise_if_held(response: httpx.Response, action: str, location: SecretLocation) -> None:
    """A 200 `{"approval": ...}` instead of `{"secrets": ...}`: a change-approval policy held
    the write back (nothing written)."""
    try:
        data = response.json()
    except ValueError:
        return
    approval = data.get("approval") if isinstance(data, dict) else None
    if isinstance(approval, dict):
        approval_id = str(approval.get("id") or approval.get("slug") or "(no id)")
        raise ApprovalRequired(
            _held_message(action, location, [approval_id]), approval_ids=[approval_id]
        )


def _held_message(action: str, location: SecretLocation, approval_ids: Sequence[str]) -> str:
    requests = "change request" + ("s " if len(approval_ids) > 1 else " ")
    return (
        f"batch {action} in {location.environment}:{location.secret_path} is held for approval: "
        f"Infisical opened {requests}{', '.join(approval_ids)}"
    )


def _settings_changed() -> Unreachable:
    """For callers still holding a retired session: worth retrying, with the new session."""
    return Unreachable("connection settings changed; retrying with the new ones")


def _flag(value: bool) -> str:
    return "true" if value else "false"


@dataclass(frozen=True)
class _InstanceKey:
    url: str
    ca_digest: str
    allow_http: bool


class ClientPool:
    """Every transport (one per instance) and session (one per connection)."""

    def __init__(
        self,
        options: TransportOptions | None = None,
        *,
        batch_max_bytes: int = BATCH_MAX_BYTES,
        batch_max_keys: int | None = None,
    ) -> None:
        self.options = options or TransportOptions()
        self.batch_max_bytes = batch_max_bytes
        self.batch_max_keys = batch_max_keys
        self._transports: dict[_InstanceKey, InstanceTransport] = {}
        self._sessions: dict[str, tuple[_InstanceKey, InfisicalSession]] = {}
        self._pending: set[asyncio.Task[None]] = set()  # retirements

    def session(
        self,
        connection: str,
        *,
        instance_url: str,
        credentials: AnyCredentials,
        ca_pem: str | None = None,
        allow_http: bool = False,
    ) -> InfisicalSession:
        """The session for a connection (namespace/name), updated for a new URL or secret."""
        key = _InstanceKey(
            instance_url.rstrip("/"),
            hashlib.sha256((ca_pem or "").encode()).hexdigest(),
            allow_http,
        )
        transport = self._transports.get(key)
        if transport is None:
            transport = InstanceTransport(
                key.url, ca_pem=ca_pem, allow_http=allow_http, options=self.options
            )
            self._transports[key] = transport
        existing = self._sessions.get(connection)
        if existing is not None and existing[0] == key:
            session = existing[1]
            old_token = session.replace_credentials(credentials)
            if old_token is not None:
                session.revoke_later(old_token)
            return session
        session = InfisicalSession(
            transport,
            credentials,
            batch_max_bytes=self.batch_max_bytes,
            batch_max_keys=self.batch_max_keys,
        )
        self._sessions[connection] = (key, session)
        if existing is not None:  # another URL or CA: retire the old session and its client
            self._in_background(self._retire(*existing))
        return session

    def get(self, connection: str) -> InfisicalSession | None:
        entry = self._sessions.get(connection)
        return entry[1] if entry else None

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _retire(self, key: _InstanceKey, session: InfisicalSession) -> Coroutine[Any, Any, None]:
        """Stop a session obtaining tokens at once. The returned work revokes its token over its
        own client, then closes that client once no session uses it and nothing is in flight."""
        token = session.retire()
        return self._revoke_and_close(key, session, token)

    async def _revoke_and_close(
        self, key: _InstanceKey, session: InfisicalSession, token: _Token | None
    ) -> None:
        if token is not None:
            await session.revoke(token)
        await session.settle()  # so that aclose(), awaiting this, awaits its revocations too
        await self._close_if_unused(key)

    async def _close_if_unused(self, key: _InstanceKey) -> None:
        if any(used == key for used, _ in self._sessions.values()):
            return
        transport = self._transports.pop(key, None)
        if transport is not None:
            await transport.aclose_when_idle()

    async def drop(self, connection: str) -> None:
        entry = self._sessions.pop(connection, None)
        if entry is not None:
            await self._retire(*entry)

    async def aclose(self) -> None:
        sessions = [session for _, session in self._sessions.values()]
        self._sessions.clear()
        for session in sessions:
            await session.revoke(session.retire())
        for session in sessions:
            await session.settle()
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        transports, self._transports = list(self._transports.values()), {}
        for transport in transports:
            await transport.aclose()  # shutting down: requests still under way are cut
