"""The fake Infisical follows the reference: each behaviour pinned through real HTTP with httpx."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from infisical_sync.testing.fake_infisical import FakeInfisical, Fault, RateLimits
from infisical_sync.testing.fake_profiles import (
    CURRENT,
    GEN_2024,
    PROFILES,
    ServerProfile,
    profile_named,
)
from infisical_sync.testing.fake_state import ProjectAccess
from infisical_sync.testing.seed import fake_from_seed

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
    # Fastify names the request's URL as sent, query included
    url = response.request.url.raw_path.decode()
    assert "?projectId=p-1&" in url
    assert response.json()["message"] == f"Route GET:{url} not found"
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


async def test_a_body_over_fastifys_limit_is_refused_with_413(
    fake: FakeInfisical, http: httpx.AsyncClient
) -> None:
    headers = await token(http)

    def body_of(size: int) -> bytes:
        start = json.dumps(batch([{"secretKey": "A", "secretValue": ""}]))
        value = "x" * (size - len(start))
        padded = start.replace('"secretValue": ""', f'"secretValue": "{value}"')
        assert len(padded) == size
        return padded.encode()

    assert fake.body_limit == 1024 * 1024  # Fastify's default; Infisical sets none
    at_limit = await http.post(
        "/api/v4/secrets/batch",
        content=body_of(fake.body_limit),
        headers={**headers, "Content-Type": "application/json"},
    )
    assert at_limit.status_code == 200
    over = await http.post(
        "/api/v4/secrets/batch",
        content=body_of(fake.body_limit + 1),
        headers={**headers, "Content-Type": "application/json"},
    )
    assert over.status_code == 413
    assert over.json() == {
        "statusCode": 413,
        "code": "FST_ERR_CTP_BODY_TOO_LARGE",
        "error": "Payload Too Large",
        "message": "Request body is too large",
    }

    async def streamed() -> AsyncIterator[bytes]:
        yield body_of(fake.body_limit + 1)

    unsized = await http.post(  # no Content-Length: the body is counted as it arrives
        "/api/v4/secrets/batch",
        content=streamed(),
        headers={**headers, "Content-Type": "application/json"},
    )
    assert unsized.status_code == 413 and unsized.json()["code"] == "FST_ERR_CTP_BODY_TOO_LARGE"
    assert [record.status for record in fake.log[-3:]] == [200, 413, 413]
    assert fake.log[-2].body_bytes == fake.body_limit + 1


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


# --- secret references (expandSecretReferences), on every profile ------------------------------

V3_LIST = {"workspaceId": "p-1", "environment": "prod", "secretPath": "/"}


def on_profile(fake: FakeInfisical, name: str) -> None:
    fake.profile = profile_named(name)


async def listed(
    http: httpx.AsyncClient, headers: dict[str, str], expand: bool, **query: str
) -> dict[str, str]:
    """Values of a v3 list (a route every profile serves), own secrets then imported ones."""
    params = {**V3_LIST, "expandSecretReferences": "true" if expand else "false", **query}
    response = await http.get("/api/v3/secrets/raw", params=params, headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    values = {s["secretKey"]: s["secretValue"] for s in body["secrets"]}
    for imported in body["imports"]:
        values.update({f"import:{s['secretKey']}": s["secretValue"] for s in imported["secrets"]})
    return values


@pytest.mark.parametrize("profile", sorted(PROFILES))
async def test_references_expand_in_list_and_get_only_when_asked(
    fake: FakeInfisical, http: httpx.AsyncClient, profile: str
) -> None:
    on_profile(fake, profile)
    put = fake.state.put_secret
    put("p-1", "prod", "/", "USER", "app")
    put("p-1", "prod", "/", "URL", "postgres://${USER}@${prod.apps.payments.DB_HOST}:5432")
    put("p-1", "prod", "/apps/payments", "DB_HOST", "db.internal")
    put("p-1", "prod", "/", "TOKEN", "${dev.TOKEN}-${not a reference}")
    put("p-1", "dev", "/", "TOKEN", "t0k")
    headers = await token(http)
    expanded = await listed(http, headers, expand=True)
    assert expanded["URL"] == "postgres://app@db.internal:5432"
    assert expanded["TOKEN"] == "t0k-${not a reference}"
    raw = await listed(http, headers, expand=False)
    assert raw["URL"] == "postgres://${USER}@${prod.apps.payments.DB_HOST}:5432"
    single = {"workspaceId": "p-1", "environment": "prod", "secretPath": "/"}
    got = await http.get(
        "/api/v3/secrets/raw/URL",
        params={**single, "expandSecretReferences": "true"},
        headers=headers,
    )
    assert got.json()["secret"]["secretValue"] == "postgres://app@db.internal:5432"
    got_raw = await http.get("/api/v3/secrets/raw/URL", params=single, headers=headers)
    assert got_raw.json()["secret"]["secretValue"].startswith("postgres://${USER}")


@pytest.mark.parametrize("profile", sorted(PROFILES))
async def test_references_nest_where_the_referenced_secret_lives_up_to_the_depth_limit(
    fake: FakeInfisical, http: httpx.AsyncClient, profile: str
) -> None:
    on_profile(fake, profile)
    put = fake.state.put_secret
    # A nested ${KEY} is read in the referenced secret's own environment and folder.
    put("p-1", "prod", "/", "OUTER", "[${dev.shared.INNER}]")
    put("p-1", "dev", "/shared", "INNER", "${LEAF}")
    put("p-1", "dev", "/shared", "LEAF", "leaf")
    put("p-1", "prod", "/", "LEAF", "wrong folder")
    # A chain: 121 hops resolve (11 levels per pass, 11 passes), the 122nd stays literal.
    for hop in range(130):
        put("p-1", "prod", "/", f"C{hop}", f"${{C{hop + 1}}}")
    put("p-1", "prod", "/", "C130", "end")
    put("p-1", "prod", "/", "A", "${B}")
    put("p-1", "prod", "/", "B", "${A}")
    values = await listed(http, await token(http), expand=True)
    assert values["OUTER"] == "[leaf]"
    assert values["C0"] == "${C122}"
    assert values["C8"] == "${C130}"
    assert values["C9"] == "end"
    assert (values["A"], values["B"]) == ("${B}", "${A}")  # a cycle stops


@pytest.mark.parametrize("profile", sorted(PROFILES))
async def test_a_missing_reference_stays_literal_an_empty_one_is_empty(
    fake: FakeInfisical, http: httpx.AsyncClient, profile: str
) -> None:
    on_profile(fake, profile)
    put = fake.state.put_secret
    put("p-1", "prod", "/", "EMPTY", "")
    put("p-1", "prod", "/", "V", "a${EMPTY}b ${NOPE} ${prod.no.such.KEY} ${qa.KEY}")
    multiline = put("p-1", "prod", "/", "PEM", "${dev.PEM}")
    multiline.skip_multiline_encoding = True
    put("p-1", "dev", "/", "PEM", "line1\nline2")
    values = await listed(http, await token(http), expand=True)
    assert values["V"] == "ab ${NOPE} ${prod.no.such.KEY} ${qa.KEY}"
    assert values["PEM"] == '"line1\\nline2"'  # formatMultiValueEnv


@pytest.mark.parametrize("profile", sorted(PROFILES))
async def test_a_reference_the_identity_may_not_read_is_403(
    fake: FakeInfisical, http: httpx.AsyncClient, profile: str
) -> None:
    on_profile(fake, profile)
    fake.state.grant(CLIENT_ID, "p-1", environments=["prod"])
    fake.state.put_secret("p-1", "prod", "/", "K", "${dev.apps.SECRET}")
    fake.state.put_secret("p-1", "dev", "/apps", "SECRET", "s")
    headers = await token(http)
    params = {**V3_LIST, "expandSecretReferences": "true"}
    response = await http.get("/api/v3/secrets/raw", params=params, headers=headers)
    assert response.status_code == 403
    body = response.json()
    assert body["error"] == "ForbiddenError"
    assert body["message"] == "Failed to expand one or more secret references"
    assert body["details"] == [
        "You do not have permission to read secret 'SECRET' in environment 'dev' at path "
        "'/apps', which is referenced by secret 'K' in environment 'prod' at path '/'."
    ]
    got = await http.get("/api/v3/secrets/raw/K", params=params, headers=headers)
    assert got.status_code == 403 and "details" not in got.json()
    assert got.json()["message"].startswith("You do not have permission to read secret 'SECRET'")
    assert (await listed(http, headers, expand=False))["K"] == "${dev.apps.SECRET}"


@pytest.mark.parametrize("profile", sorted(PROFILES))
async def test_imported_secrets_expand_where_they_live_on_every_list(
    fake: FakeInfisical, http: httpx.AsyncClient, profile: str
) -> None:
    on_profile(fake, profile)
    fake.state.grant(CLIENT_ID, "p-1", environments=["prod", "dev"])
    put = fake.state.put_secret
    put("p-1", "dev", "/shared", "HOST", "h")
    put("p-1", "dev", "/shared", "URL", "https://${HOST}")
    put("p-1", "dev", "/shared", "HIDDEN", "${staging.X}")  # staging: not readable
    put("p-1", "staging", "/", "X", "x")
    put("p-1", "prod", "/", "OWN", "${HOST}")  # prod has no HOST: stays literal
    fake.state.projects["p-1"].environments["prod"].imports["/"] = [("dev", "/shared")]
    headers = await token(http)
    for expand in (True, False):
        values = await listed(http, headers, expand, include_imports="true")
        assert values["import:URL"] == "https://h"  # the list expands imports regardless
        assert values["import:HIDDEN"] == "${staging.X}"  # a refusal there is swallowed
        assert values["OWN"] == "${HOST}"


# --- server generations (reference §8): issue 9's table, one test per row, per profile --------
#
# Each test is parametrized over the profiles with that profile's own expected answer, written
# out here rather than read from the profile table (the table is what is under test).

# Whether error bodies carry `reqId`, per generation.
REQUEST_IDS = {"current": True, "2024": False}
DEV_V3_LIST = {"workspaceId": "p-1", "environment": "dev", "secretPath": "/"}


@asynccontextmanager
async def generation(profile: str) -> AsyncIterator[tuple[FakeInfisical, httpx.AsyncClient]]:
    async with FakeInfisical(profile=profile) as server:
        project = server.state.add_project("payments", project_id="p-1", environments=["dev"])
        server.state.add_identity(CLIENT_ID, CLIENT_SECRET, projects={project.id: ProjectAccess()})
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
            client.headers.update(await token(client))
            yield server, client


def error_of(profile: str, response: httpx.Response) -> tuple[int, dict[str, Any]]:
    """Status and error body, `reqId` checked against the generation and then left out."""
    body: dict[str, Any] = response.json()
    request_id = body.pop("reqId", None)
    if REQUEST_IDS[profile]:
        assert request_id is not None and request_id.startswith("req-"), body
    else:
        assert request_id is None, body
    return response.status_code, body


def route_missing(method: str, path: str) -> tuple[int, dict[str, Any]]:
    """Fastify's unknown-route answer (no reqId on any generation)."""
    return 404, {
        "message": f"Route {method}:{path} not found",
        "error": "Not Found",
        "statusCode": 404,
    }


