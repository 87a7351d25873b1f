"""The Infisical client against the fake server over real HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from pydantic import SecretStr

from infisical_sync.infisical.client import ClientPool, Credentials, InfisicalSession, pack
from infisical_sync.infisical.errors import (
    Conflict,
    CredentialsLocked,
    Forbidden,
    InsecureUrl,
    InvalidCredentials,
    NotFound,
    RateLimited,
    Redirected,
    ServerError,
    TLSError,
    Unreachable,
    ValidationFailed,
)
from infisical_sync.infisical.models import SecretLocation, SecretWrite
from infisical_sync.infisical.transport import (
    InstanceTransport,
    TransportOptions,
    redirect_message,
    remote_details,
)
from infisical_sync.testing.fake_infisical import FakeInfisical, Fault
from infisical_sync.testing.fake_profiles import PROFILES

CLIENT_ID = "22222222-2222-4222-8222-222222222222"
CANARY_SECRET = "canary-client-secret-d41d8cd9"
CANARY_VALUE = "canary-secret-value-8f00b204"
FAST = TransportOptions(max_attempts=3, backoff_base=0.01, backoff_cap=0.05, request_timeout=2)
LOCATION = SecretLocation(project_id="p-1", environment="prod", secret_path="/")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def fake(request: pytest.FixtureRequest) -> AsyncIterator[FakeInfisical]:
    """The current generation, or the one a test names (`BOTH_GENERATIONS`)."""
    async with FakeInfisical(profile=getattr(request, "param", "current")) as server:
        server.state.add_project("payments", project_id="p-1")
        server.state.add_identity(CLIENT_ID, CANARY_SECRET, projects={"p-1": {}})
        yield server


def credentials(secret: str = CANARY_SECRET) -> Credentials:
    return Credentials(client_id=CLIENT_ID, client_secret=SecretStr(secret))


@pytest.fixture
async def transport(fake: FakeInfisical) -> AsyncIterator[InstanceTransport]:
    transport = InstanceTransport(fake.url, allow_http=True, options=FAST)
    yield transport
    await transport.aclose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def session(transport: InstanceTransport, clock: FakeClock) -> InfisicalSession:
    return InfisicalSession(transport, credentials(), clock=clock)


# Where a server generation's behaviour differs: the test runs against each fake profile.
BOTH_GENERATIONS = pytest.mark.parametrize("fake", sorted(PROFILES), indirect=True)
LOGIN = r"/universal-auth/login$"
RENEW = r"/auth/token/renew$"


# --- auth -------------------------------------------------------------------------------------


async def test_login_then_token_reuse(fake: FakeInfisical, session: InfisicalSession) -> None:
    await session.list_secrets(LOCATION)
    await session.list_secrets(LOCATION)
    assert fake.count(LOGIN) == 1
    assert session.token_expires_at is not None


async def test_renewal_at_two_thirds_of_ttl(
    fake: FakeInfisical, session: InfisicalSession, clock: FakeClock
) -> None:
    fake.state.identities[CLIENT_ID].access_token_ttl = 30
    fake.state.identities[CLIENT_ID].access_token_max_ttl = 3600
    await session.list_secrets(LOCATION)
    clock.now += 19  # before 2/3 of 30 s: reuse
    await session.list_secrets(LOCATION)
    assert fake.count(RENEW) == 0
    clock.now += 2  # past 20 s: renew, same token, no new login
    await session.list_secrets(LOCATION)
    assert (fake.count(LOGIN), fake.count(RENEW)) == (1, 1)


async def test_max_ttl_leads_to_login_instead_of_renewal(
    fake: FakeInfisical, session: InfisicalSession, clock: FakeClock
) -> None:
    fake.state.identities[CLIENT_ID].access_token_ttl = 30
    fake.state.identities[CLIENT_ID].access_token_max_ttl = 40
    await session.list_secrets(LOCATION)
    clock.now += 21  # renewal would end past the max TTL (21 + 30 > 40)
    await session.list_secrets(LOCATION)
    assert (fake.count(LOGIN), fake.count(RENEW)) == (2, 0)


async def test_refused_renewal_falls_back_to_login(
    fake: FakeInfisical, session: InfisicalSession, clock: FakeClock
) -> None:
    fake.state.identities[CLIENT_ID].access_token_ttl = 30
    await session.list_secrets(LOCATION)
    for token in fake.state.tokens.values():
        token.revoked = True
    clock.now += 21
    await session.list_secrets(LOCATION)
    assert fake.count(RENEW, status=401) == 1
    assert fake.count(LOGIN) == 2


async def test_401_drops_token_and_retries_once(
    fake: FakeInfisical, session: InfisicalSession
) -> None:
    await session.list_secrets(LOCATION)
    for token in fake.state.tokens.values():
        token.revoked = True
    listing = await session.list_secrets(LOCATION)
    assert listing.secrets == []
    assert fake.count(LOGIN) == 2
    assert fake.count(r"/api/v4/secrets$", status=401) == 1


async def test_403_token_error_relogs_in(fake: FakeInfisical, session: InfisicalSession) -> None:
    fake.state.identities[CLIENT_ID].access_token_ttl = 0  # only the JWT expiry applies
    fake.state.identities[CLIENT_ID].access_token_max_ttl = 100
    await session.list_secrets(LOCATION)
    fake.state.clock.advance(101)  # the server sees the JWT as expired; our clock does not
    await session.list_secrets(LOCATION)
    assert fake.count(r"/api/v4/secrets$", status=403) == 1
    assert fake.count(LOGIN) == 2


async def test_single_flight_login_under_50_concurrent_callers(
    fake: FakeInfisical, session: InfisicalSession
) -> None:
    fake.inject(Fault("latency", LOGIN, delay=0.1))
    await asyncio.gather(*(session.list_secrets(LOCATION) for _ in range(50)))
    assert fake.count(LOGIN) == 1
    assert fake.count(r"/api/v4/secrets$", status=200) == 50


async def test_invalid_credentials_are_not_retried(
    fake: FakeInfisical, transport: InstanceTransport
) -> None:
    session = InfisicalSession(transport, credentials("wrong"))
    with pytest.raises(InvalidCredentials) as caught:
        await session.validate(force_login=True)
    assert "Invalid credentials" in str(caught.value)
    assert "(reqId req-" in str(caught.value)
    assert fake.count(LOGIN) == 1


async def test_a_refused_login_is_not_repeated_until_the_credentials_change(
    fake: FakeInfisical, transport: InstanceTransport, clock: FakeClock
) -> None:
    session = InfisicalSession(transport, credentials("wrong"), clock=clock)
    with pytest.raises(InvalidCredentials):
        await session.validate(force_login=True)
    for _ in range(3):  # the daemon's failure back-off, Secret events without a new secret
        with pytest.raises(InvalidCredentials) as again:
            await session.validate(force_login=False)
        assert "until the credentials Secret or the connection's spec changes" in str(again.value)
        assert again.value.retry_after is not None and again.value.retry_after > 300
    assert fake.count(LOGIN) == 1
    assert fake.state.identities[CLIENT_ID].locked_until == 0  # Infisical's lockout not reached
    session.replace_credentials(credentials())  # the user fixed the Secret
    await session.validate(force_login=False)
    assert fake.count(LOGIN, status=200) == 1


async def test_a_refused_login_is_retried_after_a_long_backoff_or_a_spec_change(
    fake: FakeInfisical, transport: InstanceTransport, clock: FakeClock
) -> None:
    session = InfisicalSession(transport, credentials("wrong"), clock=clock)
    with pytest.raises(InvalidCredentials):
        await session.validate(force_login=True)
    clock.now += 599
    with pytest.raises(InvalidCredentials):
        await session.validate(force_login=False)
    assert fake.count(LOGIN) == 1
    clock.now += 1
    with pytest.raises(InvalidCredentials):
        await session.validate(force_login=False)
    assert fake.count(LOGIN) == 2
    with pytest.raises(InvalidCredentials):
        await session.validate(force_login=True)  # the spec changed: one more try
    assert fake.count(LOGIN) == 3


async def test_a_locked_identity_is_reported_and_waited_out(
    fake: FakeInfisical, transport: InstanceTransport, clock: FakeClock
) -> None:
    fake.state.identities[CLIENT_ID].locked_until = fake.state.clock.now() + 300
    session = InfisicalSession(transport, credentials("wrong"), clock=clock)
    with pytest.raises(CredentialsLocked) as caught:
        await session.validate(force_login=True)
    assert caught.value.reason == "CredentialsLocked"
    assert "temporarily locked" in str(caught.value)
    session.replace_credentials(credentials())  # fixed, but the lock holds whatever the secret
    with pytest.raises(CredentialsLocked) as again:
        await session.validate(force_login=True)
    assert "next login attempt in 300s" in str(again.value)
    assert fake.count(LOGIN) == 1
    clock.now += 300
    fake.state.clock.advance(300)
    await session.validate(force_login=False)
    assert fake.count(LOGIN, status=200) == 1


PROBE = r"^/api/v1/projects$"
REVOKE = r"/auth/token/revoke$"


async def test_revalidation_reuses_a_valid_token_when_ttl_equals_max_ttl(
    fake: FakeInfisical, session: InfisicalSession, clock: FakeClock
) -> None:
    # Infisical's default: TTL = max TTL = 30 days, so the token can never be renewed.
    first = await session.validate(force_login=True)
    for _ in range(3):  # validationInterval ticks
        clock.now += 300
        again = await session.validate(force_login=False)
        assert not again.logged_in
    assert first.logged_in
    assert (fake.count(LOGIN), fake.count(RENEW), fake.count(PROBE, status=200)) == (1, 0, 3)
    assert len(fake.state.tokens) == 1
    assert all(record.authorized for record in fake.log if re.search(PROBE, record.path))


async def test_validate_renews_only_when_renewal_is_due(
    fake: FakeInfisical, session: InfisicalSession, clock: FakeClock
) -> None:
    fake.state.identities[CLIENT_ID].access_token_ttl = 3600
    fake.state.identities[CLIENT_ID].access_token_max_ttl = 86400
    await session.validate(force_login=True)
    assert not (await session.validate(force_login=False)).logged_in
    assert (fake.count(RENEW), fake.count(PROBE)) == (0, 1)
    clock.now += 2401  # past 2/3 of the TTL
    assert not (await session.validate(force_login=False)).logged_in
    assert (fake.count(LOGIN), fake.count(RENEW), fake.count(PROBE)) == (1, 1, 1)


async def test_a_replaced_token_is_always_revoked(
    fake: FakeInfisical, session: InfisicalSession, clock: FakeClock
) -> None:
    fake.state.identities[CLIENT_ID].access_token_ttl = 30
    fake.state.identities[CLIENT_ID].access_token_max_ttl = 30
    await session.validate(force_login=True)
    await session.validate(force_login=True)  # the spec changed: a fresh login
    clock.now += 21  # renewal due, but it would pass the max TTL: a login
    await session.list_secrets(LOCATION)
    await session.settle()  # replaced tokens are revoked in the background
    assert (fake.count(LOGIN), fake.count(REVOKE, status=200)) == (3, 2)
    live = [token for token in fake.state.tokens.values() if not token.revoked]
    assert len(live) == 1


async def test_a_replaced_token_is_revoked_off_the_login_path(fake: FakeInfisical) -> None:
    pool = ClientPool(FAST)
    session = pool.session(
        "ns/conn", instance_url=fake.url, credentials=credentials(), allow_http=True
    )
    await session.validate(force_login=True)
    first = next(iter(fake.state.tokens.values()))
    fake.inject(Fault("latency", REVOKE, delay=1.0))  # a slow revocation (or one in back-off)
    await session.validate(force_login=True)
    # The login did not wait for it, so callers waiting for the session lock do not either.
    assert not first.revoked
    await pool.aclose()  # waits for revocations under way
    assert first.revoked and fake.count(REVOKE, status=200) == 2


@pytest.mark.timeout(10)  # the bug was a loop that never yielded: only a signal ends it
async def test_settle_returns_when_a_revocation_ended_in_the_same_loop_pass(
    transport: InstanceTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    answered = asyncio.get_running_loop().create_future()

    async def held_send(*_args: object, **_kwargs: object) -> httpx.Response:
        await answered
        return httpx.Response(200)

    monkeypatch.setattr(transport, "send", held_send)
    session = InfisicalSession(transport, credentials())
    session._revoke_later(SecretStr("a-replaced-token"))
    await asyncio.sleep(0)  # the revocation waits for its answer
    answered.set_result(None)
    # One loop pass: the revocation ends in it, and its done callback is only queued for the
    # next pass when settle() starts. On Python >= 3.12 gather() of done tasks completes
    # without yielding, so a settle() that looped on gather() spun forever here (CI saw it).
    await asyncio.sleep(0)
    await session.settle()
    assert session._revocations and all(task.done() for task in session._revocations)
    await asyncio.sleep(0)  # the done callback's pass: the client is no longer held
    assert not session._revocations and transport._users == 0


async def test_a_refused_token_leads_to_a_login_without_revoking_it(
    fake: FakeInfisical, session: InfisicalSession
) -> None:
    await session.validate(force_login=True)
    for token in fake.state.tokens.values():
        token.revoked = True
    assert (await session.validate(force_login=False)).logged_in
    assert (fake.count(PROBE, status=401), fake.count(LOGIN), fake.count(REVOKE)) == (1, 2, 0)


async def test_a_probe_refused_for_identities_still_proves_the_token(
    fake: FakeInfisical, session: InfisicalSession
) -> None:
    # Some servers serve the project list to users only: the token was checked before that.
    await session.validate(force_login=True)
    fake.inject(Fault("status", PROBE, status=403, error="Forbidden access to /api/v1/projects"))
    assert not (await session.validate(force_login=False)).logged_in
    assert fake.count(LOGIN) == 1


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        # The token's trusted IPs changed: the token is refused for every call.
        (Fault("status", PROBE, status=403, error="ForbiddenError"), Forbidden),
        (Fault("status", PROBE, status=403, error="PermissionDenied"), Forbidden),
        (Fault("status", PROBE, status=304), ServerError),
        (Fault("status", PROBE, status=200, body="<html>proxy login</html>"), ServerError),
        (Fault("status", PROBE, status=200, error="NoProjectsHere"), ServerError),  # no list
        (Fault("status", PROBE, status=404, error="NotFound"), NotFound),
    ],
)
async def test_a_probe_answer_that_proves_nothing_fails_validation(
    fake: FakeInfisical, session: InfisicalSession, fault: Fault, error: type[Exception]
) -> None:
    await session.validate(force_login=True)
    fake.inject(fault)
    with pytest.raises(error) as caught:
        await session.validate(force_login=False)
    assert type(caught.value) is error
    assert fake.count(LOGIN) == 1


async def test_without_the_probe_route_revalidation_logs_in_and_revokes(
    fake: FakeInfisical, session: InfisicalSession
) -> None:
    await session.validate(force_login=True)
    fake.inject(Fault("missing", PROBE))
    assert (await session.validate(force_login=False)).logged_in
    assert (await session.validate(force_login=False)).logged_in
    assert fake.count(PROBE) == 1  # learnt once
    await session.settle()
    assert (fake.count(LOGIN), fake.count(REVOKE, status=200)) == (3, 2)


async def test_rotation_drops_the_cached_token(fake: FakeInfisical) -> None:
    pool = ClientPool(FAST)
    try:
        session = pool.session(
            "ns/conn", instance_url=fake.url, credentials=credentials(), allow_http=True
        )
        await session.validate(force_login=True)
        fake.state.identities[CLIENT_ID].client_secret = "rotated-secret"
        same = pool.session(
            "ns/conn",
            instance_url=fake.url,
            credentials=credentials("rotated-secret"),
            allow_http=True,
        )
        assert same is session
        await session.list_secrets(LOCATION)
        assert fake.count(LOGIN) == 2
        await session.settle()  # the old token is revoked in the background
        assert fake.count(r"/auth/token/revoke$") == 1
    finally:
        await pool.aclose()


async def until(predicate: Callable[[], bool], timeout: float = 5) -> None:
    """Poll the event loop until predicate() holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


