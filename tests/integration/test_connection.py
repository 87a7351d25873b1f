"""InfisicalConnection end to end: the operator process, the real control plane, the fake."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from tests import kube_helpers
from tests.conftest import OperatorProcess, wait_for
from tests.kube_helpers import create, patch, put_secret

from infisical_sync.testing.fake_infisical import BackgroundFake, FakeInfisical, Fault

pytestmark = pytest.mark.controlplane
PLURAL = "infisicalconnections"
CLIENT_ID = "33333333-3333-4333-8333-333333333333"
GOOD_SECRET = "canary-good-secret-5d41402abc4b2a76"
BAD_SECRET = "canary-bad-secret-7d793037a0760186"


@pytest.fixture
def fake() -> Iterator[FakeInfisical]:
    with BackgroundFake() as server:
        server.state.add_identity(CLIENT_ID, GOOD_SECRET)
        yield server


def credentials(
    kube: Any,
    namespace: str,
    secret: str = GOOD_SECRET,
    name: str = "identity",
    labels: dict[str, str] | None = None,
) -> None:
    put_secret(kube, namespace, name, {"clientId": CLIENT_ID, "clientSecret": secret}, labels)


def create_connection(kube: Any, namespace: str, url: str, name: str = "conn", **spec: Any) -> None:
    spec = {
        "instanceUrl": url,
        "allowInsecureHttp": url.startswith("http://"),
        "credentials": {"secretRef": {"name": "identity"}},
        "validationInterval": "1m",
        **spec,
    }
    create(kube, namespace, PLURAL, "InfisicalConnection", name, spec)


def status(kube: Any, namespace: str, name: str = "conn") -> dict[str, Any]:
    return kube_helpers.status(kube, namespace, PLURAL, name)


def ready(kube: Any, namespace: str, name: str = "conn") -> tuple[str, str] | None:
    return kube_helpers.condition(kube, namespace, PLURAL, name, "Ready")


def wait_ready(kube: Any, namespace: str, expected: tuple[str, str], timeout: float = 20) -> None:
    wait_for(lambda: ready(kube, namespace) == expected, timeout, message=f"Ready={expected}")


def test_valid_credentials_become_ready(
    operator: OperatorProcess, kube: Any, namespace: str, fake: FakeInfisical
) -> None:
    credentials(kube, namespace)
    create_connection(kube, namespace, fake.url)
    wait_ready(kube, namespace, ("True", "Validated"))
    found = status(kube, namespace)
    conditions = {c["type"]: c for c in found["conditions"]}
    assert conditions["CredentialsValid"]["status"] == "True"
    assert conditions["Ready"]["observedGeneration"] == 1
    assert found["observedGeneration"] == 1
    assert found["clientId"] == CLIENT_ID
    assert found["instanceUrl"] == fake.url
    assert found["tokenExpiresAt"] and conditions["Ready"]["lastTransitionTime"]
    assert "lastValidatedAt" not in found  # no heartbeat: see the liveness metrics
    assert kube_helpers.event_reasons(kube, namespace, "conn") == ["Ready"]


def test_wrong_secret_is_invalid_credentials(
    operator: OperatorProcess, kube: Any, namespace: str, fake: FakeInfisical
) -> None:
    credentials(kube, namespace, BAD_SECRET)
    create_connection(kube, namespace, fake.url)
    wait_ready(kube, namespace, ("False", "InvalidCredentials"))
    found = status(kube, namespace)
    assert "Invalid credentials" in found["message"]
    assert {c["type"]: c["status"] for c in found["conditions"]}["CredentialsValid"] == "False"


def test_missing_secret_then_created(
    operator: OperatorProcess, kube: Any, namespace: str, fake: FakeInfisical
) -> None:
    create_connection(kube, namespace, fake.url)
    wait_ready(kube, namespace, ("False", "SecretNotFound"))
    assert f"{namespace}/identity not found" in status(kube, namespace)["message"]
    # The watch or the failure retry (5 s, 10 s) picks it up; the watch alone is shown by
    # test_deleted_credentials_secret_is_noticed, where no retry is pending.
    credentials(kube, namespace)
    wait_ready(kube, namespace, ("True", "Validated"), timeout=10)


def test_missing_key(
    operator: OperatorProcess, kube: Any, namespace: str, fake: FakeInfisical
) -> None:
    put_secret(kube, namespace, "identity", {"clientId": CLIENT_ID})
    create_connection(kube, namespace, fake.url)
    wait_ready(kube, namespace, ("False", "SecretKeyMissing"))
    assert "has no key clientSecret" in status(kube, namespace)["message"]


def test_rotation(
    operator: OperatorProcess, kube: Any, namespace: str, fake: FakeInfisical
) -> None:
    credentials(kube, namespace)
    create_connection(kube, namespace, fake.url)
    wait_ready(kube, namespace, ("True", "Validated"))
    credentials(kube, namespace, BAD_SECRET)
    wait_ready(kube, namespace, ("False", "InvalidCredentials"), timeout=10)
    credentials(kube, namespace, GOOD_SECRET)
    wait_ready(kube, namespace, ("True", "Validated"), timeout=10)
    reasons = kube_helpers.event_reasons(kube, namespace, "conn")
    assert reasons.count("Ready") == 2 and reasons.count("InvalidCredentials") == 1


def test_unreachable_then_recovers(operator: OperatorProcess, kube: Any, namespace: str) -> None:
    background = BackgroundFake()
    with background as fake:
        fake.state.add_identity(CLIENT_ID, GOOD_SECRET)
        background.pause()
        credentials(kube, namespace)
        create_connection(kube, namespace, fake.url)
        wait_ready(kube, namespace, ("False", "Unreachable"), timeout=30)
        conditions = {c["type"]: c["status"] for c in status(kube, namespace)["conditions"]}
        assert conditions["CredentialsValid"] == "Unknown"
        background.resume()
        wait_ready(
            kube, namespace, ("True", "Validated"), timeout=30
        )  # failure retries back off from 5 s


def test_rate_limited_then_recovers(
    operator: OperatorProcess, kube: Any, namespace: str, fake: FakeInfisical
) -> None:
    fake.inject(Fault("status", r"/universal-auth/login$", status=429, retry_after=8, times=1))
    credentials(kube, namespace)
    create_connection(kube, namespace, fake.url)
    wait_ready(kube, namespace, ("False", "RateLimited"))
    logins_while_limited = fake.count(r"/universal-auth/login$")
    wait_ready(kube, namespace, ("True", "Validated"), timeout=30)
    assert logins_while_limited == 1
    limited, ok = [r for r in fake.log if r.path.endswith("/login")][:2]
    assert ok.at - limited.at >= 7.5  # nothing sent to the instance before Retry-After ended


def touch_credentials(kube: Any, namespace: str, label: str, secret: str = GOOD_SECRET) -> None:
    """Change the credentials Secret without changing its content: a Secret event, a kick."""
    data = {"clientId": CLIENT_ID, "clientSecret": secret}
    put_secret(kube, namespace, "identity", data, labels={"touched": label})


def revalidate_after_touch(
    operator: OperatorProcess, kube: Any, namespace: str, label: str, secret: str
) -> None:
    """Touch the credentials Secret and wait until the validation it triggers has ended (its
    liveness metric moves: a validation that changes nothing writes no status)."""
    labels = {"kind": "InfisicalConnection", "namespace": namespace, "name": "conn"}

    def validated() -> float:
        return operator.metric("infisical_sync_last_cycle_timestamp_seconds", **labels) or 0.0

    before = validated()
    touch_credentials(kube, namespace, label, secret)
    wait_for(lambda: validated() > before, timeout=10)


def test_bad_credentials_are_not_retried_into_a_lockout(
    operator: OperatorProcess, kube: Any, namespace: str, fake: FakeInfisical
) -> None:
    credentials(kube, namespace, BAD_SECRET)
    create_connection(kube, namespace, fake.url)
    wait_ready(kube, namespace, ("False", "InvalidCredentials"))
    for label in ("1", "2", "3"):  # Secret events that do not change the credentials
        revalidate_after_touch(operator, kube, namespace, label, BAD_SECRET)
    assert fake.count(r"/universal-auth/login$") == 1
    assert "until the credentials Secret" in status(kube, namespace)["message"]
    assert fake.state.identities[CLIENT_ID].locked_until == 0
    credentials(kube, namespace, GOOD_SECRET)  # the fix works at once: no lockout to wait out
    wait_ready(kube, namespace, ("True", "Validated"), timeout=10)


def test_a_locked_identity_is_reported_as_locked(
    operator: OperatorProcess, kube: Any, namespace: str, fake: FakeInfisical
) -> None:
    fake.state.identities[CLIENT_ID].locked_until = fake.state.clock.now() + 300
    credentials(kube, namespace)
    create_connection(kube, namespace, fake.url)
    wait_ready(kube, namespace, ("False", "CredentialsLocked"))
    assert "temporarily locked" in status(kube, namespace)["message"]
    revalidate_after_touch(operator, kube, namespace, "1", GOOD_SECRET)
    assert fake.count(r"/universal-auth/login$") == 1  # waited out, not retried


def test_rate_limit_at_revalidation_keeps_the_connection_ready(
    operator: OperatorProcess, kube: Any, namespace: str, fake: FakeInfisical
) -> None:
    credentials(kube, namespace)
    create_connection(kube, namespace, fake.url)
    wait_ready(kube, namespace, ("True", "Validated"))
    fake.inject(Fault("status", ".*", status=429, retry_after=30, times=1))
    touch_credentials(kube, namespace, "1")  # re-validates now
    wait_ready(kube, namespace, ("True", "ValidationDeferred"), timeout=10)
    assert fake.count(status=429) == 1
    assert "deferred by rate limiting" in status(kube, namespace)["message"]
    assert kube_helpers.event_reasons(kube, namespace, "conn") == ["Ready"]  # no Warning


def test_custom_ca(operator: OperatorProcess, kube: Any, namespace: str) -> None:
    with BackgroundFake(FakeInfisical(tls=True)) as fake:
        fake.state.add_identity(CLIENT_ID, GOOD_SECRET)
        credentials(kube, namespace)
        create_connection(kube, namespace, fake.url)
        wait_ready(kube, namespace, ("False", "TLSError"))
        assert "caSecretRef" in status(kube, namespace)["message"]
        assert fake.ca_pem is not None
        put_secret(kube, namespace, "infisical-ca", {"ca.crt": fake.ca_pem.decode()})
        patch(
            kube,
            namespace,
            PLURAL,
            "conn",
            {"spec": {"tls": {"caSecretRef": {"name": "infisical-ca"}}}},
        )
        wait_ready(kube, namespace, ("True", "Validated"), timeout=15)
        assert status(kube, namespace)["observedGeneration"] == 2


def test_a_ca_that_is_not_pem_and_a_redirect_are_reported(
    operator: OperatorProcess, kube: Any, namespace: str, fake: FakeInfisical
) -> None:
    credentials(kube, namespace)
    put_secret(kube, namespace, "infisical-ca", {"ca.crt": "not a PEM bundle"})
    create_connection(
        kube,
        namespace,
        "https://infisical.example.com",
        tls={"caSecretRef": {"name": "infisical-ca"}},
    )
    wait_ready(kube, namespace, ("False", "TLSError"))
    assert "not usable PEM" in status(kube, namespace)["message"]
    fake.inject(Fault("status", r"/login$", status=301, location="https://infisical.example.com/"))
    moved = {"instanceUrl": fake.url, "allowInsecureHttp": True, "tls": None}
    patch(kube, namespace, PLURAL, "conn", {"spec": moved})
    wait_ready(kube, namespace, ("False", "Redirected"), timeout=10)
    assert "redirects to https://infisical.example.com/" in status(kube, namespace)["message"]


def test_secrets_never_leak(
    operator: OperatorProcess, kube: Any, namespace: str, fake: FakeInfisical
) -> None:
    credentials(kube, namespace, BAD_SECRET)
    create_connection(kube, namespace, fake.url)
    wait_ready(kube, namespace, ("False", "InvalidCredentials"))
    credentials(kube, namespace, GOOD_SECRET)
    wait_ready(kube, namespace, ("True", "Validated"), timeout=10)
    tokens = list(fake.state.tokens)
    assert tokens
    events = client.CoreV1Api(kube).list_namespaced_event(namespace).items
    surfaces = [operator.log(), repr(status(kube, namespace)), repr([e.message for e in events])]
    for surface in surfaces:
        encoded = [base64.b64encode(c.encode()).decode() for c in (GOOD_SECRET, BAD_SECRET)]
        for canary in (GOOD_SECRET, BAD_SECRET, *tokens, *encoded):
            assert canary not in surface
    assert "POST auth.login -> 200" in operator.log()  # DEBUG request lines were being written


def test_deleted_connection_goes_away(
    operator: OperatorProcess, kube: Any, namespace: str, fake: FakeInfisical
) -> None:
    credentials(kube, namespace)
    create_connection(kube, namespace, fake.url)
    wait_ready(kube, namespace, ("True", "Validated"))
    assert kube_helpers.get(kube, namespace, PLURAL, "conn")["metadata"]["finalizers"] == [
        "infisical-sync.dev/finalizer"
    ]
    kube_helpers.delete(kube, namespace, PLURAL, "conn")
    wait_for(lambda: kube_helpers.get(kube, namespace, PLURAL, "conn") is None, timeout=20)
    wait_for(lambda: fake.count(r"/auth/token/revoke$") == 1, timeout=10)  # its token is revoked


def test_deleted_credentials_secret_is_noticed(
    operator: OperatorProcess, kube: Any, namespace: str, fake: FakeInfisical
) -> None:
    credentials(kube, namespace)
    create_connection(kube, namespace, fake.url)
    wait_ready(kube, namespace, ("True", "Validated"))
    client.CoreV1Api(kube).delete_namespaced_secret("identity", namespace)
    wait_ready(kube, namespace, ("False", "SecretNotFound"), timeout=10)  # the watch, not the timer


def test_revalidation_uses_the_cached_token(
    operator: OperatorProcess, kube: Any, namespace: str, fake: FakeInfisical
) -> None:
    # Infisical's default identity (TTL = max TTL): its token can never be renewed.
    credentials(kube, namespace)
    create_connection(kube, namespace, fake.url)
    wait_ready(kube, namespace, ("True", "Validated"))
    checks = fake.count(r"^/api/v1/projects$", status=200)
    for touch in (1, 2):
        # A credentials Secret edited without changing the credentials re-validates the way the
        # timer does (no forced login), without waiting out the 30 s minimum interval.
        credentials(kube, namespace, labels={"touched": str(touch)})
        wait_for(
            lambda touch=touch: fake.count(r"^/api/v1/projects$", status=200) >= checks + touch,
            timeout=10,
        )
    # No client-secret use and no new token per check.
    assert fake.count(r"/universal-auth/login$") == 1
    assert len(fake.state.tokens) == 1
    assert kube_helpers.event_reasons(kube, namespace, "conn") == ["Ready"]  # transitions only