PATH_NOT_FOUND = (
    "Folder with path '{path}' in environment '{env}' was not found. "
    "Please ensure the environment slug and secret path is correct."
)


@pytest.mark.parametrize("profile", ["current", "2024"])
@pytest.mark.parametrize(
    ("query", "path", "env"),
    [
        ({"secretPath": "/apps/payments"}, "/apps/payments", "dev"),
        ({"environment": "qa"}, "/", "qa"),
    ],
    ids=["missing-path", "missing-environment"],
)
async def test_generation_list_of_a_missing_path(
    profile: str, query: dict[str, str], path: str, env: str
) -> None:
    async with generation(profile) as (_, http):
        response = await http.get("/api/v3/secrets/raw", params={**DEV_V3_LIST, **query})
    if profile == "2024":
        assert (response.status_code, response.json()) == (200, {"secrets": [], "imports": []})
    else:
        assert error_of(profile, response) == (
            404,
            {
                "statusCode": 404,
                "message": PATH_NOT_FOUND.format(path=path, env=env),
                "error": "SecretPathNotFound",
            },
        )


@pytest.mark.parametrize("profile", ["current", "2024"])
async def test_generation_batch_create_into_a_missing_folder(profile: str) -> None:
    async with generation(profile) as (fake, http):
        response = await http.post(
            "/api/v3/secrets/batch/raw",
            json={
                **DEV_V3_LIST,
                "secretPath": "/apps/payments",
                "secrets": [{"secretKey": "A", "secretValue": "1"}],
            },
        )
        assert fake.state.folder("p-1", "dev", "/apps/payments") is None
    assert error_of(profile, response) == (
        404,
        {
            "statusCode": 404,
            "message": "Folder with path '/apps/payments' in environment with slug 'dev' not found",
            "error": "CreateManySecret",
        },
    )


