"""ConnectionReconciler against the fake server over real HTTP, with Kubernetes stubbed out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from pydantic import SecretStr

from infisical_sync.connection import ConnectionReconciler, Outcome
from infisical_sync.infisical.client import ClientPool
from infisical_sync.infisical.transport import TransportOptions
from infisical_sync.instance_urls import AllowedInstances
from infisical_sync.kube import Kube, SecretData
from infisical_sync.shards import Shard, slot_of
from infisical_sync.status_patch import merge_patch
from infisical_sync.testing.fake_infisical import FakeInfisical, Fault

CLIENT_ID = "66666666-6666-4666-8666-666666666666"
CLIENT_SECRET = "canary-connection-secret-0cc175b9"
NAMESPACE, NAME = "ns", "conn"
LOGIN = r"/universal-auth/login$"
FAST = TransportOptions(max_attempts=2, backoff_base=0.01, backoff_cap=0.05, request_timeout=2)


@dataclass
class StubKube:
    """The calls ConnectionReconciler makes: read a Secret, patch our status, and (Kubernetes
    Auth) request a service account token."""

    secrets: dict[str, dict[str, bytes]] = field(default_factory=dict)
    statuses: list[dict[str, Any]] = field(default_factory=list)  # the patches, in order
    token_requests: list[tuple[str, str, tuple[str, ...], int]] = field(default_factory=list)

    @property
    def stored(self) -> dict[str, Any]:
        """The status as the API server holds it after every patch."""
        stored: dict[str, Any] = {}
        for patch in self.statuses:
            stored = merge_patch(stored, patch)
        return stored

    def put(self, name: str, data: dict[str, str]) -> None:
        self.secrets[name] = {key: value.encode() for key, value in data.items()}

    async def read_secret(self, namespace: str, name: str) -> SecretData | None:
        data = self.secrets.get(name)
        return None if data is None else SecretData(name, dict(data), "1", {})

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: dict[str, Any]
    ) -> bool:
        self.statuses.append(status)
        return True

    async def request_service_account_token(
        self, namespace: str, name: str, audiences: tuple[str, ...], expiration_seconds: int
    ) -> SecretStr:
        self.token_requests.append((namespace, name, audiences, expiration_seconds))
        return SecretStr(f"eyJhbGciOiJSUzI1NiJ9.claims.signature-{len(self.token_requests)}")


@dataclass
class Harness:
    fake: FakeInfisical
    kube: StubKube
    pool: ClientPool
    reconciler: ConnectionReconciler
    events: list[tuple[str, str]]
    spec: dict[str, Any]

    def body(self) -> dict[str, Any]:
        return {
            "metadata": {"namespace": NAMESPACE, "name": NAME, "generation": 1},
            "spec": self.spec,
            "status": self.kube.stored,
        }

    async def reconcile(self, *, force_login: bool = False) -> Outcome:
        outcome, _ = await self.reconciler.reconcile(
            NAMESPACE, NAME, self.body(), force_login=force_login
        )
        return outcome

    def condition(self, type_: str) -> tuple[str, str, str]:
        found = {c["type"]: c for c in self.kube.stored["conditions"]}[type_]
        return found["status"], found["reason"], found["message"]


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    async with FakeInfisical() as fake:
        fake.state.add_identity(CLIENT_ID, CLIENT_SECRET)
        kube = StubKube()
        kube.put("identity", {"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET})
        pool = ClientPool(FAST)
        events: list[tuple[str, str]] = []
        reconciler = ConnectionReconciler(
            cast(Kube, kube),
            pool,
            post_event=lambda _body, type_, reason, _message: events.append((type_, reason)),
            allowed_instances=AllowedInstances.from_urls([]),
        )
        spec = {
            "instanceUrl": fake.url,
            "allowInsecureHttp": True,
            "credentials": {"secretRef": {"name": "identity"}},
        }
        try:
            yield Harness(fake, kube, pool, reconciler, events, spec)
        finally:
            await pool.aclose()


# --- quiet status (issue 10) -------------------------------------------------------------------


async def test_a_revalidation_that_changes_nothing_writes_no_status(harness: Harness) -> None:
    assert (await harness.reconcile(force_login=True)).ready
    first = harness.kube.stored
    assert "lastValidatedAt" not in first  # a heartbeat: the metrics say when it last ran
    for _ in range(3):
        assert (await harness.reconcile()).ready
    assert harness.fake.count(r"/api/v1/projects$") >= 3  # each re-validation asked the instance
    assert len(harness.kube.statuses) == 1 and harness.kube.stored == first
    harness.kube.put("identity", {"clientId": CLIENT_ID, "clientSecret": "wrong"})
    assert not (await harness.reconcile(force_login=True)).ready
    assert len(harness.kube.statuses) == 2  # a change is written
    assert harness.condition("Ready")[:2] == ("False", "InvalidCredentials")


# --- rate limiting (issue 8, item 7) -------------------------------------------------------------


async def test_a_429_at_validation_keeps_a_ready_connection_ready(harness: Harness) -> None:
    assert (await harness.reconcile(force_login=True)).ready
    since = harness.kube.stored["conditions"][0]["lastTransitionTime"]
    harness.fake.inject(Fault("status", ".*", status=429, retry_after=30, times=1))
    outcome = await harness.reconcile()
    assert harness.fake.count(status=429) == 1
    assert outcome.ready and outcome.reason == "ValidationDeferred"
    status, reason, message = harness.condition("Ready")
    assert (status, reason) == ("True", "ValidationDeferred")
    assert "rate limit" in message and "deferred" in message
    assert harness.condition("CredentialsValid")[:2] == ("True", "ValidationDeferred")
    assert harness.kube.stored["conditions"][0]["lastTransitionTime"] == since  # still Ready
    assert harness.kube.stored["tokenExpiresAt"]
    assert harness.events == [("Normal", "Ready")]  # no Warning
    assert harness.reconciler.session(NAMESPACE, NAME) is not None  # SecretSyncs go on


async def test_a_429_before_the_first_validation_is_not_ready_without_a_warning(
    harness: Harness,
) -> None:
    harness.fake.inject(Fault("status", ".*", status=429, retry_after=30, times=1))
    outcome = await harness.reconcile(force_login=True)
    assert not outcome.ready and outcome.reason == "RateLimited"
    assert outcome.retry_after is not None and outcome.retry_after > 25
    assert harness.condition("CredentialsValid")[:2] == ("Unknown", "RateLimited")
    assert harness.events == []


async def test_a_429_at_a_forced_login_is_not_deferred(harness: Harness) -> None:
    # The spec changed: what it says now was never validated.
    assert (await harness.reconcile(force_login=True)).ready
    harness.fake.inject(Fault("status", ".*", status=429, retry_after=30, times=1))
    outcome, kick = await harness.reconciler.reconcile(
        NAMESPACE, NAME, harness.body(), force_login=True
    )
    assert (outcome.ready, outcome.reason, kick) == (False, "RateLimited", False)
    assert harness.condition("Ready")[:2] == ("False", "RateLimited")
    assert harness.reconciler.session(NAMESPACE, NAME) is None
    assert harness.events == [("Normal", "Ready"), ("Warning", "RateLimited")]


async def test_a_429_at_the_login_for_rotated_credentials_is_not_deferred(
    harness: Harness,
) -> None:
    assert (await harness.reconcile(force_login=True)).ready
    harness.fake.state.identities[CLIENT_ID].client_secret = "rotated-secret"
    harness.kube.put("identity", {"clientId": CLIENT_ID, "clientSecret": "rotated-secret"})
    harness.fake.inject(Fault("status", LOGIN, status=429, retry_after=30, times=1))
    outcome = await harness.reconcile()
    assert harness.fake.count(LOGIN, status=429) == 1
    assert (outcome.ready, outcome.reason) == (False, "RateLimited")
    assert harness.reconciler.session(NAMESPACE, NAME) is None


async def test_a_429_at_the_first_login_to_a_new_url_is_not_deferred(harness: Harness) -> None:
    assert (await harness.reconcile(force_login=True)).ready
    async with FakeInfisical() as moved:
        moved.state.add_identity(CLIENT_ID, CLIENT_SECRET)
        moved.inject(Fault("status", ".*", status=429, retry_after=30, times=1))
        harness.spec = {**harness.spec, "instanceUrl": moved.url}
        outcome = await harness.reconcile()  # e.g. a resync that found the new URL
        assert moved.count(LOGIN, status=429) == 1
    assert (outcome.ready, outcome.reason) == (False, "RateLimited")
    assert harness.reconciler.session(NAMESPACE, NAME) is None


# --- refused logins (issue 8, item 8) ------------------------------------------------------------


async def test_a_refused_login_waits_for_new_credentials(harness: Harness) -> None:
    harness.kube.put("identity", {"clientId": CLIENT_ID, "clientSecret": "wrong"})
    first = await harness.reconcile(force_login=True)
    assert first.reason == "InvalidCredentials"
    for _ in range(3):  # failure back-off and Secret events that did not change the content
        again = await harness.reconcile()
        assert again.reason == "InvalidCredentials"
        assert again.retry_after is not None and again.retry_after > 300  # the daemon waits
    assert harness.condition("CredentialsValid")[:2] == ("False", "InvalidCredentials")
    assert "until the credentials Secret" in harness.condition("Ready")[2]
    assert harness.fake.count(LOGIN) == 1
    harness.kube.put("identity", {"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET})
    assert (await harness.reconcile()).ready


async def test_a_locked_identity_has_its_own_reason(harness: Harness) -> None:
    harness.fake.state.identities[CLIENT_ID].locked_until = harness.fake.state.clock.now() + 300
    outcome = await harness.reconcile(force_login=True)
    assert outcome.reason == "CredentialsLocked"
    assert outcome.retry_after is not None and outcome.retry_after > 250
    status, reason, message = harness.condition("Ready")
    assert (status, reason) == ("False", "CredentialsLocked")
    assert "temporarily locked" in message
    assert harness.condition("CredentialsValid")[:2] == ("Unknown", "CredentialsLocked")


# --- TLS and redirects (issue 8, item 10) --------------------------------------------------------


async def test_a_ca_that_is_not_pem_is_reported_in_status(harness: Harness) -> None:
    harness.kube.put("infisical-ca", {"ca.crt": "this is no certificate"})
    harness.spec = {
        **harness.spec,
        "instanceUrl": "https://infisical.example.com",
        "allowInsecureHttp": False,
        "tls": {"caSecretRef": {"name": "infisical-ca"}},
    }
    outcome = await harness.reconcile(force_login=True)
    assert outcome.reason == "TLSError"
    status, reason, message = harness.condition("Ready")
    assert (status, reason) == ("False", "TLSError")
    assert "tls.caSecretRef" in message and "PEM" in message


async def test_a_redirect_at_login_is_not_a_ca_problem(harness: Harness) -> None:
    harness.fake.inject(Fault("status", "/login$", status=308))
    outcome = await harness.reconcile(force_login=True)
    assert outcome.reason == "Redirected"
    assert "instanceUrl" in outcome.message and "CA" not in outcome.message
    assert harness.condition("CredentialsValid")[:2] == ("Unknown", "Redirected")


async def test_a_redirect_to_a_malformed_location_ends_a_ready_connection(
    harness: Harness,
) -> None:
    assert (await harness.reconcile(force_login=True)).ready
    harness.fake.inject(Fault("status", "/login$", status=302, location="h:secretport"))
    outcome = await harness.reconcile(force_login=True)
    status, reason, message = harness.condition("Ready")
    assert (status, reason) == ("False", "Redirected") and not outcome.ready
    assert "gave an invalid Location" in message and "secretport" not in message
    assert harness.events == [("Normal", "Ready"), ("Warning", "Redirected")]


# --- re-validation with the cached token (issue 8, item 9) ---------------------------------------


async def test_a_cached_token_refused_by_trusted_ips_ends_ready(harness: Harness) -> None:
    assert (await harness.reconcile(force_login=True)).ready
    harness.fake.inject(Fault("status", r"^/api/v1/projects$", status=403, error="ForbiddenError"))
    outcome = await harness.reconcile()
    assert not outcome.ready
    assert harness.condition("Ready")[:2] == ("False", "Forbidden")
    assert harness.events == [("Normal", "Ready"), ("Warning", "Forbidden")]


# --- shards (issue 10): one shard writes a connection's status, every shard logs in -----------


def _other_shard(namespace: str, name: str) -> Shard:
    """A shard of 2 that does not own namespace/name."""
    return Shard(1 - slot_of(namespace, name, 2), 2)


async def test_a_shard_not_owning_the_connection_logs_in_but_writes_no_status_or_event(
    harness: Harness,
) -> None:
    reconciler = ConnectionReconciler(
        cast(Kube, harness.kube),
        harness.pool,
        post_event=lambda _body, type_, reason, _message: harness.events.append((type_, reason)),
        allowed_instances=AllowedInstances.from_urls([]),
        shard=_other_shard(NAMESPACE, NAME),
    )
    # The owner already wrote Ready: this shard's own session decides, not that status.
    body = {**harness.body(), "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    outcome, notify = await reconciler.reconcile(NAMESPACE, NAME, body, force_login=True)
    assert outcome.ready and notify  # its own waiting SecretSyncs are kicked
    assert reconciler.session(NAMESPACE, NAME) is not None
    harness.kube.put("identity", {"clientId": CLIENT_ID, "clientSecret": "wrong"})
    outcome, _ = await reconciler.reconcile(NAMESPACE, NAME, body, force_login=True)
    assert not outcome.ready and reconciler.session(NAMESPACE, NAME) is None
    assert harness.kube.statuses == [] and harness.events == []
    assert harness.fake.count(LOGIN) == 2


async def test_the_shard_owning_the_connection_writes_its_status(harness: Harness) -> None:
    owner = Shard(slot_of(NAMESPACE, NAME, 2), 2)
    reconciler = ConnectionReconciler(
        cast(Kube, harness.kube),
        harness.pool,
        post_event=lambda _body, type_, reason, _message: harness.events.append((type_, reason)),
        allowed_instances=AllowedInstances.from_urls([]),
        shard=owner,
    )
    outcome, _ = await reconciler.reconcile(NAMESPACE, NAME, harness.body(), force_login=True)
    assert outcome.ready and harness.condition("Ready")[:2] == ("True", "Validated")
    assert harness.events == [("Normal", "Ready")]


# --- Kubernetes Auth (the reviewed logins: tests/integration/test_kubernetes_auth.py) ----------

KUBERNETES_AUTH = {
    "identityId": "77777777-7777-4777-8777-777777777777",
    "serviceAccountRef": {"name": "infisical-login"},
    "audiences": ["infisical"],
}


async def test_a_spec_that_mixes_the_methods_is_invalid(harness: Harness) -> None:
    """Objects stored before the CRD's CEL rules: refused here too, before anything is read."""
    harness.spec.update(method="kubernetes-auth", kubernetesAuth=KUBERNETES_AUTH)
    outcome = await harness.reconcile(force_login=True)
    assert (outcome.ready, outcome.reason) == (False, "InvalidSpec")
    assert "needs kubernetesAuth and no credentials" in outcome.message
    del harness.spec["method"]
    outcome = await harness.reconcile(force_login=True)
    assert (outcome.reason, outcome.message) == (
        "InvalidSpec",
        "method machine-identity-universal-auth needs credentials and no kubernetesAuth",
    )
    assert harness.kube.token_requests == [] and harness.fake.count(r"/login$") == 0


async def test_kubernetes_auth_status_names_the_identity(harness: Harness) -> None:
    del harness.spec["credentials"]
    harness.spec.update(method="kubernetes-auth", kubernetesAuth=KUBERNETES_AUTH)
    outcome = await harness.reconcile(force_login=True)
    assert outcome.reason == "IdentityNotConfiguredForKubernetesAuth"  # the fake has none
    assert harness.kube.token_requests == [(NAMESPACE, "infisical-login", ("infisical",), 600)]
    stored = harness.kube.stored
    assert stored["identityId"] == KUBERNETES_AUTH["identityId"] and "clientId" not in stored
    assert harness.condition("Stalled")[:2] == ("True", "IdentityNotConfiguredForKubernetesAuth")
    assert harness.condition("CredentialsValid")[0] == "False"
    assert "signature-1" not in str(stored) and harness.fake.state.kubernetes_jwts_seen == [
        "eyJhbGciOiJSUzI1NiJ9.claims.signature-1"
    ]