NEW_CLIENT_ID = "77777777-7777-4777-8777-777777777777"


async def test_rotation_during_a_login_never_keeps_a_token_for_the_old_credentials(
    fake: FakeInfisical,
) -> None:
    fake.state.add_identity(NEW_CLIENT_ID, "new-secret", projects={"p-1": {}})
    pool = ClientPool(FAST)
    try:
        session = pool.session(
            "ns/conn", instance_url=fake.url, credentials=credentials(), allow_http=True
        )
        fake.inject(Fault("latency", LOGIN, delay=0.3, times=1))
        validation = asyncio.create_task(session.validate(force_login=True))
        await until(lambda: fake.in_flight == 1)  # the login for the old identity is on its way
        rotated = Credentials(client_id=NEW_CLIENT_ID, client_secret=SecretStr("new-secret"))
        assert (
            pool.session("ns/conn", instance_url=fake.url, credentials=rotated, allow_http=True)
            is session
        )
        await validation
        assert session._token is not None
        held = fake.state.tokens[session._token.value.get_secret_value()]
        assert held.identity_id == NEW_CLIENT_ID
        # The token issued for the old identity meanwhile is revoked, not left live.
        old = [t for t in fake.state.tokens.values() if t.identity_id == CLIENT_ID]
        assert len(old) == 1
        await until(lambda: old[0].revoked)
    finally:
        await pool.aclose()


