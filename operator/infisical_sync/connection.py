"""InfisicalConnection and ClusterInfisicalConnection: read the credentials Secret, validate
against the instance, report. Both are addressed by (namespace, name); a cluster connection's
namespace is CLUSTER_SCOPE, and its Secrets and service account are in the operator's namespace.

No kopf here: the composition root (app.py) calls `ConnectionReconciler.reconcile` from the
connection's daemon and passes in how to post Events.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import SecretStr, ValidationError

from infisical_sync import metrics
from infisical_sync.conditions import (
    Condition,
    condition_status,
    merge_conditions,
    progress_conditions,
    timestamp,
)
from infisical_sync.infisical.client import (
    AnyCredentials,
    ClientPool,
    Credentials,
    InfisicalSession,
    KubernetesAuthCredentials,
)
from infisical_sync.infisical.errors import (
    InfisicalError,
    RateLimited,
    ServiceAccountNotFound,
    ServiceAccountTokenUnavailable,
    TokenRequestForbidden,
)
from infisical_sync.instance_urls import AllowedInstances
from infisical_sync.kube import Kube
from infisical_sync.resources import (
    CLUSTER_SCOPE,
    KUBERNETES_AUTH,
    ClusterConnectionSpec,
    ConnectionSpec,
    KubernetesAuthSpec,
    describe_connection,
)
from infisical_sync.shards import Shard
from infisical_sync.status_patch import merge_patch, status_patch

log = logging.getLogger(__name__)
PLURAL = "infisicalconnections"
CLUSTER_PLURAL = "clusterinfisicalconnections"


def plural_of(namespace: str) -> str:
    return CLUSTER_PLURAL if namespace == CLUSTER_SCOPE else PLURAL


EventPoster = Callable[[Any, str, str, str], None]

# Failures that say nothing about the credentials themselves.
_CREDENTIALS_UNKNOWN = {
    "Unreachable",
    "TLSError",
    "RateLimited",
    "ServerError",
    "InsecureHttp",
    "InstanceNotAllowed",
    "CredentialsLocked",  # a locked identity refuses even the right secret
    "Redirected",
}
# Ready stays True when a Ready connection could not be re-validated because of a 429.
VALIDATION_DEFERRED = "ValidationDeferred"
# Kubernetes Auth: each login's service account token lives this long (the API server's
# minimum); it is used once, within seconds, and never stored.
SERVICE_ACCOUNT_TOKEN_SECONDS = 600


@dataclass(frozen=True)
class Outcome:
    ready: bool
    reason: str
    message: str
    client_id: str | None = None
    instance_url: str | None = None
    token_expires_at: dt.datetime | None = None
    identity_id: str | None = None  # Kubernetes Auth
    retry_after: float | None = None
    # An unforced validation whose session still caches a token obtained with exactly these
    # credentials, URL and CA: they were validated before, so a 429 may defer this one.
    validated_before: bool = False

    @property
    def credentials_status(self) -> str:
        if self.ready:
            return "True"
        return "Unknown" if self.reason in _CREDENTIALS_UNKNOWN else "False"


def deferred_by_rate_limit(outcome: Outcome, token_expires_at: dt.datetime | None) -> Outcome:
    """A 429 is no connection failure: a Ready connection stays Ready, and the SecretSyncs it
    delays report RateLimited on themselves."""
    return Outcome(
        True,
        VALIDATION_DEFERRED,
        f"validation deferred by rate limiting ({outcome.message}); the last validation succeeded",
        outcome.client_id,
        outcome.instance_url,
        token_expires_at=token_expires_at,
        retry_after=outcome.retry_after,
        identity_id=outcome.identity_id,
    )


@dataclass(frozen=True)
class ConnectionState:
    """What SecretSyncs consult before using a connection."""

    ready: bool
    reason: str
    message: str


def connection_key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def build_status(
    outcome: Outcome,
    previous: Mapping[str, Any] | None,
    *,
    generation: int | None,
    now: dt.datetime,
) -> dict[str, Any]:
    """The status subresource for one validation. Pure."""
    previous = previous or {}
    ready = Condition(
        "Ready", "True" if outcome.ready else "False", outcome.reason, outcome.message
    )
    conditions = merge_conditions(
        previous.get("conditions"),
        [
            ready,
            *progress_conditions(ready),
            Condition(
                "CredentialsValid", outcome.credentials_status, outcome.reason, outcome.message
            ),
        ],
        generation=generation,
        now=now,
    )
    status: dict[str, Any] = {
        "conditions": conditions,
        "observedGeneration": generation,
        # Retired: it moved on every validation, an etcd write each time. The Ready condition's
        # lastTransitionTime says since when the outcome holds; the metrics when it last ran.
        "lastValidatedAt": None,
        "message": outcome.message,
        "instanceUrl": outcome.instance_url,
        "clientId": outcome.client_id,
        "identityId": outcome.identity_id,
        "tokenExpiresAt": timestamp(outcome.token_expires_at) if outcome.token_expires_at else None,
    }
    return status


class ConnectionReconciler:
    def __init__(
        self,
        kube: Kube,
        pool: ClientPool,
        *,
        post_event: EventPoster,
        allowed_instances: AllowedInstances,
        shard: Shard | None = None,
        operator_namespace: str = "",
    ) -> None:
        self.kube = kube
        # Where ClusterInfisicalConnections' Secrets and service accounts are.
        self.operator_namespace = operator_namespace
        self.pool = pool
        self.post_event = post_event
        self.allowed_instances = allowed_instances
        # Every shard validates (its SecretSyncs need their own session); one writes status.
        self.shard = shard or Shard()
        self.states: dict[tuple[str, str], ConnectionState] = {}
        # The status last written per connection: the watched body can lag behind it.
        self.written: dict[tuple[str, str], dict[str, Any]] = {}
        self._unsure: set[tuple[str, str]] = set()

    def state(self, namespace: str, name: str) -> ConnectionState | None:
        return self.states.get((namespace, name))

    def session(self, namespace: str, name: str) -> InfisicalSession | None:
        """The session of a Ready connection, else None."""
        state = self.states.get((namespace, name))
        if state is None or not state.ready:
            return None
        return self.pool.get(connection_key(namespace, name))

    def last_session(self, namespace: str, name: str) -> InfisicalSession | None:
        """The connection's session even when it is no longer Ready, for removals: deleting a
        namespace deletes the credentials Secret too, and the token (or the credentials it
        holds) still lets a SecretSync being deleted remove or release its keys."""
        return self.pool.get(connection_key(namespace, name))

    async def validate(
        self, namespace: str, name: str, raw_spec: Mapping[str, Any], *, force_login: bool
    ) -> Outcome:
        cluster = namespace == CLUSTER_SCOPE
        # A cluster connection's Secrets and service account: in the operator's namespace.
        secrets_namespace = self.operator_namespace if cluster else namespace
        try:
            model = ClusterConnectionSpec if cluster else ConnectionSpec
            spec = model.model_validate(dict(raw_spec))
        except ValidationError as exc:
            fields = ", ".join(".".join(str(p) for p in err["loc"]) for err in exc.errors())
            return Outcome(False, "InvalidSpec", f"spec is invalid at: {fields}")
        kubernetes_auth = spec.kubernetes_auth if spec.method == KUBERNETES_AUTH else None
        identity_id = kubernetes_auth.identity_id if kubernetes_auth else None

        def fail(
            reason: str,
            message: str,
            client_id: str | None = None,
            retry_after: float | None = None,
        ) -> Outcome:
            return Outcome(
                False,
                reason,
                message,
                client_id,
                spec.instance_url,
                retry_after=retry_after,
                identity_id=identity_id,
            )

        # The CRD's CEL rules say the same; checked again for objects stored before them.
        if spec.method == KUBERNETES_AUTH and (kubernetes_auth is None or spec.credentials):
            return fail(
                "InvalidSpec", "method kubernetes-auth needs kubernetesAuth and no credentials"
            )
        if spec.method != KUBERNETES_AUTH and (spec.credentials is None or spec.kubernetes_auth):
            return fail(
                "InvalidSpec", f"method {spec.method} needs credentials and no kubernetesAuth"
            )
        # Before any Secret is read: credentials never go to an instance the operator refuses.
        if not self.allowed_instances.allows(spec.instance_url):
            return fail(
                "InstanceNotAllowed",
                f"instanceUrl {spec.instance_url} is not allowed by the operator "
                f"(allowed: {self.allowed_instances}); no Secret was read",
            )
        client_id: str | None = None
        credentials: AnyCredentials
        if kubernetes_auth is not None:
            credentials = self._kubernetes_credentials(
                secrets_namespace, kubernetes_auth, spec.organization_slug or None
            )
        else:
            assert spec.credentials is not None
            ref = spec.credentials.secret_ref
            secret = await self.kube.read_secret(secrets_namespace, ref.name)
            if secret is None:
                return fail(
                    "SecretNotFound",
                    f"credentials Secret {secrets_namespace}/{ref.name} not found",
                )
            missing = [
                key for key in (ref.client_id_key, ref.client_secret_key) if key not in secret.data
            ]
            if missing:
                return fail(
                    "SecretKeyMissing",
                    f"credentials Secret {secrets_namespace}/{ref.name} has no key "
                    + ", ".join(missing),
                )
            try:
                client_id = secret.data[ref.client_id_key].decode().strip()
                client_secret = SecretStr(secret.data[ref.client_secret_key].decode().strip())
            except UnicodeDecodeError:
                return fail(
                    "SecretKeyMissing",
                    f"credentials Secret {secrets_namespace}/{ref.name} holds non-UTF-8 data",
                )
            credentials = Credentials(client_id, client_secret, spec.organization_slug or None)
        ca_pem: str | None = None
        if spec.tls and spec.tls.ca_secret_ref:
            ca_ref = spec.tls.ca_secret_ref
            ca_secret = await self.kube.read_secret(secrets_namespace, ca_ref.name)
            if ca_secret is None:
                return fail(
                    "SecretNotFound", f"CA Secret {secrets_namespace}/{ca_ref.name} not found"
                )
            if ca_ref.key not in ca_secret.data:
                return fail(
                    "SecretKeyMissing",
                    f"CA Secret {secrets_namespace}/{ca_ref.name} has no key {ca_ref.key}",
                )
            ca_pem = ca_secret.data[ca_ref.key].decode(errors="replace")
        session: InfisicalSession | None = None
        try:
            session = self.pool.session(
                connection_key(namespace, name),
                instance_url=spec.instance_url,
                credentials=credentials,
                ca_pem=ca_pem,
                allow_http=spec.allow_insecure_http,
            )
            info = await session.validate(force_login=force_login)
        except InfisicalError as exc:
            # retry_after: a 429's Retry-After, or when a refused login is worth trying again.
            failed = fail(exc.reason, str(exc), client_id, exc.retry_after)
            validated_before = (
                not force_login and session is not None and session.holds_token_for(credentials)
            )
            return dataclasses.replace(failed, validated_before=validated_before)
        return Outcome(
            True,
            "Validated",
            f"logged in to {session.transport.instance} as {credentials.principal}",
            client_id,
            spec.instance_url,
            token_expires_at=info.expires_at,
            identity_id=identity_id,
        )

    def _kubernetes_credentials(
        self, namespace: str, auth: KubernetesAuthSpec, organization_slug: str | None
    ) -> KubernetesAuthCredentials:
        """Kubernetes Auth credentials whose every login asks the API server for a new token of
        the service account (in the connection's namespace)."""
        account = auth.service_account_ref.name
        audiences = auth.audiences
        kube = self.kube

        async def request_jwt() -> SecretStr:
            where = f"ServiceAccount {namespace}/{account}"
            try:
                token = await kube.request_service_account_token(
                    namespace, account, audiences, SERVICE_ACCOUNT_TOKEN_SECONDS
                )
            except ApiException as exc:
                # Only the status: the answer's body is the API server's, never quoted.
                if exc.status == 404:
                    raise ServiceAccountNotFound(
                        f"{where} not found: Kubernetes Auth logs in with its tokens",
                        status=404,
                    ) from None
                if exc.status == 403:
                    raise TokenRequestForbidden(
                        f"requesting a token for {where} was refused (403): the operator needs "
                        "create on serviceaccounts/token in namespace "
                        f"{namespace} (chart value rbac.kubernetesAuth=true)",
                        status=403,
                    ) from None
                raise ServiceAccountTokenUnavailable(
                    f"requesting a token for {where} failed with {exc.status}",
                    status=exc.status,
                ) from None
            if not token.get_secret_value():
                raise ServiceAccountTokenUnavailable(f"the token request for {where} got no token")
            return token

        return KubernetesAuthCredentials(
            identity_id=auth.identity_id,
            service_account=f"{namespace}/{account}",
            audiences=audiences,
            request_jwt=request_jwt,
            organization_slug=organization_slug,
        )

    async def reconcile(
        self, namespace: str, name: str, body: Mapping[str, Any], *, force_login: bool
    ) -> tuple[Outcome, bool]:
        """Validate and write status. Returns the outcome and whether dependents should sync."""
        outcome = await self.validate(
            namespace, name, body.get("spec") or {}, force_login=force_login
        )
        key = (namespace, name)
        writes = self.writes_status(namespace, name)
        # Our own last result wins over the watched body, which can lag behind our status patch.
        previous = self.written.get(key)
        if previous is None:
            previous = dict(body.get("status") or {})
        known = self.states.get(key)
        # A shard that does not write the status goes by its own session only: the status says
        # what the owner's session saw.
        was_ready = (
            known.ready
            if known is not None
            else writes and condition_status(previous.get("conditions"), "Ready") == "True"
        )
        # Deferred only for what was validated before: a 429 at the login for new credentials,
        # a new URL or CA, or a changed spec leaves them unvalidated, so not Ready.
        if was_ready and outcome.reason == RateLimited.reason and outcome.validated_before:
            session = self.pool.get(connection_key(namespace, name))
            expires_at = session.token_expires_at if session is not None else None
            outcome = deferred_by_rate_limit(outcome, expires_at)
        status = build_status(
            outcome,
            previous,
            generation=(body.get("metadata") or {}).get("generation"),
            now=dt.datetime.now(dt.UTC),
        )
        self.states[(namespace, name)] = ConnectionState(
            outcome.ready, outcome.reason, outcome.message
        )
        metrics.CONNECTION_READY.labels(namespace, name).set(1 if outcome.ready else 0)
        if not writes:
            return outcome, outcome.ready and (not was_ready or force_login)
        # A re-validation that changes nothing writes nothing. After a patch that failed (one
        # that timed out may still have been applied) the whole status is written.
        changes = dict(status) if key in self._unsure else status_patch(previous, status)
        if changes:
            self._unsure.add(key)
            await self.kube.patch_status(plural_of(namespace), namespace, name, changes)
            self._unsure.discard(key)
        self.written[key] = merge_patch(previous, changes)
        if outcome.ready and not was_ready:
            self.post_event(body, "Normal", "Ready", outcome.message)
            log.info("%s is Ready", describe_connection(key))
        elif was_ready and not outcome.ready:
            self.post_event(body, "Warning", outcome.reason, outcome.message)
            log.warning("%s lost Ready: %s", describe_connection(key), outcome.message)
        return outcome, outcome.ready and (not was_ready or force_login)

    def writes_status(self, namespace: str, name: str) -> bool:
        """Whether this shard writes the connection's status and posts its Events."""
        return self.shard.owns(namespace, name)

    async def forget(self, namespace: str, name: str) -> None:
        self.states.pop((namespace, name), None)
        self.written.pop((namespace, name), None)
        self._unsure.discard((namespace, name))
        await self.pool.drop(connection_key(namespace, name))
        with contextlib.suppress(KeyError):
            metrics.CONNECTION_READY.remove(namespace, name)