FOLDER_V1_KEYS = {
    "id",
    "name",
    "version",
    "createdAt",
    "updatedAt",
    "envId",
    "parentId",
    "isReserved",
}
FOLDER_V2_KEYS = FOLDER_V1_KEYS | {"description", "path"}
FOLDER_LISTED_KEYS = {"id", "name", "envId", "version", "createdAt", "updatedAt", "parentId"}


@pytest.mark.parametrize("profile", ["current", "2024"])
async def test_generation_folders_v2(profile: str) -> None:
    body = {"projectId": "p-1", "environment": "dev", "path": "/apps", "name": "payments"}
    listing = {"projectId": "p-1", "environment": "dev", "path": "/apps"}
    async with generation(profile) as (fake, http):
        created = await http.post("/api/v2/folders", json=body)
        listed = await http.get("/api/v2/folders", params=listing)
        exists = fake.state.folder("p-1", "dev", "/apps/payments") is not None
    if profile == "2024":
        assert (created.status_code, created.json()) == route_missing("POST", "/api/v2/folders")
        url = listed.request.url.raw_path.decode()  # Fastify names the URL, query included
        assert (listed.status_code, listed.json()) == route_missing("GET", url)
        assert not exists
        return
    assert created.status_code == 200 and exists
    folder = created.json()["folder"]
    assert set(folder) == FOLDER_V2_KEYS
    assert (folder["name"], folder["path"], folder["version"]) == ("payments", "/apps/payments", 1)
    assert listed.status_code == 200
    (entry,) = listed.json()["folders"]
    assert set(entry) == FOLDER_LISTED_KEYS
    assert {key: entry[key] for key in FOLDER_LISTED_KEYS} == {
        key: folder[key] for key in FOLDER_LISTED_KEYS
    }