async def test_clients_for_urls_no_session_uses_are_closed(fake: FakeInfisical) -> None:
    async with FakeInfisical() as other:
        other.state.add_identity(CLIENT_ID, CANARY_SECRET)
        pool = ClientPool(FAST)
        try:
            first = pool.session(
                "ns/a", instance_url=fake.url, credentials=credentials(), allow_http=True
            )
            shared = pool.session(
                "ns/b", instance_url=fake.url, credentials=credentials(), allow_http=True
            )
            await first.validate(force_login=True)
            old_transport = first.transport
            moved = pool.session(
                "ns/a", instance_url=other.url, credentials=credentials(), allow_http=True
            )
            assert moved.transport is not old_transport
            await until(lambda: fake.count(REVOKE, status=200) == 1)  # over the old client
            assert not old_transport.closed  # ns/b still uses it
            await pool.drop("ns/b")
            assert old_transport.closed and shared.transport is old_transport
            with pytest.raises(Unreachable):  # a straggler holding the retired session
                await shared.list_secrets(LOCATION)
            await moved.validate(force_login=True)
            await pool.drop("ns/a")
            assert moved.transport.closed
        finally:
            await pool.aclose()


async def test_a_retired_session_never_logs_in_again(fake: FakeInfisical) -> None:
    async with FakeInfisical() as other:
        other.state.add_identity(CLIENT_ID, CANARY_SECRET)
        pool = ClientPool(FAST)
        try:
            old = pool.session(
                "ns/a", instance_url=fake.url, credentials=credentials(), allow_http=True
            )
            pool.session("ns/b", instance_url=fake.url, credentials=credentials(), allow_http=True)
            await old.validate(force_login=True)
            pool.session("ns/a", instance_url=other.url, credentials=credentials(), allow_http=True)
            await until(lambda: fake.count(REVOKE, status=200) == 1)
            # A SecretSync cycle still holding the old session: its client is open (ns/b).
            with pytest.raises(Unreachable) as caught:
                await old.list_secrets(LOCATION)
            assert "connection settings changed" in str(caught.value)
            assert fake.count(LOGIN) == 1
            assert not [t for t in fake.state.tokens.values() if not t.revoked]
        finally:
            await pool.aclose()


async def test_a_login_in_flight_when_its_session_retires_leaves_no_live_token(
    fake: FakeInfisical,
) -> None:
    async with FakeInfisical() as other:
        other.state.add_identity(CLIENT_ID, CANARY_SECRET)
        pool = ClientPool(FAST)
        try:
            old = pool.session(
                "ns/a", instance_url=fake.url, credentials=credentials(), allow_http=True
            )
            fake.inject(Fault("latency", LOGIN, delay=0.3, times=1))
            validation = asyncio.create_task(old.validate(force_login=True))
            await until(lambda: fake.in_flight == 1)
            pool.session("ns/a", instance_url=other.url, credentials=credentials(), allow_http=True)
            with pytest.raises(Unreachable) as caught:
                await validation
            assert "connection settings changed" in str(caught.value)
            # The token it got is revoked over the old client, closed only after that.
            await until(lambda: old.transport.closed)
            assert len(fake.state.tokens) == 1
            assert all(token.revoked for token in fake.state.tokens.values())
        finally:
            await pool.aclose()


async def test_the_project_slug_cache_is_dropped_when_the_project_is_gone(
    fake: FakeInfisical, session: InfisicalSession
) -> None:
    old_id = await session.project_id(project_id=None, project_slug="payments")
    del fake.state.projects[old_id]  # deleted and created again under the same slug
    fake.state.add_project("payments", project_id="p-2")
    fake.state.grant(CLIENT_ID, "p-2")
    with pytest.raises(Forbidden):
        await session.list_secrets(SecretLocation(project_id=old_id, environment="prod"))
    assert await session.project_id(project_id=None, project_slug="payments") == "p-2"


async def test_the_project_slug_cache_expires(
    fake: FakeInfisical, session: InfisicalSession, clock: FakeClock
) -> None:
    await session.project_id(project_id=None, project_slug="payments")
    clock.now += 599
    await session.project_id(project_id=None, project_slug="payments")
    assert fake.count(r"/projects/slug/payments$") == 1
    clock.now += 1
    await session.project_id(project_id=None, project_slug="payments")
    assert fake.count(r"/projects/slug/payments$") == 2


SLUG_LOOKUPS = r"^/api/v1/projects/slug/|^/api/v2/workspace/"


