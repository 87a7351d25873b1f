"""The ClusterInfisicalConnection CRD and SecretSync's connectionRef.kind as the real API server
applies them (schema, CEL rules, defaults), and deploy/samples/cluster-connection/ as written.
No operator runs here: what the operator does with them is tested elsewhere."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from infisical_sync.testing.samples import SAMPLE_NAMESPACE, SAMPLES

pytestmark = pytest.mark.controlplane
GROUP, VERSION = "infisical-sync.dev", "v1alpha1"
CLUSTER_CONNECTIONS = "clusterinfisicalconnections"
UNIVERSAL_AUTH = {
    "instanceUrl": "https://infisical.example.com",
    "credentials": {"secretRef": {"name": "identity"}},
}


@pytest.fixture
def cluster_objects(kube: Any) -> Iterator[Any]:
    """Creates ClusterInfisicalConnections (returning what the API server stored) and deletes
    them after the test: the namespace fixture does not reach cluster-scoped objects."""
    api = client.CustomObjectsApi(kube)
    created: list[str] = []

    def create(spec: dict[str, Any], name: str | None = None) -> dict[str, Any]:
        name = name or f"c-{uuid.uuid4().hex[:10]}"
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ClusterInfisicalConnection",
            "metadata": {"name": name},
            "spec": spec,
        }
        stored: dict[str, Any] = api.create_cluster_custom_object(
            GROUP, VERSION, CLUSTER_CONNECTIONS, body
        )
        created.append(name)
        return stored

    yield create
    for name in created:
        api.delete_cluster_custom_object(GROUP, VERSION, CLUSTER_CONNECTIONS, name)


def refusal(call: Any, *args: Any) -> str:
    with pytest.raises(ApiException) as refused:
        call(*args)
    assert refused.value.status == 422, refused.value.body
    return str(refused.value.body)


def test_defaults_and_the_status_before_the_operators_first(cluster_objects: Any) -> None:
    stored = cluster_objects(UNIVERSAL_AUTH)
    assert "namespace" not in stored["metadata"]  # cluster-scoped
    spec = stored["spec"]
    assert spec["method"] == "machine-identity-universal-auth"
    assert spec["validationInterval"] == "5m" and spec["allowInsecureHttp"] is False
    assert spec["credentials"]["secretRef"]["clientIdKey"] == "clientId"
    assert "namespaceSelector" not in spec  # no default: no namespace may use it
    assert stored["status"] == {"observedGeneration": -1}


@pytest.mark.parametrize(
    "selector",
    [
        {},
        {"matchLabels": {"infisical-sync.dev/connection": "shared"}},
        {
            "matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["a", "b"]},
                {"key": "tier", "operator": "NotIn", "values": ["sandbox"]},
                {"key": "team", "operator": "Exists"},
                {"key": "frozen", "operator": "DoesNotExist", "values": []},
            ]
        },
    ],
    ids=["everything", "labels", "expressions"],
)
def test_label_selectors_are_accepted_as_written(cluster_objects: Any, selector: Any) -> None:
    stored = cluster_objects({**UNIVERSAL_AUTH, "namespaceSelector": selector})
    assert stored["spec"]["namespaceSelector"] == selector


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ({"key": "team", "operator": "In"}, "operators In and NotIn need values"),
        ({"key": "team", "operator": "NotIn", "values": []}, "operators In and NotIn need values"),
        ({"key": "team", "operator": "Exists", "values": ["a"]}, "Exists and DoesNotExist take"),
        ({"key": "team", "operator": "Equals", "values": ["a"]}, 'Unsupported value: \\"Equals\\"'),
        ({"operator": "Exists"}, "key: Required value"),
    ],
    ids=["in-without-values", "notin-empty", "exists-with-values", "unknown-operator", "no-key"],
)
def test_malformed_selectors_are_refused(
    cluster_objects: Any, expression: dict[str, Any], message: str
) -> None:
    body = refusal(
        cluster_objects, {**UNIVERSAL_AUTH, "namespaceSelector": {"matchExpressions": [expression]}}
    )
    assert message in body, body


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {**UNIVERSAL_AUTH, "instanceUrl": "http://infisical.example.com"},
            "instanceUrl must use https:// unless allowInsecureHttp is true",
        ),
        (
            {
                **UNIVERSAL_AUTH,
                "method": "kubernetes-auth",
                "kubernetesAuth": {"identityId": "id", "serviceAccountRef": {"name": "login"}},
            },
            "credentials is for method machine-identity-universal-auth only",
        ),
        ({**UNIVERSAL_AUTH, "validationInterval": "10s"}, "validationInterval must be at least"),
    ],
    ids=["http", "mixed-methods", "short-interval"],
)
def test_the_connection_rules_hold_as_for_an_infisical_connection(
    cluster_objects: Any, spec: dict[str, Any], message: str
) -> None:
    body = refusal(cluster_objects, spec)
    assert message in body, body


def _secret_sync(namespace: str, ref: dict[str, Any], *, via_source: bool) -> dict[str, Any]:
    infisical = {"connectionRef": ref, "projectSlug": "payments", "environment": "prod"}
    source = (
        {"infisical": infisical} if via_source else {"kubernetes": {"secrets": [{"name": "a"}]}}
    )
    destination = infisical if not via_source else {**infisical, "connectionRef": {"name": "own"}}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SecretSync",
        "metadata": {"name": f"s-{uuid.uuid4().hex[:8]}", "namespace": namespace},
        "spec": {"source": source, "destination": destination},
    }


@pytest.mark.parametrize("via_source", [False, True], ids=["destination", "source"])
def test_a_connection_ref_names_its_kind_or_none(
    kube: Any, namespace: str, via_source: bool
) -> None:
    api = client.CustomObjectsApi(kube)

    def create(ref: dict[str, Any]) -> dict[str, Any]:
        body = _secret_sync(namespace, ref, via_source=via_source)
        stored: dict[str, Any] = api.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "secretsyncs", body
        )
        return stored

    def ref_of(stored: dict[str, Any]) -> Any:
        holder = (
            stored["spec"]["source"]["infisical"] if via_source else stored["spec"]["destination"]
        )
        return holder["connectionRef"]

    cluster = {"kind": "ClusterInfisicalConnection", "name": "shared"}
    assert ref_of(create(cluster)) == cluster
    named = {"kind": "InfisicalConnection", "name": "own"}
    assert ref_of(create(named)) == named
    assert ref_of(create({"name": "own"})) == {"name": "own"}  # no default written
    body = refusal(create, {"kind": "Secret", "name": "own"})
    assert 'Unsupported value: \\"Secret\\"' in body, body


def test_the_cluster_connection_samples_are_accepted_as_written(
    kube: Any, namespace: str, cluster_objects: Any
) -> None:
    """deploy/samples/cluster-connection/, moved to this test's namespace: the Secret (in the
    operator's namespace), the connection and the SecretSync pass the API server's schema and
    CEL rules."""
    core, api = client.CoreV1Api(kube), client.CustomObjectsApi(kube)
    docs = [
        yaml.safe_load(path.read_text())
        for path in sorted((SAMPLES / "cluster-connection").glob("*.yaml"))
    ]
    secret, connection, sync = docs
    secret["metadata"]["namespace"] = namespace
    core.create_namespaced_secret(namespace, secret)
    stored = cluster_objects(connection["spec"], name=f"shared-{uuid.uuid4().hex[:6]}")
    assert stored["spec"]["namespaceSelector"] == connection["spec"]["namespaceSelector"]
    assert sync["metadata"]["namespace"] == SAMPLE_NAMESPACE
    sync["metadata"]["namespace"] = namespace
    created = api.create_namespaced_custom_object(GROUP, VERSION, namespace, "secretsyncs", sync)
    assert created["spec"]["destination"]["connectionRef"]["kind"] == "ClusterInfisicalConnection"
