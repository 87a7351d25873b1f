"""Observability: the per-object readiness series of the running operator, and the chart's
dashboard and alerts, whose every metric and label must be in what the operator exports."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from tests.conftest import OperatorProcess, wait_for
from tests.kube_helpers import condition, create, delete, put_secret
from tests.promql_check import dashboard_queries, problems, rule_queries, scraped_labels

from infisical_sync.testing.controlplane import ensure_helm
from infisical_sync.testing.fake_infisical import BackgroundFake, FakeInfisical, Fault

pytestmark = pytest.mark.controlplane
CHART = Path(__file__).parents[2] / "deploy" / "helm" / "infisical-sync"
CONNECTIONS, SYNCS = "infisicalconnections", "secretsyncs"
CLIENT_ID, CLIENT_SECRET = "obs-client", "obs-client-secret-5d41402a"
PROJECT = "p-obs"


@pytest.fixture
def fake() -> Iterator[FakeInfisical]:
    with BackgroundFake() as server:
        server.state.add_project("obs", project_id=PROJECT)
        server.state.add_identity(CLIENT_ID, CLIENT_SECRET, projects={PROJECT: {}})
        yield server


def connection(
    kube: Any, namespace: str, fake: FakeInfisical, name: str, client_secret: str
) -> None:
    put_secret(
        kube, namespace, f"{name}-identity", {"clientId": CLIENT_ID, "clientSecret": client_secret}
    )
    create(
        kube,
        namespace,
        CONNECTIONS,
        "InfisicalConnection",
        name,
        {
            "instanceUrl": fake.url,
            "allowInsecureHttp": True,
            "credentials": {"secretRef": {"name": f"{name}-identity"}},
        },
    )


def secret_sync(kube: Any, namespace: str, name: str, connection_name: str) -> None:
    spec = {
        "source": {"kubernetes": {"secrets": [{"name": name}]}},
        "destination": {
            "connectionRef": {"name": connection_name},
            "projectId": PROJECT,
            "environment": "prod",
            "secretPath": f"/{name}",
        },
        "syncInterval": "1h",
    }
    create(kube, namespace, SYNCS, "SecretSync", name, spec)


def scrape(operator: OperatorProcess) -> str:
    url = f"http://127.0.0.1:{operator.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text: str = response.read().decode()
    return text


def readiness(operator: OperatorProcess, kind: str, namespace: str, name: str) -> Any:
    """(infisical_sync_ready, [reasons of infisical_sync_not_ready_reason]) of one object."""
    from prometheus_client.parser import text_string_to_metric_families

    ready, reasons = None, []
    for family in text_string_to_metric_families(scrape(operator)):
        for sample in family.samples:
            labels = dict(sample.labels)
            if (labels.get("kind"), labels.get("namespace"), labels.get("name")) != (
                kind,
                namespace,
                name,
            ):
                continue
            if sample.name == "infisical_sync_ready":
                ready = sample.value
            elif sample.name == "infisical_sync_not_ready_reason":
                assert sample.value == 1
                reasons.append(labels["reason"])
    return ready, reasons


def ready_condition(kube: Any, namespace: str, plural: str, name: str) -> tuple[float, list[str]]:
    """What the metrics should say: the Ready condition the operator wrote (its reason while
    it is not True)."""
    found = condition(kube, namespace, plural, name, "Ready")
    assert found is not None, f"{name} has no Ready condition yet"
    return (1.0, []) if found[0] == "True" else (0.0, [found[1]])


def render(*values: str) -> list[dict[str, Any]]:
    args = [str(ensure_helm()), "template", "sync", str(CHART), "--namespace", "infisical-sync"]
    for value in values:
        args += ["--set", value]
    output = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(output) if doc]


def test_readiness_series_name_each_object_and_the_charts_queries_match_them(
    operator: OperatorProcess, kube: Any, namespace: str, fake: FakeInfisical
) -> None:
    connection(kube, namespace, fake, "good", CLIENT_SECRET)
    connection(kube, namespace, fake, "bad", "not-the-secret")
    wait_for(
        lambda: condition(kube, namespace, CONNECTIONS, "good", "Ready") == ("True", "Validated")
    )
    wait_for(
        lambda: (condition(kube, namespace, CONNECTIONS, "bad", "Ready") or ("",))[0] == "False"
    )
    put_secret(kube, namespace, "fine", {"A": "1"})
    put_secret(kube, namespace, "shrinking", {k: k for k in "ABCD"})
    put_secret(kube, namespace, "blocked", {"A": "1"})
    # One 429 on the way: the rate-limit counter gets a series, the sync still gets through.
    fake.inject(Fault("status", r"/api/v4/secrets", status=429, retry_after=1, times=1))
    for name, via in (("fine", "good"), ("shrinking", "good"), ("blocked", "bad")):
        secret_sync(kube, namespace, name, via)
    wait_for(lambda: condition(kube, namespace, SYNCS, "shrinking", "Ready") == ("True", "Synced"))
    put_secret(kube, namespace, "shrinking", {"A": "A"})  # three of four deletes: held
    wait_for(
        lambda: condition(kube, namespace, SYNCS, "shrinking", "Ready") == ("False", "DeletionHeld")
    )
    wait_for(lambda: condition(kube, namespace, SYNCS, "fine", "Ready") == ("True", "Synced"))
    wait_for(lambda: (condition(kube, namespace, SYNCS, "blocked", "Ready") or ("",))[0] == "False")

    expected = {
        ("InfisicalConnection", "good"): (1.0, []),
        ("SecretSync", "fine"): (1.0, []),
        ("SecretSync", "shrinking"): (0.0, ["DeletionHeld"]),
    }
    for kind, name in (("InfisicalConnection", "bad"), ("SecretSync", "blocked")):
        plural = CONNECTIONS if kind == "InfisicalConnection" else SYNCS
        expected[(kind, name)] = ready_condition(kube, namespace, plural, name)
    assert expected[("SecretSync", "blocked")][0] == 0.0
    for (kind, name), want in expected.items():
        # The metric is set as the cycle ends, a moment after its status patch is answered.
        wait_for(
            lambda kind=kind, name=name, want=want: (
                readiness(operator, kind, namespace, name) == want
            ),
            timeout=10,
            message=f"{kind} {name}: want {want}",
        )
    assert (
        operator.metric("infisical_sync_held_deletes", namespace=namespace, name="shrinking") == 3
    )
    assert operator.metric("infisical_sync_held_deletes", namespace=namespace, name="fine") is None
    instance = fake.url.removeprefix("http://")
    assert (operator.metric("infisical_sync_rate_limited_total", instance=instance) or 0) >= 1

    # The chart's dashboard and alerts use only what this scrape has.
    scraped = scraped_labels(scrape(operator))
    docs = render("metrics.dashboard.enabled=true", "metrics.prometheusRule.enabled=true")
    [dashboard_map] = [doc for doc in docs if doc["kind"] == "ConfigMap"]
    assert dashboard_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(dashboard_map["data"]["infisical-sync.json"])
    [rule] = [doc for doc in docs if doc["kind"] == "PrometheusRule"]
    rules = rule_queries(rule["spec"]["groups"])
    assert len(rules) == 6  # every alert is on by default
    for item in rule["spec"]["groups"][0]["rules"]:
        assert promql_parser.parse_duration(item["for"]).total_seconds() > 0, item["alert"]
    queries = dashboard_queries(dashboard) + rules
    found = [problem for expr, labels in queries for problem in problems(expr, scraped, labels)]
    assert found == []

    for name in ("fine", "shrinking"):  # their series go with them
        delete(kube, namespace, SYNCS, name)
        wait_for(
            lambda name=name: readiness(operator, "SecretSync", namespace, name) == (None, []),
            message=f"the deleted SecretSync {name}'s readiness series",
        )
    assert (
        operator.metric("infisical_sync_held_deletes", namespace=namespace, name="shrinking")
        is None
    )