async def test_concurrent_first_lookups_of_a_slug_share_one_request(
    fake: FakeInfisical, session: InfisicalSession
) -> None:
    await session.validate(force_login=True)
    fake.inject(Fault("latency", SLUG_LOOKUPS, delay=0.05))  # every caller arrives in flight
    found = await asyncio.gather(
        *(session.project_id(project_id=None, project_slug="payments") for _ in range(20))
    )
    assert found == ["p-1"] * 20
    assert fake.count(SLUG_LOOKUPS) == 1


async def test_a_failed_slug_lookup_is_shared_by_its_callers_and_not_kept(
    fake: FakeInfisical, session: InfisicalSession
) -> None:
    await session.validate(force_login=True)
    fake.inject(Fault("latency", SLUG_LOOKUPS, delay=0.05))
    results = await asyncio.gather(
        *(session.project_id(project_id=None, project_slug="billing") for _ in range(20)),
        return_exceptions=True,
    )
    assert all(isinstance(result, NotFound) for result in results)
    assert fake.count(SLUG_LOOKUPS) == 1
    fake.state.add_project("billing", project_id="p-2")
    fake.state.grant(CLIENT_ID, "p-2")
    assert await session.project_id(project_id=None, project_slug="billing") == "p-2"
    assert fake.count(SLUG_LOOKUPS) == 2


async def test_a_cancelled_caller_does_not_cancel_the_shared_lookup(
    fake: FakeInfisical, session: InfisicalSession
) -> None:
    await session.validate(force_login=True)
    fake.inject(Fault("latency", SLUG_LOOKUPS, delay=0.1))
    first = asyncio.ensure_future(session.project_id(project_id=None, project_slug="payments"))
    second = asyncio.ensure_future(session.project_id(project_id=None, project_slug="payments"))
    while fake.in_flight == 0:  # the lookup reached the server
        await asyncio.sleep(0.001)
    first.cancel()
    assert await second == "p-1"
    assert first.cancelled() and fake.count(SLUG_LOOKUPS) == 1


# --- API --------------------------------------------------------------------------------------


async def test_write_list_and_etag(fake: FakeInfisical, session: InfisicalSession) -> None:
    await session.batch_create(LOCATION, [SecretWrite(key="A", value=SecretStr("1"))])
    first = await session.list_secrets(LOCATION)
    assert [(s.key, s.value.get_secret_value()) for s in first.secrets] == [("A", "1")]
    assert first.etag
    again = await session.list_secrets(LOCATION, etag=first.etag)
    assert again.not_modified and again.secrets == []
    await session.batch_update(LOCATION, [SecretWrite(key="A", value=SecretStr("2"))])
    changed = await session.list_secrets(LOCATION, etag=first.etag)
    assert not changed.not_modified and changed.secrets[0].value.get_secret_value() == "2"
    await session.batch_delete(LOCATION, ["A"])
    assert fake.state.get_secrets("p-1", "prod") == {}


async def test_a_key_cap_chunks_batches(fake: FakeInfisical, transport: InstanceTransport) -> None:
    session = InfisicalSession(transport, credentials(), batch_max_keys=10)
    await session.batch_create(
        LOCATION, [SecretWrite(key=f"K{i}", value=SecretStr(str(i))) for i in range(25)]
    )
    assert fake.count(r"/api/v4/secrets/batch$", "POST") == 3
    assert len(fake.state.get_secrets("p-1", "prod")) == 25


BATCH = r"^/api/v4/secrets/batch$"


async def test_ten_thousand_short_keys_are_one_write(
    fake: FakeInfisical, session: InfisicalSession
) -> None:
    await session.batch_create(
        LOCATION,
        [SecretWrite(key=f"KEY_{i}", value=SecretStr(f"value-{i}")) for i in range(10_000)],
    )
    assert fake.count(BATCH, "POST") == 1
    assert len(fake.state.get_secrets("p-1", "prod")) == 10_000


async def test_batches_are_chunked_by_body_size_into_the_fewest_requests(
    fake: FakeInfisical, session: InfisicalSession
) -> None:
    # 200 KB values: four fit the default budget (~900 KiB), five would pass Fastify's 1 MiB.
    writes = [SecretWrite(key=f"BIG_{i}", value=SecretStr("x" * 200_000)) for i in range(10)]
    await session.batch_create(LOCATION, writes)
    sent = [record for record in fake.log if re.search(BATCH, record.path)]
    assert len(sent) == 3  # 4 + 4 + 2
    assert all(record.body_bytes and record.body_bytes <= 900 * 1024 for record in sent)
    assert fake.count(status=413) == 0
    assert len(fake.state.get_secrets("p-1", "prod")) == 10


async def test_mixed_sizes_pack_into_the_fewest_requests(
    fake: FakeInfisical, transport: InstanceTransport
) -> None:
    # In this order, filling one request after another takes four; packed, three are enough.
    session = InfisicalSession(transport, credentials(), batch_max_bytes=3000)
    sizes = [1800, 1100, 1800, 1100]  # two 1100s share a request; an 1800 shares with nothing
    writes = [SecretWrite(key=f"K{i}", value=SecretStr("v" * n)) for i, n in enumerate(sizes)]
    fake.body_limit = 3000
    await session.batch_create(LOCATION, writes)
    assert fake.count(BATCH, "POST") == 3 and fake.count(status=413) == 0
    assert len(fake.state.get_secrets("p-1", "prod")) == 4


def test_pack_fills_chunks_and_keeps_the_callers_order() -> None:
    # Budget 10, one separator byte per item.
    assert pack([3, 3, 3], 10) == [[0, 1], [2]]
    assert pack([2, 8, 2], 10) == [[0, 2], [1]]  # the large one first, the small ones together
    assert pack([50, 1], 10) == [[0], [1]]  # over the budget: alone
    assert pack([1] * 5, 10, max_items=2) == [[0, 1], [2, 3], [4]]
    assert pack([], 10) == []


async def test_a_proxy_with_a_smaller_limit_is_named_in_the_error(
    fake: FakeInfisical, session: InfisicalSession
) -> None:
    fake.body_limit = 2000
    with pytest.raises(ValidationFailed) as refused:
        await session.batch_create(
            LOCATION, [SecretWrite(key=f"K{i}", value=SecretStr(CANARY_VALUE)) for i in range(100)]
        )
    assert "INFISICAL_SYNC_BATCH_MAX_BYTES" in str(refused.value)
    assert CANARY_VALUE not in str(refused.value)


async def test_a_key_larger_than_the_body_limit_is_sent_alone_and_named(
    fake: FakeInfisical, session: InfisicalSession
) -> None:
    huge = "h" * (1024 * 1024)
    writes = [
        SecretWrite(key="SMALL", value=SecretStr("s")),
        SecretWrite(key="HUGE", value=SecretStr(huge)),
    ]
    with pytest.raises(ValidationFailed) as refused:
        await session.batch_create(LOCATION, writes)
    assert "HUGE" in str(refused.value) and "413" in str(refused.value)
    assert huge not in str(refused.value)
    [too_large] = [record for record in fake.log if record.status == 413]
    assert too_large.body_bytes is not None and too_large.body_bytes < len(huge) + 200


