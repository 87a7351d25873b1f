"""How SecretSyncs treat the remote API as a whole: the operator process, the real control plane,
the fake Infisical server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from tests.conftest import OperatorProcess, wait_for
from tests.kube_helpers import condition, create, put_secret

from infisical_sync.testing.fake_infisical import BackgroundFake, FakeInfisical, Fault

pytestmark = pytest.mark.controlplane
CONNECTIONS, SYNCS = "infisicalconnections", "secretsyncs"
CLIENT_ID = "55555555-5555-4555-8555-555555555555"
CLIENT_SECRET = "canary-remote-client-secret-1f3870be"
PROJECT = "p-remote"


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
