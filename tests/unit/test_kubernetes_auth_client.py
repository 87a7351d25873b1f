"""Kubernetes Auth in the Infisical client, against the fake server over real HTTP.

Only what needs no TokenReview: the login's request, where its token comes from, and Infisical's
answers before a review. The reviewed logins run against the real API server in
tests/integration/test_kubernetes_auth.py.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from pydantic import SecretStr

from infisical_sync.conditions import NEEDS_USER
from infisical_sync.infisical.client import InfisicalSession, KubernetesAuthCredentials
from infisical_sync.infisical.errors import (
    IdentityNotConfiguredForKubernetesAuth,
    InfisicalError,
    ServiceAccountNotFound,
    TokenRequestForbidden,
)
from infisical_sync.infisical.transport import InstanceTransport, TransportOptions
from infisical_sync.testing.fake_infisical import FakeInfisical
from infisical_sync.testing.fake_state import FakeState
from infisical_sync.testing.seed import load_seed

FAST = TransportOptions(max_attempts=2, backoff_base=0.01, backoff_cap=0.05, request_timeout=2)
LOGIN = "/api/v1/auth/kubernetes-auth/login"
IDENTITY_ID = "66666666-6666-4666-8666-666666666666"


class TokenSource:
    """Hands out a new canary JWT per call, as a TokenRequest would."""

    def __init__(self) -> None:
        self.issued: list[str] = []

    async def __call__(self) -> SecretStr:
        token = f"eyJhbGciOiJSUzI1NiJ9.canary-claims.canary-signature-{len(self.issued):04d}"
        self.issued.append(token)
        return SecretStr(token)


def credentials(
    source: TokenSource, audiences: tuple[str, ...] = ("aud",)
) -> KubernetesAuthCredentials:
    return KubernetesAuthCredentials(
        identity_id=IDENTITY_ID,
        service_account="team-a/infisical-login",
        audiences=audiences,
        request_jwt=source,
    )


@pytest.fixture
async def fake() -> AsyncIterator[FakeInfisical]:
    async with FakeInfisical() as server:
        yield server


@pytest.fixture
async def transport(fake: FakeInfisical) -> AsyncIterator[InstanceTransport]:
    transport = InstanceTransport(fake.url, allow_http=True, options=FAST)
    yield transport
    await transport.aclose()


async def test_each_login_sends_a_new_token_and_no_kubernetes_auth_is_a_reason(
    fake: FakeInfisical, transport: InstanceTransport, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    source = TokenSource()
    session = InfisicalSession(transport, credentials(source))
    for _ in range(2):
        with pytest.raises(IdentityNotConfiguredForKubernetesAuth) as caught:
            await session.validate(force_login=True)
    assert caught.value.reason == "IdentityNotConfiguredForKubernetesAuth"
    assert caught.value.status == 404
    assert "did you configure Kubernetes auth?" in str(caught.value)
    assert fake.state.kubernetes_jwts_seen == source.issued  # one fresh token per login
    assert len(set(source.issued)) == 2
    assert fake.count(LOGIN, "POST", 404) == 2
    logged = caplog.text + str(caught.value) + repr(session.credentials)
    assert not any(token.rsplit(".", 1)[1] in logged for token in source.issued)


@pytest.mark.parametrize("error", [ServiceAccountNotFound, TokenRequestForbidden])
async def test_no_login_without_a_token(
    fake: FakeInfisical, transport: InstanceTransport, error: type[InfisicalError]
) -> None:
    async def refused() -> SecretStr:
        raise error("the token request failed")

    session = InfisicalSession(
        transport,
        KubernetesAuthCredentials(
            identity_id=IDENTITY_ID,
            service_account="team-a/missing",
            audiences=(),
            request_jwt=refused,
        ),
    )
    with pytest.raises(error):
        await session.validate(force_login=True)
    assert fake.count(LOGIN) == 0


def test_the_version_follows_identity_account_and_audiences_not_the_token() -> None:
    source = TokenSource()
    base = credentials(source)
    assert base.version == credentials(TokenSource()).version  # a new source: same identity
    assert base.version != credentials(source, audiences=("other",)).version
    assert "canary" not in repr(base)
    assert base.principal == f"identity {IDENTITY_ID} (service account team-a/infisical-login)"


def test_every_kubernetes_auth_reason_waits_for_someone() -> None:
    assert {
        "ServiceAccountNotFound",
        "TokenRequestForbidden",
        "ServiceAccountTokenUnavailable",
        "KubernetesAuthRefused",
        "IdentityNotConfiguredForKubernetesAuth",
    } <= NEEDS_USER


def test_the_readme_seed_declares_a_kubernetes_auth_identity() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = readme.split("Seed file for the standalone server (YAML or JSON):")[1]
    seed = yaml.safe_load(block.split("```yaml\n", 1)[1].split("```", 1)[0])
    state = FakeState()
    load_seed(state, seed)
    identity = state.identity_by_id("7a1d2c3e-0000-4000-8000-000000000003")
    assert identity is not None and identity.kubernetes_auth is not None
    auth = identity.kubernetes_auth
    assert auth.token_reviewer_jwt is None  # empty: each login's token reviews itself
    assert (auth.allowed_namespaces, auth.allowed_names, auth.allowed_audience) == (
        "team-a",
        "infisical-login",
        "infisical",
    )
    assert set(identity.projects) == {next(iter(state.projects))}