async def test_v4_to_v3_fallback(fake: FakeInfisical, session: InfisicalSession) -> None:
    fake.v4_enabled = False
    await session.batch_create(LOCATION, [SecretWrite(key="OLD", value=SecretStr("v"))])
    listing = await session.list_secrets(LOCATION)
    assert [s.key for s in listing.secrets] == ["OLD"]
    # v4 was tried once, then remembered as missing for this instance.
    assert fake.count(r"^/api/v4/") == 1
    assert fake.count(r"/api/v3/secrets/batch/raw$") == 1
    assert fake.count(r"/api/v3/secrets/raw$") == 1


# --- server generations -----------------------------------------------------------------------

PAYMENTS = SecretLocation(project_id="p-1", environment="prod", secret_path="/apps/payments")
FOLDERS_V2 = r"^/api/v2/folders$"
FOLDERS_V1 = r"^/api/v1/folders$"
V4_BATCH, V3_BATCH = r"^/api/v4/secrets/batch$", r"^/api/v3/secrets/batch/raw$"
SLUG_V1 = r"^/api/v1/projects/slug/payments$"
SLUG_V2 = r"^/api/v2/workspace/payments$"


def batch_route(fake: FakeInfisical) -> str:
    """The batch route the generation serves (an older one answers v4 with Fastify's 404)."""
    return V4_BATCH if fake.server.v4_routes else V3_BATCH


def folder_exists(fake: FakeInfisical, location: SecretLocation) -> bool:
    found = fake.state.folder(location.project_id, location.environment, location.secret_path)
    return found is not None


@BOTH_GENERATIONS
async def test_a_folder_is_created_through_the_route_the_instance_serves(
    fake: FakeInfisical, session: InfisicalSession
) -> None:
    nested = SecretLocation(project_id="p-1", environment="prod", secret_path="/apps/billing/v2")
    await session.ensure_folder(PAYMENTS)
    await session.ensure_folder(PAYMENTS)  # an existing leaf is success on either route
    await session.ensure_folder(nested)  # mkdir -p
    await session.ensure_folder(LOCATION)  # the root always exists: nothing sent
    assert folder_exists(fake, PAYMENTS) and folder_exists(fake, nested)
    if fake.server.folders_v2:
        assert (fake.count(FOLDERS_V2, status=200), fake.count(FOLDERS_V2, status=400)) == (2, 1)
        assert fake.count(FOLDERS_V1) == 0
    else:
        assert fake.count(FOLDERS_V2) == 1  # learnt once for the instance
        assert fake.count(FOLDERS_V1, status=200) == 3


async def test_the_v1_folder_route_of_a_current_server_refusing_an_existing_leaf(
    fake: FakeInfisical, session: InfisicalSession
) -> None:
    """A current server reached on v1 (its v2 route missing, e.g. behind a proxy that forwards
    only some routes) answers 400 for an existing leaf there too: success for a mkdir -p."""
    fake.override(folders_v2=False)
    await session.ensure_folder(PAYMENTS)
    await session.ensure_folder(PAYMENTS)
    assert folder_exists(fake, PAYMENTS)
    assert (fake.count(FOLDERS_V1, status=200), fake.count(FOLDERS_V1, status=400)) == (1, 1)


@BOTH_GENERATIONS
async def test_a_write_into_a_missing_folder_creates_it_and_is_retried_once(
    fake: FakeInfisical, session: InfisicalSession
) -> None:
    # 2024 lists a missing path as empty, so the write is the first to say it is missing.
    await session.batch_create(PAYMENTS, [SecretWrite(key="A", value=SecretStr("1"))])
    assert fake.state.get_secrets("p-1", "prod", PAYMENTS.secret_path) == {"A": "1"}
    assert (
        fake.count(batch_route(fake), status=404),
        fake.count(batch_route(fake), status=200),
    ) == (1, 1)
    # An update into a folder that is gone: created, retried, and the missing key reported
    # (the sync re-plans from a fresh read).
    gone = SecretLocation(project_id="p-1", environment="prod", secret_path="/apps/gone")
    with pytest.raises(NotFound) as caught:
        await session.batch_update(gone, [SecretWrite(key="A", value=SecretStr("2"))])
    assert "Secret does not exist" in str(caught.value)
    assert folder_exists(fake, gone)


@BOTH_GENERATIONS
async def test_a_write_still_refused_for_a_missing_folder_is_not_retried_again(
    fake: FakeInfisical, session: InfisicalSession
) -> None:
    missing = {
        "message": "Folder with path '/apps/payments' in environment with slug 'prod' not found",
        "error": "CreateManySecret",
        "statusCode": 404,
    }
    fake.inject(Fault("status", batch_route(fake), status=404, body=json.dumps(missing)))
    with pytest.raises(NotFound) as caught:
        await session.batch_create(PAYMENTS, [SecretWrite(key="A", value=SecretStr("1"))])
    assert "Folder with path '/apps/payments'" in str(caught.value)
    assert fake.count(batch_route(fake)) == 2


@BOTH_GENERATIONS
async def test_a_delete_never_creates_a_folder(
    fake: FakeInfisical, session: InfisicalSession
) -> None:
    with pytest.raises(NotFound):
        await session.batch_delete(PAYMENTS, ["A"])
    assert not folder_exists(fake, PAYMENTS)
    assert fake.count(r"/folders$") == 0


@BOTH_GENERATIONS
async def test_a_folder_that_cannot_be_created_fails_the_write_with_its_reason(
    fake: FakeInfisical, session: InfisicalSession
) -> None:
    fake.inject(Fault("status", r"/folders$", status=403, error="PermissionDenied"))
    with pytest.raises(Forbidden) as caught:
        await session.batch_create(PAYMENTS, [SecretWrite(key="A", value=SecretStr("1"))])
    assert "creating folder /apps/payments failed with 403" in str(caught.value)
    assert fake.count(batch_route(fake)) == 1


@BOTH_GENERATIONS
async def test_project_by_slug_through_the_route_the_instance_serves(
    fake: FakeInfisical, session: InfisicalSession, clock: FakeClock
) -> None:
    assert await session.project_id(project_id=None, project_slug="payments") == "p-1"
    await session.project_id(project_id=None, project_slug="payments")  # cached
    clock.now += 600
    assert await session.project_id(project_id=None, project_slug="payments") == "p-1"
    if fake.server.project_slug_v1:
        assert (fake.count(SLUG_V1), fake.count(SLUG_V2)) == (2, 0)
    else:
        assert (fake.count(SLUG_V1), fake.count(SLUG_V2, status=200)) == (1, 2)  # learnt once


@pytest.mark.parametrize("wrapper", ["workspace", "project"])
async def test_a_wrapped_project_is_read_too(
    fake: FakeInfisical, session: InfisicalSession, wrapper: str
) -> None:
    wrapped = json.dumps({wrapper: {"_id": "p-1", "name": "payments", "slug": "payments"}})
    fake.inject(Fault("status", SLUG_V1, status=200, body=wrapped))
    assert await session.project_id(project_id=None, project_slug="payments") == "p-1"