@pytest.mark.parametrize(
    ("profile", "again"),
    [
        ("current", (400, "Folder with name 'payments' already exists in path '/apps'")),
        ("2024", (200, None)),
    ],
)
async def test_generation_folders_v1(profile: str, again: tuple[int, str | None]) -> None:
    body = {"workspaceId": "p-1", "environment": "dev", "path": "/apps", "name": "payments"}
    async with generation(profile) as (fake, http):
        created = await http.post("/api/v1/folders", json=body)
        fake.state.clock.advance(5)
        repeated = await http.post("/api/v1/folders", json=body)
        listed = await http.get(
            "/api/v1/folders", params={"workspaceId": "p-1", "environment": "dev", "path": "/apps"}
        )
        root = await http.get(
            "/api/v1/folders", params={"workspaceId": "p-1", "environment": "dev"}
        )
    assert created.status_code == 200
    folder = created.json()["folder"]
    assert set(folder) == FOLDER_V1_KEYS
    assert (folder["name"], folder["version"], folder["isReserved"]) == ("payments", 1, False)
    (apps,) = root.json()["folders"]
    assert apps["name"] == "apps" and folder["parentId"] == apps["id"]  # mkdir -p
    status, message = again
    assert repeated.status_code == status
    if message is None:  # the existing folder, as it was created
        assert repeated.json() == created.json()
    else:
        assert error_of(profile, repeated)[1]["message"] == message
    (entry,) = listed.json()["folders"]
    assert entry == {key: folder[key] for key in FOLDER_LISTED_KEYS}


@pytest.mark.parametrize(("profile", "status"), [("current", 422), ("2024", 500)])
async def test_generation_folders_v1_invalid_name(profile: str, status: int) -> None:
    body = {"workspaceId": "p-1", "environment": "dev", "path": "/", "name": "a b"}
    async with generation(profile) as (_, http):
        response = await http.post("/api/v1/folders", json=body)
    assert error_of(profile, response)[0] == status


@pytest.mark.parametrize("profile", ["current", "2024"])
async def test_generation_project_by_slug(profile: str) -> None:
    async with generation(profile) as (_, http):
        v1 = await http.get("/api/v1/projects/slug/payments")
        v2 = await http.get("/api/v2/workspace/payments")
    assert (v2.status_code, v2.json()["id"], v2.json()["slug"]) == (200, "p-1", "payments")
    if profile == "2024":
        assert (v1.status_code, v1.json()) == route_missing("GET", "/api/v1/projects/slug/payments")
    else:
        assert (v1.status_code, v1.json()) == (200, v2.json())


