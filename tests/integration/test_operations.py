"""Operating the operator: JSON logs, liveness endpoint, Prometheus metrics."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from tests.conftest import OperatorProcess, wait_for
from tests.kube_helpers import condition, create, put_secret

from infisical_sync.testing.fake_infisical import BackgroundFake, FakeInfisical

pytestmark = pytest.mark.controlplane


@pytest.fixture
def fake() -> Iterator[FakeInfisical]:
    with BackgroundFake() as server:
        server.state.add_identity("ops-id", "ops-secret")
        yield server


def get(port: int, path: str) -> tuple[int, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return response.status, response.read().decode()


def answered(port: int, path: str) -> tuple[int, str] | None:
    """The answer, or None while nothing listens yet (the operator may have just started)."""
    try:
        return get(port, path)
    except urllib.error.URLError:  # connection refused
        return None


def test_liveness_endpoint(operator: OperatorProcess) -> None:
    status, body = wait_for(lambda: answered(operator.health_port, "/healthz"))
    assert status == 200
    assert "now" in json.loads(body)


def test_metrics_after_a_validation(
    operator: OperatorProcess, kube: Any, namespace: str, fake: FakeInfisical
) -> None:
    put_secret(kube, namespace, "identity", {"clientId": "ops-id", "clientSecret": "ops-secret"})
    create(
        kube,
        namespace,
        "infisicalconnections",
        "InfisicalConnection",
        "conn",
        {
            "instanceUrl": fake.url,
            "allowInsecureHttp": True,
            "credentials": {"secretRef": {"name": "identity"}},
        },
    )
    wait_for(
        lambda: (
            condition(kube, namespace, "infisicalconnections", "conn", "Ready")
            == ("True", "Validated")
        )
    )
    _, metrics = get(operator.metrics_port, "/metrics")
    instance = fake.url.removeprefix("http://")
    assert (
        f'infisical_sync_token_events_total{{event="login",instance="{instance}"}} 1.0' in metrics
    )
    assert f'infisical_sync_connection_ready{{name="conn",namespace="{namespace}"}} 1.0' in metrics
    assert (
        f'infisical_sync_api_calls_total{{endpoint="auth.login",instance="{instance}",status="200"}} 1.0'
        in metrics
    )
    for family in (
        "infisical_sync_syncs_total",
        "infisical_sync_sync_duration_seconds",
        "infisical_sync_keys_changed_total",
        "infisical_sync_rate_limited_total",
    ):
        assert f"# TYPE {family}" in metrics
    assert "ops-secret" not in metrics


def test_logs_are_json_lines(operator: OperatorProcess) -> None:
    lines = [line for line in operator.log().splitlines() if line.strip()]
    assert lines
    parsed = [json.loads(line) for line in lines if line.startswith("{")]
    # Everything the operator logs is JSON; only Python's own startup noise may not be.
    assert len(parsed) >= len(lines) - 2
    assert {"message", "timestamp", "severity"} <= set(parsed[0])