@BOTH_GENERATIONS
async def test_an_upsert_creates_missing_keys_and_updates_the_others_without_mode(
    fake: FakeInfisical, session: InfisicalSession
) -> None:
    fake.state.put_secret("p-1", "prod", "/", "OLD", "old")
    fake.state.put_secret("p-1", "prod", "/", "KEPT", "kept")
    await session.batch_upsert(
        LOCATION,
        [
            SecretWrite(key="NEW", value=SecretStr("n")),
            SecretWrite(key="OLD", value=SecretStr("o")),
        ],
    )
    assert fake.state.get_secrets("p-1", "prod") == {"OLD": "o", "KEPT": "kept", "NEW": "n"}
    assert (
        fake.count(batch_route(fake), "POST", 200),
        fake.count(batch_route(fake), "PATCH", 200),
    ) == (1, 1)
    # Into a folder that does not exist yet (current: the list says 404; 2024: empty).
    await session.batch_upsert(PAYMENTS, [SecretWrite(key="A", value=SecretStr("1"))])
    assert fake.state.get_secrets("p-1", "prod", PAYMENTS.secret_path) == {"A": "1"}


@BOTH_GENERATIONS
async def test_a_validation_failure_is_not_a_token_problem(
    fake: FakeInfisical, session: InfisicalSession
) -> None:
    await session.validate(force_login=True)
    with pytest.raises(ValidationFailed) as caught:
        await session.batch_create(
            LOCATION, [SecretWrite(key="a:b", value=SecretStr(CANARY_VALUE))]
        )
    assert caught.value.status == fake.server.validation_status
    assert caught.value.reason == "ValidationFailed"
    assert "secrets.0.secretKey: Secret name cannot contain colon" in str(caught.value)
    assert CANARY_VALUE not in str(caught.value) + repr(caught.value)
    assert session._token is not None  # kept: the token was never refused
    await session.list_secrets(LOCATION)
    assert (fake.count(LOGIN), fake.count(batch_route(fake))) == (1, 1)  # no re-login, no retry
    assert not any(token.revoked for token in fake.state.tokens.values())


@BOTH_GENERATIONS
async def test_a_validation_failure_at_login_is_not_a_refused_login(
    fake: FakeInfisical, transport: InstanceTransport, clock: FakeClock
) -> None:
    session = InfisicalSession(transport, credentials(" "), clock=clock)
    for _ in range(2):  # no login-refusal back-off: it is not the credentials that failed
        with pytest.raises(ValidationFailed) as caught:
            await session.validate(force_login=False)
        assert "clientSecret: Required" in str(caught.value)
    # (The fake's request log records a validation failure as 422 whatever it answered.)
    assert fake.count(LOGIN) == 2


@BOTH_GENERATIONS
async def test_error_messages_read_well_with_or_without_a_request_id(
    fake: FakeInfisical, session: InfisicalSession
) -> None:
    fake.state.put_secret("p-1", "prod", "/", "A", CANARY_VALUE)
    with pytest.raises(Conflict) as caught:
        await session.batch_create(LOCATION, [SecretWrite(key="A", value=SecretStr(CANARY_VALUE))])
    expected = "batch create of 1 keys in prod:/ failed with 400: Secret already exists: A"
    if fake.server.request_ids:
        assert re.fullmatch(
            re.escape(expected) + r" \(reqId req-[A-Za-z0-9]{14}\)", str(caught.value)
        )
    else:
        assert str(caught.value) == expected
    with pytest.raises(ValidationFailed) as invalid:
        await session.batch_create(
            LOCATION,
            [
                SecretWrite(key="ok", value=SecretStr(CANARY_VALUE)),
                SecretWrite(key="a/b", value=SecretStr(CANARY_VALUE)),
            ],
        )
    status = fake.server.validation_status
    expected = (
        f"batch create of 2 keys in prod:/ was refused as invalid ({status} ValidationFailure): "
        "secrets.1.secretKey: Secret name cannot contain colon or forward slash."
    )
    assert str(invalid.value).startswith(expected)
    assert ("reqId" in str(invalid.value)) == fake.server.request_ids
    assert CANARY_VALUE not in str(caught.value) + str(invalid.value)


def test_zod_issues_are_rendered_with_their_paths_and_without_received_values() -> None:
    issues = [
        {
            "code": "invalid_type",
            "expected": "string",
            "received": "undefined",
            "path": ["secrets", 0, "secretKey"],
            "message": "Required",
        },
        {
            "code": "invalid_enum_value",
            "received": "canary-mode",
            "options": ["a", "b"],
            "path": ["mode"],
            "message": "Invalid enum value. Expected 'a' | 'b', received 'canary-mode'",
        },
        {"code": "custom", "path": [], "message": "Something about the whole body"},
        "a plain string",
    ]
    response = httpx.Response(
        401, json={"statusCode": 401, "message": issues, "error": "ValidationFailure"}
    )
    details = remote_details(response)
    assert details["remote_message"] == (
        "secrets.0.secretKey: Required; mode: Invalid enum value. Expected 'a' | 'b'; "
        "Something about the whole body; a plain string"
    )
    assert details["request_id"] is None


async def test_missing_path_and_non_retryable_errors(
    fake: FakeInfisical, session: InfisicalSession
) -> None:
    with pytest.raises(NotFound) as missing:
        await session.list_secrets(
            SecretLocation(project_id="p-1", environment="prod", secret_path="/x")
        )
    assert "SecretPathNotFound" not in str(missing.value)
    assert "Folder with path '/x'" in str(missing.value)
    fake.state.put_secret("p-1", "prod", "/", "A", "1")
    with pytest.raises(Conflict):
        await session.batch_create(LOCATION, [SecretWrite(key="A", value=SecretStr("2"))])
    with pytest.raises(ValidationFailed):
        await session.batch_create(LOCATION, [SecretWrite(key="a:b", value=SecretStr("2"))])
    with pytest.raises(Forbidden):
        await session.list_secrets(SecretLocation(project_id="p-unknown", environment="prod"))
    assert fake.count(r"/api/v4/secrets", status=403) == 1  # not retried


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_retryable_statuses(
    fake: FakeInfisical, session: InfisicalSession, status: int
) -> None:
    await session.validate(force_login=True)
    fake.inject(Fault("status", r"/api/v4/secrets$", status=status, times=2))
    await session.list_secrets(LOCATION)
    assert fake.count(r"/api/v4/secrets$") == 3
    fake.inject(Fault("status", r"/api/v4/secrets$", status=status, times=5))
    with pytest.raises(ServerError) as caught:
        await session.list_secrets(LOCATION)
    assert caught.value.status == status


async def test_resets_and_hangs_are_retried_then_unreachable(fake: FakeInfisical) -> None:
    # A reset is retried under a timeout generous enough for a loaded CI host (a 0.3 s read
    # timeout once failed the retry itself); the hang needs the short one to end quickly.
    patient = TransportOptions(max_attempts=2, backoff_base=0.01, request_timeout=5)
    hasty = TransportOptions(
        max_attempts=2, backoff_base=0.01, request_timeout=0.3, connect_timeout=0.3
    )
    for options in (patient, hasty):
        transport = InstanceTransport(fake.url, allow_http=True, options=options)
        try:
            session = InfisicalSession(transport, credentials())
            await session.validate(force_login=True)
            if options is patient:
                fake.inject(Fault("reset", r"/api/v4/secrets$", times=1))
                await session.list_secrets(LOCATION)  # one reset, then success
                statuses = [r.status for r in fake.log if r.path == "/api/v4/secrets"]
                assert statuses[-1] == 200 and len(statuses) == 2
            else:
                fake.inject(Fault("hang", r"/api/v4/secrets$", times=2, delay=5))
                with pytest.raises(Unreachable):
                    await session.list_secrets(LOCATION)
        finally:
            await transport.aclose()