@pytest.mark.parametrize("profile", ["current", "2024"])
async def test_generation_v3_batch_upsert_of_a_new_key(profile: str) -> None:
    items = [{"secretKey": "A", "secretValue": "2"}, {"secretKey": "B", "secretValue": "3"}]
    async with generation(profile) as (fake, http):
        fake.state.put_secret("p-1", "dev", "/", "A", "1")
        response = await http.patch(
            "/api/v3/secrets/batch/raw", json={**DEV_V3_LIST, "mode": "upsert", "secrets": items}
        )
        stored = fake.state.get_secrets("p-1", "dev")
    if profile == "2024":
        # `mode` is not in its schema: failOnNotFound, naming some key of the batch.
        status, body = error_of(profile, response)
        assert (status, body["error"], stored) == (404, "NotFound", {"A": "1"})
        assert body["message"] in {"Secret does not exist: A", "Secret does not exist: B"}
    else:
        assert (response.status_code, stored) == (200, {"A": "2", "B": "3"})
        versions = {s["secretKey"]: s["version"] for s in response.json()["secrets"]}
        assert versions == {"A": 2, "B": 1}


@pytest.mark.parametrize(("profile", "status"), [("current", 422), ("2024", 401)])
async def test_generation_validation_error(profile: str, status: int) -> None:
    async with generation(profile) as (_, http):
        response = await http.post(
            "/api/v3/secrets/batch/raw",
            json={**DEV_V3_LIST, "secrets": [{"secretKey": "a:b", "secretValue": "v"}]},
        )
    assert error_of(profile, response) == (
        status,
        {
            "statusCode": status,
            "message": [
                {
                    "code": "custom",
                    "message": "Secret name cannot contain colon or forward slash.",
                    "path": ["secrets", 0, "secretKey"],
                }
            ],
            "error": "ValidationFailure",
        },
    )


@pytest.mark.parametrize("profile", ["current", "2024"])
async def test_generation_request_ids_in_error_bodies(profile: str) -> None:
    async with generation(profile) as (_, http):
        missing = await http.get("/api/v3/secrets/raw/NOPE", params=DEV_V3_LIST)
        exists = await http.post(
            "/api/v3/secrets/batch/raw",
            json={**DEV_V3_LIST, "secrets": [{"secretKey": "A", "secretValue": "1"}] * 2},
        )
    # error_of checks reqId's presence (current) or absence (2024)
    assert error_of(profile, missing)[0] == 404
    assert error_of(profile, exists) == (
        400,
        {"statusCode": 400, "message": "Secret already exists: A", "error": "BadRequest"},
    )


@pytest.mark.parametrize("profile", ["current", "2024"])
async def test_generation_refused_renewal_deletes_the_token(profile: str) -> None:
    async with generation(profile) as (fake, http):
        identity = fake.state.identities[CLIENT_ID]
        identity.access_token_ttl, identity.access_token_max_ttl = 100, 150
        headers = await token(http)
        raw = headers["Authorization"].split()[1]
        fake.state.clock.advance(60)  # 60 + 100 > 150: a renewal would pass the max TTL
        refused = await http.post("/api/v1/auth/token/renew", json={"accessToken": raw})
        after = await http.get("/api/v3/secrets/raw", params=DEV_V3_LIST, headers=headers)
    assert error_of(profile, refused) == (
        401,
        {
            "statusCode": 401,
            "message": "Failed to renew MI access token past its Max TTL expiration",
            "error": "UnauthorizedError",
        },
    )
    assert error_of(profile, after) == (
        401,
        {
            "statusCode": 401,
            "message": "No identity access token found",
            "error": "UnauthorizedError",
        },
    )


@pytest.mark.parametrize(("profile", "status"), [("current", 200), ("2024", 401)])
async def test_generation_v3_single_update_requires_a_value(profile: str, status: int) -> None:
    async with generation(profile) as (fake, http):
        fake.state.put_secret("p-1", "dev", "/", "A", "1")
        response = await http.patch(
            "/api/v3/secrets/raw/A", json={**DEV_V3_LIST, "secretComment": "note"}
        )
        stored = fake.state.get_secrets("p-1", "dev")
    assert response.status_code == status and stored == {"A": "1"}
    if status != 200:
        issues = error_of(profile, response)[1]["message"]
        assert [issue["path"] for issue in issues] == [["secretValue"]]


