"""How SecretSyncs treat the remote API as a whole: the operator process, the real control plane,
the fake Infisical server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from tests.conftest import OperatorProcess, wait_for
from tests.kube_helpers import condition, create, patch, put_secret

from infisical_sync.testing.fake_infisical import (
    BackgroundFake,
    FakeInfisical,
    Fault,
    RequestRecord,
)

pytestmark = pytest.mark.controlplane
CONNECTIONS, SYNCS = "infisicalconnections", "secretsyncs"
CLIENT_ID = "55555555-5555-4555-8555-555555555555"
CLIENT_SECRET = "canary-remote-client-secret-1f3870be"
PROJECT = "p-remote"
REQUESTED = "infisical-sync.dev/sync-requested-at"


@pytest.fixture
def fake() -> Iterator[FakeInfisical]:
    with BackgroundFake() as server:
        server.state.add_project("remote", project_id=PROJECT)
        server.state.add_identity(CLIENT_ID, CLIENT_SECRET, projects={PROJECT: {}})
        yield server


@pytest.fixture
def ready(operator: OperatorProcess, kube: Any, namespace: str, fake: FakeInfisical) -> None:
    put_secret(kube, namespace, "identity", {"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET})
    spec = {
        "instanceUrl": fake.url,
        "allowInsecureHttp": True,
        "credentials": {"secretRef": {"name": "identity"}},
        "validationInterval": "1h",
    }
    create(kube, namespace, CONNECTIONS, "InfisicalConnection", "dest", spec)
    wait_for(
        lambda: condition(kube, namespace, CONNECTIONS, "dest", "Ready") == ("True", "Validated")
    )


def sync_spec(secret: str, path: str) -> dict[str, Any]:
    return {
        "source": {"kubernetes": {"secrets": [{"name": secret}]}},
        "destination": {
            "connectionRef": {"name": "dest"},
            "projectId": PROJECT,
            "environment": "prod",
            "secretPath": path,
        },
        "syncInterval": "1h",
    }


def remote(fake: FakeInfisical, path: str) -> dict[str, str]:
    return fake.state.get_secrets(PROJECT, "prod", path)


@pytest.mark.usefixtures("ready")
def test_no_request_inside_a_retry_after_window_across_20_secretsyncs(
    kube: Any, namespace: str, fake: FakeInfisical
) -> None:
    # Slow secret calls make the SecretSyncs queue behind the per-instance concurrency limit
    # (5); once it is reached, the next secret call is answered 429 while the others wait.
    for i in range(20):
        put_secret(kube, namespace, f"app-{i}", {"KEY": f"value-{i}"})
    fake.inject(Fault("latency", r"^/api/v4/secrets", delay=0.3))
    fake.max_in_flight = 0
    for i in range(20):
        create(kube, namespace, SYNCS, "SecretSync", f"sync-{i}", sync_spec(f"app-{i}", f"/s{i}"))
    wait_for(lambda: fake.max_in_flight >= 5, timeout=30)
    fake.inject(Fault("status", r"^/api/v4/secrets", status=429, retry_after=3, times=1))
    wait_for(
        lambda: all(remote(fake, f"/s{i}") == {"KEY": f"value-{i}"} for i in range(20)),
        timeout=90,
    )
    assert fake.count(status=429) == 1
    # Requests already on their way when the 429 was answered cannot be recalled: 0.5 s.
    assert fake.sent_while_rate_limited(margin=0.5) == []


@pytest.mark.usefixtures("ready")
def test_an_etag_is_never_sent_to_another_path(
    kube: Any, namespace: str, fake: FakeInfisical
) -> None:
    put_secret(kube, namespace, "app", {"A": "1"})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec("app", "/first"))
    wait_for(lambda: remote(fake, "/first") == {"A": "1"})

    def lists(path: str) -> list[RequestRecord]:
        return [
            r for r in fake.log if r.path == "/api/v4/secrets" and r.query["secretPath"] == path
        ]

    # A later cycle lists /first again and keeps its ETag.
    patch(kube, namespace, SYNCS, "sync", {"metadata": {"annotations": {REQUESTED: "1"}}})
    wait_for(lambda: any(r.status == 200 for r in lists("/first")))
    patch(kube, namespace, SYNCS, "sync", {"spec": {"destination": {"secretPath": "/second"}}})
    wait_for(lambda: remote(fake, "/second") == {"A": "1"})
    assert lists("/second")[0].if_none_match is None  # the ETag of /first is not sent here


@pytest.mark.usefixtures("ready")
def test_an_infisical_source_etag_is_never_sent_to_another_path(
    kube: Any, namespace: str, fake: FakeInfisical
) -> None:
    fake.state.put_secret(PROJECT, "prod", "/src-a", "A", "from a")
    fake.state.put_secret(PROJECT, "prod", "/src-b", "A", "from b")
    spec = sync_spec("unused", "/out")
    source = {"connectionRef": {"name": "dest"}, "projectId": PROJECT, "environment": "prod"}
    spec["source"] = {"infisical": {**source, "secretPath": "/src-a"}}
    create(kube, namespace, SYNCS, "SecretSync", "sync", spec)
    wait_for(lambda: remote(fake, "/out") == {"A": "from a"})

    def lists(path: str) -> list[RequestRecord]:
        return [
            r for r in fake.log if r.path == "/api/v4/secrets" and r.query["secretPath"] == path
        ]

    assert lists("/src-a")[0].status == 200  # its ETag is kept
    moved = {"source": {"infisical": {**source, "secretPath": "/src-b"}}}
    patch(kube, namespace, SYNCS, "sync", {"spec": moved})
    wait_for(lambda: remote(fake, "/out") == {"A": "from b"})
    assert lists("/src-b")[0].if_none_match is None  # the ETag of /src-a is not sent here