async def test_unreachable_instance() -> None:
    transport = InstanceTransport("http://127.0.0.1:9", allow_http=True, options=FAST)
    try:
        with pytest.raises(Unreachable):
            await InfisicalSession(transport, credentials()).validate(force_login=True)
    finally:
        await transport.aclose()


async def test_the_proxy_from_the_environment_is_used_and_no_proxy_is_honoured(
    fake: FakeInfisical, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("HTTP_PROXY", fake.url)  # the fake answers as the proxy would forward
    monkeypatch.setenv("NO_PROXY", "127.0.0.2")
    # Never resolved: only the proxy is connected to.
    proxied = InstanceTransport("http://infisical.test", allow_http=True, options=FAST)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    direct = InstanceTransport(fake.url, allow_http=True, options=FAST)
    try:
        answer = await proxied.send("GET", "/api/v1/projects", endpoint="projects")
        assert answer.status_code == 401 and fake.count(r"/api/v1/projects$") == 1
        answer = await direct.send("GET", "/api/v1/projects", endpoint="projects")
        assert answer.status_code == 401 and fake.count(r"/api/v1/projects$") == 2
    finally:
        await proxied.aclose()
        await direct.aclose()


async def test_retry_after_gate_short_wait(fake: FakeInfisical, session: InfisicalSession) -> None:
    await session.validate(force_login=True)
    fake.inject(Fault("status", r"/api/v4/secrets$", status=429, retry_after=1, times=1))
    await session.list_secrets(LOCATION)
    first, second = [r for r in fake.log if r.path == "/api/v4/secrets"]
    assert (first.status, second.status) == (429, 200)
    assert second.at - first.at >= 0.95  # nothing sent before Retry-After ran out


async def test_retry_after_gate_blocks_the_whole_instance(fake: FakeInfisical) -> None:
    options = TransportOptions(max_attempts=3, backoff_base=0.01, max_gate_wait=0.1)
    pool = ClientPool(options)
    try:
        one = pool.session(
            "ns/a", instance_url=fake.url, credentials=credentials(), allow_http=True
        )
        await one.validate(force_login=True)
        fake.inject(Fault("status", r"/api/v4/secrets$", status=429, retry_after=30, times=1))
        with pytest.raises(RateLimited) as caught:
            await one.list_secrets(LOCATION)
        assert 29 <= caught.value.retry_after <= 30
        sent = len(fake.log)
        other = pool.session(
            "ns/b", instance_url=fake.url, credentials=credentials(), allow_http=True
        )
        with pytest.raises(RateLimited):
            await other.validate(force_login=True)  # another connection, same instance
        assert len(fake.log) == sent  # no request reached the instance
    finally:
        await pool.aclose()


async def test_requests_queued_behind_the_concurrency_limit_respect_the_gate(
    fake: FakeInfisical,
) -> None:
    options = TransportOptions(concurrency=2, max_attempts=3, backoff_base=0.01, max_gate_wait=5)
    transport = InstanceTransport(fake.url, allow_http=True, options=options)
    try:
        session = InfisicalSession(transport, credentials())
        await session.validate(force_login=True)
        # Every list is slow, so most of the 20 callers queue behind the 2 slots; the first
        # list is answered 429 while they wait.
        fake.inject(Fault("latency", r"/api/v4/secrets$", delay=0.3))
        fake.inject(Fault("status", r"/api/v4/secrets$", status=429, retry_after=2, times=1))
        await asyncio.gather(*(session.list_secrets(LOCATION) for _ in range(20)))
        assert fake.count(r"/api/v4/secrets$", status=429) == 1
        assert fake.count(r"/api/v4/secrets$", status=200) == 20
        # A request already on its way when the 429 was answered cannot be recalled: 0.25 s.
        assert fake.sent_while_rate_limited(margin=0.25) == []
    finally:
        await transport.aclose()


async def test_retry_after_from_message_when_header_missing(fake: FakeInfisical) -> None:
    import httpx

    from infisical_sync.infisical.transport import retry_after_seconds

    with_message = httpx.Response(
        429, json={"message": "Rate limit exceeded. Please try again in 7 seconds"}
    )
    assert retry_after_seconds(with_message) == 7
    assert retry_after_seconds(httpx.Response(429, json={"message": "slow down"})) == 60
    assert retry_after_seconds(httpx.Response(429, headers={"retry-after": "3"})) == 3


async def test_concurrency_limit_is_never_exceeded(fake: FakeInfisical) -> None:
    transport = InstanceTransport(
        fake.url, allow_http=True, options=TransportOptions(concurrency=3)
    )
    try:
        session = InfisicalSession(transport, credentials())
        await session.validate(force_login=True)
        fake.max_in_flight = 0
        fake.inject(Fault("latency", r"/api/v4/secrets$", delay=0.05))
        await asyncio.gather(*(session.list_secrets(LOCATION) for _ in range(30)))
        assert fake.max_in_flight == 3
        assert transport.max_in_flight == 3
    finally:
        await transport.aclose()


# --- TLS and http ----------------------------------------------------------------------------


async def test_tls_with_the_fake_ca() -> None:
    async with FakeInfisical(tls=True) as server:
        server.state.add_identity(CLIENT_ID, CANARY_SECRET)
        assert server.ca_pem is not None
        trusted = InstanceTransport(server.url, ca_pem=server.ca_pem.decode(), options=FAST)
        untrusted = InstanceTransport(server.url, options=FAST)
        try:
            await InfisicalSession(trusted, credentials()).validate(force_login=True)
            with pytest.raises(TLSError) as caught:
                await InfisicalSession(untrusted, credentials()).validate(force_login=True)
            assert "caSecretRef" in str(caught.value)
            assert server.count(LOGIN) == 1
        finally:
            await trusted.aclose()
            await untrusted.aclose()


def test_a_ca_bundle_that_is_not_pem_is_a_tls_error() -> None:
    for bundle in (
        "not a certificate",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----",
    ):
        with pytest.raises(TLSError) as caught:
            InstanceTransport("https://infisical.example.com", ca_pem=bundle)
        assert "tls.caSecretRef" in str(caught.value) and "PEM" in str(caught.value)
        assert "AAAA" not in str(caught.value)


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_redirect_at_login_is_an_error_of_its_own(
    fake: FakeInfisical, session: InfisicalSession, status: int
) -> None:
    fake.inject(Fault("status", LOGIN, status=status, location="https://new.example.com/x/login"))
    with pytest.raises(Redirected) as caught:
        await session.validate(force_login=True)
    assert caught.value.reason == "Redirected" and caught.value.status == status
    assert "https://new.example.com/x/login" in str(caught.value)
    assert "instanceUrl" in str(caught.value)
    assert fake.count(LOGIN) == 1  # neither followed nor retried


async def test_a_redirect_message_names_no_credentials_or_query(
    fake: FakeInfisical, session: InfisicalSession
) -> None:
    target = "https://user:canary-pass@new.example.com/api?token=canary-query"
    fake.inject(Fault("status", LOGIN, status=302, location=target))
    with pytest.raises(Redirected) as caught:
        await session.validate(force_login=True)
    assert "redirects to https://new.example.com/api;" in str(caught.value)
    assert "canary" not in str(caught.value)


async def test_a_redirect_of_a_list_or_a_batch_is_never_success(
    fake: FakeInfisical, session: InfisicalSession
) -> None:
    await session.validate(force_login=True)
    fake.inject(Fault("status", r"^/api/v4/secrets$", status=302))
    with pytest.raises(Redirected):
        await session.list_secrets(LOCATION)
    fake.inject(Fault("status", r"^/api/v4/secrets/batch$", status=307))
    with pytest.raises(Redirected):
        await session.batch_create(LOCATION, [SecretWrite(key="A", value=SecretStr("1"))])
    with pytest.raises(Redirected):
        await session.batch_delete(LOCATION, ["A"])
    fake.inject(Fault("status", r"^/api/v2/folders$", status=308))
    with pytest.raises(Redirected):
        await session.ensure_folder(
            SecretLocation(project_id="p-1", environment="prod", secret_path="/a")
        )


async def test_an_unconditional_304_is_not_success(
    fake: FakeInfisical, session: InfisicalSession
) -> None:
    await session.validate(force_login=True)
    fake.inject(Fault("status", r"^/api/v4/secrets/batch$", status=304))
    with pytest.raises(ServerError) as batch:
        await session.batch_create(LOCATION, [SecretWrite(key="A", value=SecretStr("1"))])
    fake.inject(Fault("status", r"^/api/v4/secrets$", status=304))
    with pytest.raises(ServerError) as listing:
        await session.list_secrets(LOCATION)
    for caught in (batch, listing):
        assert "304 Not Modified to a request that was not conditional" in str(caught.value)


def test_http_refused_unless_allowed() -> None:
    with pytest.raises(InsecureUrl) as caught:
        InstanceTransport("http://infisical.example.com")
    assert "allowInsecureHttp" in str(caught.value)
    with pytest.raises(InsecureUrl):
        InstanceTransport("ftp://infisical.example.com", allow_http=True)


# --- secrecy ----------------------------------------------------------------------------------


async def test_no_secret_in_logs_reprs_or_errors(
    fake: FakeInfisical, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.state.put_secret("p-1", "prod", "/", "DB", CANARY_VALUE)
    pool = ClientPool(FAST)
    texts: list[str] = []
    try:
        session = pool.session(
            "ns/c", instance_url=fake.url, credentials=credentials(), allow_http=True
        )
        listing = await session.list_secrets(LOCATION)
        texts += [repr(listing), str(listing), repr(session.credentials), repr(session._token)]
        token = session._token
        assert token is not None
        raw_token = token.value.get_secret_value()
        fake.inject(Fault("status", r"/api/v4/secrets/batch$", status=503, times=10))
        for call in (
            session.batch_create(LOCATION, [SecretWrite(key="X", value=SecretStr(CANARY_VALUE))]),
            InfisicalSession(session.transport, credentials(CANARY_SECRET + "x")).validate(
                force_login=True
            ),
        ):
            try:
                await call
            except Exception as exc:
                texts += [str(exc), repr(exc)]
    finally:
        await pool.aclose()
    texts.append(caplog.text)
    joined = "\n".join(texts)
    for canary in (CANARY_SECRET, CANARY_VALUE, raw_token):
        assert canary not in joined
    # The request lines were logged at DEBUG, so the canary check above covered them.
    assert any(
        record.levelno == logging.DEBUG and record.name.startswith("infisical_sync")
        for record in caplog.records
    )


@pytest.mark.parametrize(
    "location", ["https://[canary", "canary:secretport", "https://new.example.com:secretport/"]
)
async def test_a_redirect_to_an_invalid_location_is_reported_without_quoting_it(
    fake: FakeInfisical, session: InfisicalSession, location: str
) -> None:
    fake.inject(Fault("status", LOGIN, status=302, location=location))
    with pytest.raises(Redirected) as caught:
        await session.validate(force_login=True)
    assert "gave an invalid Location" in str(caught.value)
    assert "canary" not in str(caught.value) and "secretport" not in str(caught.value)
    assert caught.value.status == 302


@pytest.mark.parametrize(
    ("location", "where"),
    [
        ("https://new.example.com/\x01canary", "gave an invalid Location"),  # aiohttp won't send it
        ("https://[::1]:8443/api", "redirects to https://[::1]:8443/api;"),
        ("/elsewhere?canary", "redirects to http://127.0.0.1:8080/elsewhere;"),
    ],
)
def test_redirect_messages(location: str, where: str) -> None:
    request = httpx.Request("POST", "http://127.0.0.1:8080/api/v1/auth/universal-auth/login")
    response = httpx.Response(302, headers={"location": location}, request=request)
    message = redirect_message(response, "login")
    assert where in message and "canary" not in message


def test_a_legacy_metadata_record_is_not_taken_for_secret_metadata() -> None:
    """Older servers carry a legacy `metadata` map beside (or instead of) `secretMetadata`."""
    from infisical_sync.infisical.models import SecretListing

    listing = SecretListing.model_validate(
        {
            "secrets": [
                {"secretKey": "OLD", "secretValue": "v", "metadata": {"team": "a"}},
                {"secretKey": "NULL", "secretValue": "v", "metadata": None},
                {
                    "secretKey": "NEW",
                    "secretValue": "v",
                    "metadata": {"team": "a"},
                    "secretMetadata": [{"key": "k", "value": "x"}],
                },
            ]
        }
    )
    found = {secret.key: secret.metadata for secret in listing.secrets}
    assert found["OLD"] is None and found["NULL"] is None  # no secretMetadata: ledger mode
    assert [entry.key for entry in found["NEW"] or []] == ["k"]


async def test_a_write_held_for_approval_raises_approval_required(
    fake: FakeInfisical, transport: InstanceTransport
) -> None:
    from infisical_sync.infisical.errors import ApprovalRequired

    fake.state.require_approval("p-1", "prod")
    fake.state.put_secret("p-1", "prod", "/", "OLD", "old")
    session = InfisicalSession(transport, credentials(), batch_max_keys=10)
    writes = [SecretWrite(key=f"K{i}", value=SecretStr(CANARY_VALUE)) for i in range(15)]
    with pytest.raises(ApprovalRequired) as held:
        await session.batch_create(LOCATION, writes)
    opened = fake.open_approvals()
    # Every chunk was sent (one round of approvals, not one per chunk), each opened a request.
    assert len(opened) == 2 and held.value.approval_ids == tuple(r.id for r in opened)
    assert held.value.reason == "ApprovalRequired" and not held.value.retryable
    assert all(r.id in str(held.value) for r in opened) and CANARY_VALUE not in str(held.value)
    assert fake.state.get_secrets("p-1", "prod") == {"OLD": "old"}  # nothing written
    fake.v4_enabled = False  # the same on a server without /api/v4
    with pytest.raises(ApprovalRequired) as deleted:
        await session.batch_delete(LOCATION, ["OLD"])
    assert deleted.value.approval_ids == (fake.open_approvals()[-1].id,)


@BOTH_GENERATIONS
async def test_a_slug_is_one_path_segment(fake: FakeInfisical, session: InfisicalSession) -> None:
    """A slug with `/` or `?` names no project: it neither reaches another route nor makes the
    client believe the instance lacks the slug route."""
    for slug in ("payments/../../v4/secrets", "payments?x=1"):
        with pytest.raises(NotFound):
            await session.project_id(project_id=None, project_slug=slug)
    assert await session.project_id(project_id=None, project_slug="payments") == "p-1"
    assert session.transport.project_slug_v1_supported is fake.server.project_slug_v1