async def send_raw(fake: FakeInfisical, head: str) -> tuple[int, dict[str, Any]]:
    """One request as raw bytes: httpx refuses a header value with trailing whitespace."""
    reader, writer = await asyncio.open_connection(fake.host, fake.port)
    writer.write(f"{head}\r\nHost: {fake.host}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    answer = await reader.read()
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    body = rest.partition(b"\r\n\r\n")[2]
    return int(status_line.split()[1]), json.loads(body)


@pytest.mark.parametrize("profile", ["current", "2024"])
async def test_generation_auth_errors(profile: str) -> None:
    query = "workspaceId=p-1&environment=dev"
    async with generation(profile) as (fake, http):
        fake.state.add_project("other", project_id="p-2")
        bad_secret = await login(http, "wrong")
        missing = await http.get(
            "/api/v3/secrets/raw", params=DEV_V3_LIST, headers={"Authorization": ""}
        )
        malformed = await http.get(
            "/api/v3/secrets/raw", params=DEV_V3_LIST, headers={"Authorization": "Bearer x"}
        )
        empty = await send_raw(
            fake, f"GET /api/v3/secrets/raw?{query} HTTP/1.1\r\nAuthorization: Bearer "
        )
        bare = await http.get(
            "/api/v3/secrets/raw", params=DEV_V3_LIST, headers={"Authorization": "Bearer"}
        )
        not_member = await http.get(
            "/api/v3/secrets/raw", params={**DEV_V3_LIST, "workspaceId": "p-2"}
        )
        raw = http.headers["Authorization"].split()[1]
        await http.post("/api/v1/auth/token/revoke", json={"accessToken": raw})
        revoked = await http.get("/api/v3/secrets/raw", params=DEV_V3_LIST)

    def body(status: int, message: str, error: str) -> tuple[int, dict[str, Any]]:
        return status, {"statusCode": status, "message": message, "error": error}

    assert error_of(profile, bad_secret) == body(401, "Invalid credentials", "UnauthorizedError")
    assert error_of(profile, missing) == body(401, "Token missing", "UnauthorizedError")
    assert error_of(profile, malformed) == body(403, "jwt malformed", "TokenError")
    status, empty_body = empty
    assert ("reqId" in empty_body) is REQUEST_IDS[profile]
    empty_body.pop("reqId", None)
    assert (status, empty_body) == body(403, "jwt must be provided", "TokenError")
    assert error_of(profile, bare) == body(403, "jwt must be provided", "TokenError")
    assert error_of(profile, not_member) == body(
        403,
        "You are not allowed to access this resource",
        "Identity is not a member of the specified project with ID 'p-2'",
    )
    assert error_of(profile, revoked) == body(
        401, "No identity access token found", "UnauthorizedError"
    )


@pytest.mark.parametrize("profile", ["current", "2024"])
async def test_generation_etag(profile: str) -> None:
    async with generation(profile) as (_, http):
        first = await http.get("/api/v3/secrets/raw", params=DEV_V3_LIST)
        etag = first.headers["etag"]
        same = await http.get(
            "/api/v3/secrets/raw", params=DEV_V3_LIST, headers={"If-None-Match": etag}
        )
        weak = await http.get(
            "/api/v3/secrets/raw", params=DEV_V3_LIST, headers={"If-None-Match": f"W/{etag}"}
        )
    assert etag.startswith('"') and (same.status_code, weak.status_code) == (304, 200)


@pytest.mark.parametrize(
    ("profile", "fields"),
    [
        ("current", {"secretMetadata": [{"key": "k", "value": "v", "isEncrypted": False}]}),
        ("2024", {"metadata": None}),
    ],
)
async def test_generation_metadata_in_secrets(profile: str, fields: dict[str, Any]) -> None:
    item = {"secretKey": "A", "secretValue": "1", "secretMetadata": [{"key": "k", "value": "v"}]}
    async with generation(profile) as (_, http):
        created = await http.post(
            "/api/v3/secrets/batch/raw", json={**DEV_V3_LIST, "secrets": [item]}
        )
        listed = await http.get("/api/v3/secrets/raw", params=DEV_V3_LIST)
        single = await http.get("/api/v3/secrets/raw/A", params=DEV_V3_LIST)
    for secret in (
        created.json()["secrets"][0],
        listed.json()["secrets"][0],
        single.json()["secret"],
    ):
        assert {key: secret.get(key, "absent") for key in ("secretMetadata", "metadata")} == {
            "secretMetadata": "absent",
            "metadata": "absent",
            **fields,
        }


# (route, method, body) of every write that takes metadata; `item` is where the metadata goes.
METADATA_WRITES = [
    ("/api/v3/secrets/raw/A", "POST", lambda item: {**DEV_V3_LIST, "secretValue": "1", **item}),
    ("/api/v3/secrets/raw/OLD", "PATCH", lambda item: {**DEV_V3_LIST, "secretValue": "1", **item}),
    (
        "/api/v3/secrets/batch/raw",
        "POST",
        lambda item: {**DEV_V3_LIST, "secrets": [{"secretKey": "A", "secretValue": "1", **item}]},
    ),
    (
        "/api/v3/secrets/batch/raw",
        "PATCH",
        lambda item: {**DEV_V3_LIST, "secrets": [{"secretKey": "OLD", "secretValue": "1", **item}]},
    ),
]


@pytest.mark.parametrize(
    ("profile", "item", "status", "issue_path"),
    [
        (
            "current",
            {"secretMetadata": [{"key": "k", "value": 5}]},
            422,
            ["secretMetadata", 0, "value"],
        ),
        ("current", {"metadata": {"k": 5}}, 422, ["metadata", "k"]),
        ("2024", {"metadata": {"k": 5}}, 401, ["metadata", "k"]),
        # not in the 2024 schema: stripped, never looked at
        ("2024", {"secretMetadata": [{"key": "k", "value": 5}]}, 200, None),
    ],
    ids=["current-secretMetadata", "current-metadata", "2024-metadata", "2024-secretMetadata"],
)
@pytest.mark.parametrize(
    ("route", "method", "build"), METADATA_WRITES, ids=[f"{m} {r}" for r, m, _ in METADATA_WRITES]
)
async def test_generation_non_string_metadata_value(
    profile: str,
    item: dict[str, Any],
    status: int,
    issue_path: list[str | int] | None,
    route: str,
    method: str,
    build: Any,
) -> None:
    async with generation(profile) as (fake, http):
        fake.state.put_secret("p-1", "dev", "/", "OLD", "0")
        response = await http.request(method, route, json=build(item))
        stored = fake.state.get_secrets("p-1", "dev")
    if issue_path is None:
        assert response.status_code == status
        return
    status_seen, body = error_of(profile, response)
    assert (status_seen, body["error"], stored) == (status, "ValidationFailure", {"OLD": "0"})
    (issue,) = body["message"]
    assert issue["path"][-len(issue_path) :] == issue_path
    assert issue["message"] == "Expected string, received number"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, CURRENT),
        ({"profile": "2024"}, GEN_2024),
        ({"profile": "2024", "etag": False}, GEN_2024.with_overrides(etag=False)),
        (
            {"v4": False, "metadata": False},
            CURRENT.with_overrides(v4_routes=False, secret_metadata=False),
        ),
    ],
)
def test_seed_file_profile(
    tmp_path: Path, options: dict[str, Any], expected: ServerProfile
) -> None:
    seed = tmp_path / "seed.yaml"
    seed.write_text(json.dumps({"options": options, "projects": [{"slug": "payments"}]}))
    fake = fake_from_seed(seed, "127.0.0.1", 0)
    assert fake.server == expected
    (project,) = fake.state.projects.values()
    assert project.slug == "payments"


def test_seed_profile_given_on_the_command_line_wins(tmp_path: Path) -> None:
    seed = tmp_path / "seed.yaml"
    seed.write_text("options: {profile: current, etag: false}\n")
    fake = fake_from_seed(seed, "127.0.0.1", 0, profile="2024")
    assert fake.server == GEN_2024.with_overrides(etag=False)


def test_seed_file_unknown_profile(tmp_path: Path) -> None:
    seed = tmp_path / "seed.yaml"
    seed.write_text("options: {profile: '2019'}\n")
    with pytest.raises(ValueError, match="unknown fake server profile '2019'"):
        fake_from_seed(seed, "127.0.0.1", 0)


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
