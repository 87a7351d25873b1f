"""The fake Infisical follows the reference: each behaviour pinned through real HTTP with httpx."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from infisical_sync.testing.fake_infisical import FakeInfisical, Fault, RateLimits
from infisical_sync.testing.fake_state import ProjectAccess

CLIENT_ID = "11111111-1111-4111-8111-111111111111"
CLIENT_SECRET = "canary-client-secret-7c1f"


@pytest.fixture
async def fake() -> AsyncIterator[FakeInfisical]:
    async with FakeInfisical() as server:
        project = server.state.add_project("payments", project_id="p-1")
        server.state.add_identity(CLIENT_ID, CLIENT_SECRET, projects={project.id: ProjectAccess()})
        yield server


@pytest.fixture
async def http(fake: FakeInfisical) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=fake.url, timeout=5) as client:
        yield client


async def login(http: httpx.AsyncClient, secret: str = CLIENT_SECRET) -> httpx.Response:
    return await http.post(
        "/api/v1/auth/universal-auth/login", json={"clientId": CLIENT_ID, "clientSecret": secret}
    )


async def token(http: httpx.AsyncClient) -> dict[str, str]:
    response = await login(http)
    assert response.status_code == 200
    return {"Authorization": f"Bearer {response.json()['accessToken']}"}


def envelope(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    assert set(body) >= {"reqId", "statusCode", "message", "error"}
    assert body["statusCode"] == response.status_code
    assert body["reqId"].startswith("req-") and len(body["reqId"]) == 18
    return body


LIST = {"projectId": "p-1", "environment": "prod", "secretPath": "/"}


def batch(secrets: list[dict[str, Any]], path: str = "/", **extra: Any) -> dict[str, Any]:
    return {
        "projectId": "p-1",
        "environment": "prod",
        "secretPath": path,
        "secrets": secrets,
        **extra,
    }


# --- auth -------------------------------------------------------------------------------------


async def test_login_shape(http: httpx.AsyncClient) -> None:
    body = (await login(http)).json()
    assert body["tokenType"] == "Bearer"
    assert body["expiresIn"] == 2592000 and body["accessTokenMaxTTL"] == 2592000
    assert body["accessToken"].count(".") == 2


async def test_login_wrong_secret_then_lockout(http: httpx.AsyncClient) -> None:
    for _ in range(3):
        response = await login(http, "wrong")
        assert response.status_code == 401
        assert envelope(response)["message"] == "Invalid credentials"
    locked = await login(http)  # even the right secret is refused now
    assert locked.status_code == 401
    assert "temporarily locked" in locked.json()["message"]


async def test_login_unknown_client_and_validation(http: httpx.AsyncClient) -> None:
    unknown = await http.post(
        "/api/v1/auth/universal-auth/login", json={"clientId": "nope", "clientSecret": "x"}
    )
    assert unknown.status_code == 401
    missing = await http.post("/api/v1/auth/universal-auth/login", json={})
    assert missing.status_code == 422
    body = envelope(missing)
    assert body["error"] == "ValidationFailure" and isinstance(body["message"], list)


async def test_client_secret_use_limit_and_ttl(
    fake: FakeInfisical, http: httpx.AsyncClient
) -> None:
    identity = fake.state.identities[CLIENT_ID]
    identity.num_uses_limit = 2
    assert (await login(http)).status_code == 200
    assert (await login(http)).status_code == 200
    third = await login(http)
    assert third.status_code == 401
    assert third.json()["message"] == "Access denied due to client secret usage limit reached"
    assert (await login(http)).json()["message"] == "Invalid credentials"  # revoked since

    identity.num_uses_limit, identity.num_uses, identity.secret_revoked = 0, 0, False
    identity.client_secret_ttl = 10
    fake.state.clock.advance(11)
    expired = await login(http)
    assert expired.json()["message"] == "Access denied due to expired client secret"


async def test_trusted_ips(fake: FakeInfisical, http: httpx.AsyncClient) -> None:
    fake.state.identities[CLIENT_ID].trusted_ips = ["10.0.0.0/8"]
    response = await login(http)
    assert response.status_code == 403
    assert "current IP address" in envelope(response)["message"]


async def test_bearer_rules(fake: FakeInfisical, http: httpx.AsyncClient) -> None:
    no_header = await http.get("/api/v4/secrets", params=LIST)
    assert (no_header.status_code, no_header.json()["message"]) == (401, "Token missing")
    malformed = await http.get(
        "/api/v4/secrets", params=LIST, headers={"Authorization": "Bearer x"}
    )
    assert (malformed.status_code, malformed.json()["error"]) == (403, "TokenError")

    headers = await token(http)
    raw = headers["Authorization"].split()[1]
    assert (await http.get("/api/v4/secrets", params=LIST, headers=headers)).status_code == 200
    revoke = await http.post("/api/v1/auth/token/revoke", json={"accessToken": raw})
    assert revoke.json() == {"message": "Successfully revoked access token"}
    revoked = await http.get("/api/v4/secrets", params=LIST, headers=headers)
    assert (revoked.status_code, revoked.json()["message"]) == (
        401,
        "No identity access token found",
    )


async def test_token_ttl_renew_and_max_ttl(fake: FakeInfisical, http: httpx.AsyncClient) -> None:
    identity = fake.state.identities[CLIENT_ID]
    identity.access_token_ttl, identity.access_token_max_ttl = 100, 250
    headers = await token(http)
    raw = headers["Authorization"].split()[1]
    fake.state.clock.advance(90)
    renewed = await http.post("/api/v1/auth/token/renew", json={"accessToken": raw})
    assert renewed.status_code == 200 and renewed.json()["expiresIn"] == 100
    fake.state.clock.advance(90)  # 180 s old, renewed at 90: still valid
    assert (await http.get("/api/v4/secrets", params=LIST, headers=headers)).status_code == 200
    refused = await http.post("/api/v1/auth/token/renew", json={"accessToken": raw})
    assert refused.status_code == 401 and "Max TTL" in refused.json()["message"]
    # A refused renewal deletes the token (both generations): it no longer authenticates.
    deleted = await http.get("/api/v4/secrets", params=LIST, headers=headers)
    assert deleted.status_code == 401
    assert deleted.json()["message"] == "No identity access token found"
    headers = await token(http)
    fake.state.clock.advance(260)  # past the max TTL: the JWT itself has expired
    expired = await http.get("/api/v4/secrets", params=LIST, headers=headers)
    assert expired.status_code == 403
    assert envelope(expired)["error"] == "TokenError"
    assert expired.json()["message"] == "Your token has expired. Please re-authenticate."


async def test_token_ttl_expiry_without_renewal(
    fake: FakeInfisical, http: httpx.AsyncClient
) -> None:
    fake.state.identities[CLIENT_ID].access_token_ttl = 60
    headers = await token(http)
    fake.state.clock.advance(61)
    response = await http.get("/api/v4/secrets", params=LIST, headers=headers)
    assert response.status_code == 401


# --- projects, folders, permissions -----------------------------------------------------------


async def test_projects_by_slug_and_id(http: httpx.AsyncClient) -> None:
    headers = await token(http)
    by_slug = await http.get("/api/v1/projects/slug/payments", headers=headers)
    assert by_slug.json()["id"] == "p-1"  # unwrapped
    assert {e["slug"] for e in by_slug.json()["environments"]} == {"dev", "staging", "prod"}
    by_id = await http.get("/api/v1/projects/p-1", headers=headers)
    assert by_id.json()["project"]["slug"] == "payments"
    listed = await http.get("/api/v1/projects", params={"type": "secret-manager"}, headers=headers)
    assert [p["id"] for p in listed.json()["projects"]] == ["p-1"]


async def test_not_a_member(fake: FakeInfisical, http: httpx.AsyncClient) -> None:
    fake.state.add_project("other", project_id="p-2")
    headers = await token(http)
    response = await http.get(
        "/api/v4/secrets", params={**LIST, "projectId": "p-2"}, headers=headers
    )
    assert response.status_code == 403
    body = envelope(response)
    assert body["message"] == "You are not allowed to access this resource"
    assert "not a member" in body["error"]


async def test_environment_permission(fake: FakeInfisical, http: httpx.AsyncClient) -> None:
    fake.state.grant(CLIENT_ID, "p-1", environments=["dev"], write=False)
    headers = await token(http)
    denied = await http.get("/api/v4/secrets", params=LIST, headers=headers)
    assert (denied.status_code, denied.json()["error"]) == (403, "PermissionDenied")
    assert denied.json()["details"][0]["subject"] == "secrets"
    dev = await http.get("/api/v4/secrets", params={**LIST, "environment": "dev"}, headers=headers)
    assert dev.status_code == 200
    write = await http.post(
        "/api/v4/secrets/batch",
        json={**batch([{"secretKey": "A", "secretValue": "1"}]), "environment": "dev"},
        headers=headers,
    )
    assert write.status_code == 403


async def test_folders_mkdir_p_and_existing_leaf(
    fake: FakeInfisical, http: httpx.AsyncClient
) -> None:
    headers = await token(http)
    body = {"projectId": "p-1", "environment": "prod", "path": "/apps/payments", "name": "api"}
    created = await http.post("/api/v2/folders", json=body, headers=headers)
    assert created.status_code == 200
    assert created.json()["folder"]["path"] == "/apps/payments/api"
    env = fake.state.projects["p-1"].environments["prod"]
    assert {"/apps", "/apps/payments", "/apps/payments/api"} <= set(env.folders)
    again = await http.post("/api/v2/folders", json=body, headers=headers)
    assert again.status_code == 400 and "already exists" in again.json()["message"]
    bad = await http.post("/api/v2/folders", json={**body, "name": "a b"}, headers=headers)
    assert bad.status_code == 422
    listing = await http.get(
        "/api/v2/folders",
        params={"projectId": "p-1", "environment": "prod", "path": "/apps"},
        headers=headers,
    )
    assert [f["name"] for f in listing.json()["folders"]] == ["payments"]
    no_env = await http.post("/api/v2/folders", json={**body, "environment": "qa"}, headers=headers)
    assert no_env.status_code == 404


# --- secrets ----------------------------------------------------------------------------------


async def test_list_shapes_and_missing_path(fake: FakeInfisical, http: httpx.AsyncClient) -> None:
    fake.state.put_secret(
        "p-1", "prod", "/", "DB_PASSWORD", "hunter2", [{"key": "k", "value": "v"}]
    )
    headers = await token(http)
    for path, params in (
        ("/api/v4/secrets", LIST),
        ("/api/v3/secrets/raw", {"workspaceId": "p-1", "environment": "prod", "secretPath": "/"}),
        ("/api/v3/secrets/raw", {"workspaceSlug": "payments", "environment": "prod"}),
    ):
        body = (await http.get(path, params=params, headers=headers)).json()
        assert body["imports"] == []
        (secret,) = body["secrets"]
        assert secret["secretKey"] == "DB_PASSWORD" and secret["secretValue"] == "hunter2"
        assert secret["_id"] == secret["id"] and secret["workspace"] == "p-1"
        assert secret["secretValueHidden"] is False and secret["type"] == "shared"
        assert secret["secretMetadata"] == [{"key": "k", "value": "v", "isEncrypted": False}]
    missing = await http.get(
        "/api/v4/secrets", params={**LIST, "secretPath": "/nope"}, headers=headers
    )
    assert missing.status_code == 404
    assert envelope(missing)["error"] == "SecretPathNotFound"
    assert (
        "Folder with path '/nope' in environment 'prod' was not found" in missing.json()["message"]
    )


async def test_list_boolean_literals(http: httpx.AsyncClient) -> None:
    headers = await token(http)
    response = await http.get("/api/v4/secrets", params={**LIST, "recursive": "1"}, headers=headers)
    assert response.status_code == 422


async def test_list_recursive_and_imports(fake: FakeInfisical, http: httpx.AsyncClient) -> None:
    fake.state.put_secret("p-1", "prod", "/", "ROOT", "r")
    fake.state.put_secret("p-1", "prod", "/a/b", "DEEP", "d")
    fake.state.put_secret("p-1", "dev", "/shared", "SHARED", "s")
    fake.state.projects["p-1"].environments["prod"].imports["/"] = [("dev", "/shared")]
    headers = await token(http)
    flat = (await http.get("/api/v4/secrets", params=LIST, headers=headers)).json()
    assert [s["secretKey"] for s in flat["secrets"]] == ["ROOT"]
    deep = (
        await http.get("/api/v4/secrets", params={**LIST, "recursive": "true"}, headers=headers)
    ).json()
    assert {(s["secretKey"], s["secretPath"]) for s in deep["secrets"]} == {
        ("ROOT", "/"),
        ("DEEP", "/a/b"),
    }
    imported = (
        await http.get(
            "/api/v4/secrets", params={**LIST, "include_imports": "true"}, headers=headers
        )
    ).json()
    assert imported["imports"][0]["environment"] == "dev"
    assert imported["imports"][0]["secrets"][0]["secretKey"] == "SHARED"


async def test_etag_and_if_none_match(fake: FakeInfisical, http: httpx.AsyncClient) -> None:
    headers = await token(http)
    first = await http.get("/api/v4/secrets", params=LIST, headers=headers)
    etag = first.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"')
    same = await http.get(
        "/api/v4/secrets", params=LIST, headers={**headers, "If-None-Match": etag}
    )
    assert same.status_code == 304 and same.content == b""
    weak = await http.get(
        "/api/v4/secrets", params=LIST, headers={**headers, "If-None-Match": "W/" + etag}
    )
    assert weak.status_code == 200  # exact match only
    fake.state.put_secret("p-1", "prod", "/", "NEW", "v")
    changed = await http.get(
        "/api/v4/secrets", params=LIST, headers={**headers, "If-None-Match": etag}
    )
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    fake.etag_enabled = False
    old = await http.get("/api/v4/secrets", params=LIST, headers=headers)
    assert "etag" not in old.headers


async def test_v4_switch_off_mimics_old_servers(
    fake: FakeInfisical, http: httpx.AsyncClient
) -> None:
    fake.v4_enabled = False
    headers = await token(http)
    response = await http.get("/api/v4/secrets", params=LIST, headers=headers)
    assert response.status_code == 404
    assert response.json()["message"] == "Route GET:/api/v4/secrets not found"
    v3 = await http.get(
        "/api/v3/secrets/raw", params={"workspaceId": "p-1", "environment": "prod"}, headers=headers
    )
    assert v3.status_code == 200


async def test_single_secret_crud(fake: FakeInfisical, http: httpx.AsyncClient) -> None:
    headers = await token(http)
    ids = {"projectId": "p-1", "environment": "prod", "secretPath": "/"}
    created = await http.post(
        "/api/v4/secrets/API_KEY", json={**ids, "secretValue": "  a  "}, headers=headers
    )
    assert created.json()["secret"]["secretValue"] == "a"
    dup = await http.post(
        "/api/v4/secrets/API_KEY", json={**ids, "secretValue": "b"}, headers=headers
    )
    assert (dup.status_code, dup.json()["message"]) == (400, "Secret already exists")
    got = await http.get("/api/v4/secrets/API_KEY", params=ids, headers=headers)
    assert got.json()["secret"]["secretValue"] == "a"
    updated = await http.patch(
        "/api/v4/secrets/API_KEY", json={**ids, "secretValue": "c"}, headers=headers
    )
    assert updated.json()["secret"]["version"] == 2
    missing = await http.patch(
        "/api/v4/secrets/NOPE", json={**ids, "secretValue": "c"}, headers=headers
    )
    assert (missing.status_code, missing.json()["message"]) == (
        404,
        "Secret with name NOPE not found",
    )
    deleted = await http.request("DELETE", "/api/v4/secrets/API_KEY", json=ids, headers=headers)
    assert deleted.status_code == 200
    gone = await http.request("DELETE", "/api/v4/secrets/API_KEY", json=ids, headers=headers)
    assert (gone.status_code, gone.json()["message"]) == (404, "Secret not found")
    no_folder = await http.post(
        "/api/v4/secrets/K", json={**ids, "secretPath": "/x", "secretValue": "v"}, headers=headers
    )
    assert no_folder.status_code == 404 and no_folder.json()["error"] == "CreateSecret"
    personal = await http.post(
        "/api/v4/secrets/P", json={**ids, "secretValue": "v", "type": "personal"}, headers=headers
    )
    assert personal.status_code == 400


async def test_batch_create_is_all_or_nothing(fake: FakeInfisical, http: httpx.AsyncClient) -> None:
    fake.state.put_secret("p-1", "prod", "/", "B", "old")
    headers = await token(http)
    response = await http.post(
        "/api/v4/secrets/batch",
        json=batch(
            [{"secretKey": "A", "secretValue": "1"}, {"secretKey": "B", "secretValue": "2"}]
        ),
        headers=headers,
    )
    assert (response.status_code, response.json()["message"]) == (400, "Secret already exists: B")
    assert fake.state.get_secrets("p-1", "prod") == {"B": "old"}
    ok = await http.post(
        "/api/v3/secrets/batch/raw",
        json={
            "workspaceId": "p-1",
            "environment": "prod",
            "secrets": [{"secretKey": "A", "secretValue": "1"}],
        },
        headers=headers,
    )
    assert ok.status_code == 200 and fake.state.get_secrets("p-1", "prod") == {"A": "1", "B": "old"}
    empty = await http.post("/api/v4/secrets/batch", json=batch([]), headers=headers)
    assert empty.status_code == 422
    no_folder = await http.post(
        "/api/v4/secrets/batch",
        json=batch([{"secretKey": "Z", "secretValue": "1"}], "/missing"),
        headers=headers,
    )
    assert (no_folder.status_code, no_folder.json()["error"]) == (404, "CreateManySecret")


async def test_batch_update_modes(fake: FakeInfisical, http: httpx.AsyncClient) -> None:
    fake.state.put_secret("p-1", "prod", "/", "A", "1")
    headers = await token(http)
    items = [{"secretKey": "A", "secretValue": "2"}, {"secretKey": "B", "secretValue": "3"}]
    fail = await http.patch("/api/v4/secrets/batch", json=batch(items), headers=headers)
    assert (fail.status_code, fail.json()["message"]) == (404, "Secret does not exist: B in path /")
    assert fake.state.get_secrets("p-1", "prod") == {"A": "1"}  # nothing applied
    ignore = await http.patch(
        "/api/v4/secrets/batch", json=batch(items, mode="ignore"), headers=headers
    )
    assert ignore.status_code == 200 and fake.state.get_secrets("p-1", "prod") == {"A": "2"}
    upsert = await http.patch(
        "/api/v4/secrets/batch", json=batch(items, mode="upsert"), headers=headers
    )
    assert upsert.status_code == 200
    assert fake.state.get_secrets("p-1", "prod") == {"A": "2", "B": "3"}
    created = next(s for s in upsert.json()["secrets"] if s["secretKey"] == "B")
    assert created["version"] == 1


async def test_batch_delete_reports_found_keys(
    fake: FakeInfisical, http: httpx.AsyncClient
) -> None:
    fake.state.put_secret("p-1", "prod", "/", "A", "1")
    headers = await token(http)
    response = await http.request(
        "DELETE",
        "/api/v4/secrets/batch",
        json=batch([{"secretKey": "A"}, {"secretKey": "B"}]),
        headers=headers,
    )
    assert (response.status_code, response.json()["message"]) == (
        404,
        "One or more secrets does not exist: A",
    )
    assert fake.state.get_secrets("p-1", "prod") == {"A": "1"}
    ok = await http.request(
        "DELETE", "/api/v4/secrets/batch", json=batch([{"secretKey": "A"}]), headers=headers
    )
    assert ok.status_code == 200 and fake.state.get_secrets("p-1", "prod") == {}


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("  padded  ", "padded"),
        ("line\n", "line\n"),
        ("  both \n\n", "both\n"),
        ("\tx\t", "x"),
        ("", ""),
    ],
)
async def test_values_are_trimmed_on_write(
    fake: FakeInfisical, http: httpx.AsyncClient, raw: str, stored: str
) -> None:
    headers = await token(http)
    await http.post(
        "/api/v4/secrets/batch",
        json=batch([{"secretKey": "V", "secretValue": raw}]),
        headers=headers,
    )
    assert fake.state.get_secrets("p-1", "prod") == {"V": stored}


async def test_key_rules(fake: FakeInfisical, http: httpx.AsyncClient) -> None:
    headers = await token(http)
    for key in ("a:b", "a/b"):
        response = await http.post(
            "/api/v4/secrets/batch",
            json=batch([{"secretKey": key, "secretValue": "v"}]),
            headers=headers,
        )
        assert response.status_code == 422
        assert (
            response.json()["message"][0]["message"]
            == "Secret name cannot contain colon or forward slash."
        )
    too_long = await http.post(
        "/api/v4/secrets/batch",
        json=batch([{"secretKey": "K" * 501, "secretValue": "v"}]),
        headers=headers,
    )
    assert too_long.status_code == 500
    longest = await http.post(
        "/api/v4/secrets/batch",
        json=batch([{"secretKey": "K" * 500, "secretValue": "v"}]),
        headers=headers,
    )
    assert longest.status_code == 200


async def test_metadata_toggle(fake: FakeInfisical, http: httpx.AsyncClient) -> None:
    fake.metadata_supported = False
    headers = await token(http)
    await http.post(
        "/api/v4/secrets/batch",
        json=batch(
            [{"secretKey": "M", "secretValue": "v", "secretMetadata": [{"key": "a", "value": "b"}]}]
        ),
        headers=headers,
    )
    (secret,) = (await http.get("/api/v4/secrets", params=LIST, headers=headers)).json()["secrets"]
    assert "secretMetadata" not in secret


# --- rate limits, faults, TLS, bookkeeping ---------------------------------------------------


async def test_rate_limit_per_bucket(fake: FakeInfisical, http: httpx.AsyncClient) -> None:
    headers = await token(http)
    fake.rate_limits = RateLimits(enabled=True, read=100, write=100, secrets=2)
    for _ in range(2):
        assert (await http.get("/api/v4/secrets", params=LIST, headers=headers)).status_code == 200
    limited = await http.get("/api/v4/secrets", params=LIST, headers=headers)
    assert limited.status_code == 429
    body = envelope(limited)
    assert body["error"] == "RateLimitExceeded"
    seconds = int(limited.headers["retry-after"])
    assert 1 <= seconds <= 60
    assert body["message"] == f"Rate limit exceeded. Please try again in {seconds} seconds"
    # Another bucket is unaffected; the window resets after 60 s.
    assert (await http.get("/api/v1/projects/p-1", headers=headers)).status_code == 200
    fake.state.clock.advance(61)
    assert (await http.get("/api/v4/secrets", params=LIST, headers=headers)).status_code == 200


async def test_faults(fake: FakeInfisical, http: httpx.AsyncClient) -> None:
    headers = await token(http)
    fake.inject(Fault("status", r"/api/v4/secrets$", status=503, times=2))
    statuses = [
        (await http.get("/api/v4/secrets", params=LIST, headers=headers)).status_code
        for _ in range(3)
    ]
    assert statuses == [503, 503, 200]

    fake.inject(Fault("reset", r"/api/v4/secrets$", times=1))
    with pytest.raises(httpx.TransportError):
        await http.get("/api/v4/secrets", params=LIST, headers=headers)

    fake.inject(Fault("hang", r"/api/v4/secrets$", times=1, delay=30))
    with pytest.raises(httpx.ReadTimeout):
        await http.get("/api/v4/secrets", params=LIST, headers=headers, timeout=0.3)

    fake.inject(Fault("latency", r"/api/v4/secrets$", times=1, delay=0.2))
    started = asyncio.get_running_loop().time()
    assert (await http.get("/api/v4/secrets", params=LIST, headers=headers)).status_code == 200
    assert asyncio.get_running_loop().time() - started >= 0.2
    assert not fake.faults


async def test_route_missing_error_name_and_redirect_faults(
    fake: FakeInfisical, http: httpx.AsyncClient
) -> None:
    headers = await token(http)
    fake.inject(Fault("missing", r"^/api/v1/projects$", times=1))
    missing = await http.get("/api/v1/projects", headers=headers)
    assert missing.status_code == 404
    assert missing.json()["message"] == "Route GET:/api/v1/projects not found"
    fake.inject(Fault("status", r"^/api/v1/projects$", status=403, error="Forbidden", times=1))
    assert envelope(await http.get("/api/v1/projects", headers=headers))["error"] == "Forbidden"
    fake.inject(Fault("status", r"^/api/v4/secrets$", status=301, times=1))
    moved = await http.get("/api/v4/secrets", params=LIST, headers=headers)
    assert moved.status_code == 301
    assert moved.headers["location"].startswith("https://infisical.example.com/api/v4/secrets?")
    assert fake.log[-1].status == 301


async def test_a_counted_fault_fires_exactly_times_under_concurrent_requests(
    fake: FakeInfisical, http: httpx.AsyncClient
) -> None:
    """Requests that matched an earlier fault (and waited on it) while a later counted fault ran
    out must not fire it again, nor fail removing it twice."""
    headers = await token(http)
    fake.inject(Fault("latency", r"/api/v4/secrets$", delay=0.2))  # every request waits here
    fake.inject(Fault("status", r"/api/v4/secrets$", status=503, times=2))
    responses = await asyncio.gather(
        *(http.get("/api/v4/secrets", params=LIST, headers=headers) for _ in range(6))
    )
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200, 200, 200, 200, 503, 503]
    assert [f.kind for f in fake.faults] == ["latency"]


async def test_request_log_and_counters(fake: FakeInfisical, http: httpx.AsyncClient) -> None:
    headers = await token(http)
    await http.get("/api/v4/secrets", params=LIST, headers=headers)
    await http.get("/api/v4/secrets", params={**LIST, "secretPath": "/x"}, headers=headers)
    assert fake.count(r"/api/v4/secrets$", "GET") == 2
    assert fake.count(r"/api/v4/secrets$", status=404) == 1
    assert fake.counters[("POST", "/api/v1/auth/universal-auth/login", 200)] == 1
    assert fake.log[-1].query["secretPath"] == "/x"


async def test_request_log_tells_what_arrived_inside_a_retry_after_window(
    fake: FakeInfisical, http: httpx.AsyncClient
) -> None:
    headers = await token(http)
    fake.inject(Fault("status", r"/api/v4/secrets$", status=429, retry_after=30, times=1))
    assert (await http.get("/api/v4/secrets", params=LIST, headers=headers)).status_code == 429
    limited = fake.log[-1]
    assert limited.retry_after == 30 and limited.started_at <= limited.at
    assert fake.sent_while_rate_limited() == []
    await http.get("/api/v4/secrets", params=LIST, headers={**headers, "If-None-Match": '"x"'})
    assert fake.sent_while_rate_limited() == [fake.log[-1]]
    assert fake.log[-1].if_none_match == '"x"'
    assert fake.sent_while_rate_limited(margin=60) == []  # margin: arrived right after the 429


async def test_tls_with_generated_ca() -> None:
    async with FakeInfisical(tls=True) as server:
        assert server.url.startswith("https://")
        trust = ssl.create_default_context(cafile=str(server.ca_file()))
        async with httpx.AsyncClient(verify=trust) as client:
            assert (await client.get(f"{server.url}/api/status")).status_code == 200
        async with httpx.AsyncClient() as untrusting:
            with pytest.raises(httpx.ConnectError):
                await untrusting.get(f"{server.url}/api/status")


# --- change-approval policies -----------------------------------------------------------------

APPROVAL_FIELDS = {"id", "slug", "policyId", "status", "hasMerged", "folderId", "createdAt"}


async def test_approval_policy_holds_batch_writes_until_merged(
    fake: FakeInfisical, http: httpx.AsyncClient
) -> None:
    fake.state.require_approval("p-1", "prod")
    fake.state.put_secret("p-1", "prod", "/", "OLD", "old")
    fake.state.put_secret("p-1", "prod", "/", "GONE", "bye")
    headers = await token(http)
    root_id = fake.state.projects["p-1"].environments["prod"].folder_ids["/"]

    created = await http.post(
        "/api/v4/secrets/batch",
        json=batch([{"secretKey": "NEW", "secretValue": "  new  "}]),
        headers=headers,
    )
    assert created.status_code == 200 and "secrets" not in created.json()
    approval = created.json()["approval"]
    assert set(approval) >= APPROVAL_FIELDS
    assert approval["status"] == "open" and approval["hasMerged"] is False
    assert approval["folderId"] == root_id and len(approval["slug"]) == 10
    assert "secretValue" not in str(approval) and "new" not in str(approval).lower()
    updated = await http.patch(
        "/api/v3/secrets/batch/raw",
        json={**batch([{"secretKey": "OLD", "secretValue": "changed"}]), "workspaceId": "p-1"},
        headers=headers,
    )
    deleted = await http.request(
        "DELETE", "/api/v4/secrets/batch", json=batch([{"secretKey": "GONE"}]), headers=headers
    )
    assert "approval" in updated.json() and "approval" in deleted.json()
    assert fake.state.get_secrets("p-1", "prod") == {"OLD": "old", "GONE": "bye"}  # unwritten
    assert [r.keys for r in fake.open_approvals()] == [["NEW"], ["OLD"], ["GONE"]]
    # The checks of a normal write still come first: no request for a refused write.
    exists = await http.post(
        "/api/v4/secrets/batch",
        json=batch([{"secretKey": "OLD", "secretValue": "x"}]),
        headers=headers,
    )
    assert exists.status_code == 400 and len(fake.open_approvals()) == 3
    # Other environments are not covered by the policy.
    dev = await http.post(
        "/api/v4/secrets/batch",
        json={**batch([{"secretKey": "D", "secretValue": "d"}]), "environment": "dev"},
        headers=headers,
    )
    assert "secrets" in dev.json() and fake.state.get_secrets("p-1", "dev") == {"D": "d"}

    for request in fake.open_approvals():
        merged = fake.merge_approval(request.id)
        assert (merged.status, merged.has_merged) == ("close", True)
    assert fake.state.get_secrets("p-1", "prod") == {"OLD": "changed", "NEW": "new"}
    assert fake.open_approvals() == []
    with pytest.raises(ValueError):
        fake.merge_approval(approval["id"])


async def test_approval_policy_holds_single_writes_and_a_closed_request_writes_nothing(
    fake: FakeInfisical, http: httpx.AsyncClient
) -> None:
    fake.state.require_approval("p-1", "prod")
    fake.state.put_secret("p-1", "prod", "/", "KEEP", "k")
    headers = await token(http)
    ids = {"projectId": "p-1", "environment": "prod", "secretPath": "/"}
    answers = [
        await http.post("/api/v4/secrets/A", json={**ids, "secretValue": "a"}, headers=headers),
        await http.patch("/api/v4/secrets/KEEP", json={**ids, "secretValue": "x"}, headers=headers),
        await http.request("DELETE", "/api/v4/secrets/KEEP", json=ids, headers=headers),
    ]
    assert [set(a.json()) for a in answers] == [{"approval"}] * 3
    assert [r.keys for r in fake.open_approvals()] == [["A"], ["KEEP"], ["KEEP"]]
    missing = await http.request("DELETE", "/api/v4/secrets/NOPE", json=ids, headers=headers)
    assert missing.status_code == 404
    for request in fake.open_approvals():
        fake.close_approval(request.id)
    assert fake.state.get_secrets("p-1", "prod") == {"KEEP": "k"}
    assert fake.open_approvals() == []


def test_approval_environments_from_the_seed_file() -> None:
    from infisical_sync.testing.fake_state import FakeState
    from infisical_sync.testing.seed import load_seed

    state = FakeState()
    load_seed(
        state,
        {"projects": [{"slug": "payments", "id": "p-9", "approvalEnvironments": ["prod"]}]},
    )
    assert state.approval_policy("p-9", "prod") is not None
    assert state.approval_policy("p-9", "dev") is None
