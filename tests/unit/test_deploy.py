"""The deployable artefacts: CRDs, chart copies, samples, RBAC rules, Dockerfile."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from infisical_sync.testing.samples import SAMPLE_NAMESPACE, SAMPLES, sample_manifests

ROOT = Path(__file__).parents[2]
CRDS = sorted((ROOT / "deploy" / "crds").glob("*.yaml"))
CHART = ROOT / "deploy" / "helm" / "infisical-sync"


def test_chart_ships_the_same_crds() -> None:
    assert CRDS
    for crd in CRDS:
        assert (CHART / "crds" / crd.name).read_bytes() == crd.read_bytes(), (
            f"deploy/helm/infisical-sync/crds/{crd.name} differs from deploy/crds: copy it over"
        )


def _missing_descriptions(schema: dict[str, Any], path: str) -> list[str]:
    missing = []
    for name, prop in (schema.get("properties") or {}).items():
        where = f"{path}.{name}"
        if name == "metadata":
            continue
        if not prop.get("description"):
            missing.append(where)
        missing += _missing_descriptions(prop, where)
        if "items" in prop:
            missing += _missing_descriptions(prop["items"], where + "[]")
    return missing


@pytest.mark.parametrize("crd_path", CRDS, ids=lambda p: p.name)
def test_every_field_is_described_for_kubectl_explain(crd_path: Path) -> None:
    crd = yaml.safe_load(crd_path.read_text())
    for version in crd["spec"]["versions"]:
        schema = version["schema"]["openAPIV3Schema"]
        assert schema.get("description")
        assert _missing_descriptions(schema, crd["spec"]["names"]["kind"]) == []
        assert version["subresources"] == {"status": {}}
        assert {c["name"] for c in version["additionalPrinterColumns"]} >= {"Age"}


def _verbs(rules_file: str) -> dict[tuple[str, str], set[str]]:
    rules = yaml.safe_load((CHART / "files" / rules_file).read_text())
    return {
        (group, resource): set(rule["verbs"])
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }


def test_rbac_rules_are_least_privilege() -> None:
    verbs = _verbs("rbac-rules.yaml")
    assert "*" not in {verb for granted in verbs.values() for verb in granted}
    assert verbs[("", "secrets")] == {"get", "list", "watch"}  # Secret writes are opt-in
    assert "delete" not in verbs[("infisical-sync.dev", "secretsyncs")]
    assert verbs[("infisical-sync.dev", "secretsyncs/status")] == {"get", "patch"}
    # The ledger's ConfigMap: read, created, replaced; never listed, watched or deleted.
    assert verbs[("", "configmaps")] == {"get", "create", "update"}


def test_secret_writes_are_opt_in_and_only_patch() -> None:
    """rbac.secretWrites (off by default) adds patch on Secrets, for the import modes only."""
    assert yaml.safe_load((CHART / "values.yaml").read_text())["rbac"]["secretWrites"] is False
    assert _verbs("rbac-secret-writes.yaml") == {("", "secrets"): {"patch"}}  # never create/delete


def test_kubernetes_auth_token_requests_are_opt_in_and_only_create() -> None:
    """rbac.kubernetesAuth (off by default) adds create on serviceaccounts/token (TokenRequest),
    and nothing else: no read of service accounts, no other subresource."""
    rbac = yaml.safe_load((CHART / "values.yaml").read_text())["rbac"]
    assert rbac["kubernetesAuth"] is False and rbac["kubernetesAuthServiceAccountNames"] == []
    assert _verbs("rbac-kubernetes-auth.yaml") == {("", "serviceaccounts/token"): {"create"}}
    assert not any(
        resource.startswith("serviceaccounts") for _, resource in _verbs("rbac-rules.yaml")
    )


def test_samples_are_kubernetes_objects_in_one_namespace_that_name_each_other() -> None:
    """`kubectl apply -f deploy/samples/` applies every file (not the subdirectories): each is
    an object, in team-a (created by the first file), and the SecretSync uses the connection
    and Secret beside it."""
    docs = [yaml.safe_load(p.read_text()) for p in sorted(SAMPLES.iterdir()) if p.is_file()]
    assert all({"apiVersion", "kind", "metadata"} <= set(doc) for doc in docs)
    assert docs[0] == {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}}
    assert {doc["metadata"].get("namespace") for doc in docs[1:]} == {SAMPLE_NAMESPACE}
    kinds = {doc["kind"]: doc for doc in docs}
    assert set(kinds) == {"Namespace", "Secret", "InfisicalConnection", "SecretSync"}
    sync = kinds["SecretSync"]["spec"]
    connection = kinds["InfisicalConnection"]
    assert sync["destination"]["connectionRef"]["name"] == connection["metadata"]["name"]
    secrets = {doc["metadata"]["name"] for doc in docs if doc["kind"] == "Secret"}
    assert connection["spec"]["credentials"]["secretRef"]["name"] in secrets
    assert {item["name"] for item in sync["source"]["kubernetes"]["secrets"]} <= secrets


def test_the_kubernetes_auth_sample_is_a_connection_and_its_service_account_in_team_a() -> None:
    """`kubectl apply -f deploy/samples/kubernetes-auth/`, after deploy/samples/ (its namespace)."""
    docs = [yaml.safe_load(p.read_text()) for p in sorted((SAMPLES / "kubernetes-auth").iterdir())]
    assert [doc["kind"] for doc in docs] == ["ServiceAccount", "InfisicalConnection"]
    assert {doc["metadata"]["namespace"] for doc in docs} == {SAMPLE_NAMESPACE}
    account, connection = docs
    spec = connection["spec"]
    assert spec["method"] == "kubernetes-auth" and "credentials" not in spec
    assert spec["kubernetesAuth"]["serviceAccountRef"]["name"] == account["metadata"]["name"]
    base = {yaml.safe_load(p.read_text())["metadata"]["name"] for p in SAMPLES.glob("*.yaml")}
    assert connection["metadata"]["name"] not in base


def test_sample_manifests_move_to_another_namespace_and_instance() -> None:
    texts = sample_manifests("elsewhere", "http://10.0.0.1:9000", **{"prod": "staging"})
    docs = [yaml.safe_load(text) for text in texts]
    assert [doc["kind"] for doc in docs] == [
        "Secret",
        "InfisicalConnection",
        "Secret",
        "SecretSync",
    ]
    assert {doc["metadata"]["namespace"] for doc in docs} == {"elsewhere"}
    assert docs[1]["spec"]["instanceUrl"] == "http://10.0.0.1:9000"
    assert docs[3]["spec"]["destination"]["environment"] == "staging"


def test_dockerfile_is_multi_stage_and_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.count("FROM ") >= 2
    assert "USER 10001" in text
    final_stage = text.rsplit("FROM ", 1)[1]
    assert "pip install" not in final_stage and "gcc" not in final_stage


def test_leader_election_rbac_is_only_the_lease_verbs() -> None:
    # list: a replica starts only once no other shard configuration holds a Lease of the family
    assert _verbs("rbac-leader-election.yaml") == {
        ("coordination.k8s.io", "leases"): {"get", "list", "create", "update"}
    }
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["replicas"] == 2 and values["leaderElection"]["enabled"] is True
    assert values["podDisruptionBudget"]["enabled"] is True


def _crd(name: str) -> dict[str, Any]:
    found: dict[str, Any] = yaml.safe_load((ROOT / "deploy" / "crds" / name).read_text())
    return found


def _schema(crd: dict[str, Any]) -> dict[str, Any]:
    [version] = crd["spec"]["versions"]
    found: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return found


def _without_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [_without_descriptions(item) for item in node]
    return node


def test_the_chart_ships_no_crd_that_deploy_crds_lacks() -> None:
    shipped = {path.name for path in (CHART / "crds").glob("*.yaml")}
    assert shipped == {crd.name for crd in CRDS}
    assert "clusterinfisicalconnection.yaml" in shipped


def test_cluster_connection_crd_is_cluster_scoped_with_its_names() -> None:
    crd = _crd("clusterinfisicalconnection.yaml")
    assert crd["metadata"]["name"] == "clusterinfisicalconnections.infisical-sync.dev"
    assert crd["spec"]["group"] == "infisical-sync.dev" and crd["spec"]["scope"] == "Cluster"
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["singular"]) == (
        "ClusterInfisicalConnection",
        "clusterinfisicalconnections",
        "clusterinfisicalconnection",
    )
    assert names["shortNames"] == ["cinfconn"] and names["categories"] == ["infisical-sync"]
    [version] = crd["spec"]["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(columns) == ["URL", "Ready", "Reason", "Since", "SecretSyncs", "Denied", "Age"]
    assert columns["SecretSyncs"]["jsonPath"] == ".status.secretSyncs"
    assert columns["Denied"]["jsonPath"] == ".status.deniedSecretSyncs"
    assert columns["Denied"]["priority"] == 1
    assert not any(c.get("priority") for name, c in columns.items() if name != "Denied")


def test_cluster_connection_spec_is_the_connections_plus_a_namespace_selector() -> None:
    """Same fields, CEL rules and defaults as InfisicalConnection (only descriptions differ:
    Secrets and service accounts are in the operator's namespace), plus namespaceSelector."""
    namespaced = _schema(_crd("infisicalconnection.yaml"))["properties"]["spec"]
    cluster = _schema(_crd("clusterinfisicalconnection.yaml"))["properties"]["spec"]
    selector = cluster["properties"]["namespaceSelector"]
    rest = {**cluster, "properties": dict(cluster["properties"])}
    del rest["properties"]["namespaceSelector"]
    assert _without_descriptions(rest) == _without_descriptions(namespaced)
    assert rest["x-kubernetes-validations"] == namespaced["x-kubernetes-validations"]
    assert "namespaceSelector" not in cluster.get("required", [])  # absent: no namespace
    for field in (
        cluster["properties"]["credentials"]["properties"]["secretRef"],
        cluster["properties"]["kubernetesAuth"]["properties"]["serviceAccountRef"],
        cluster["properties"]["tls"]["properties"]["caSecretRef"],
    ):
        assert "operator's namespace" in " ".join(field["description"].split())
    assert selector["x-kubernetes-map-type"] == "atomic"
    assert "kubernetes.io/metadata.name" in selector["description"]
    assert selector["properties"]["matchLabels"]["additionalProperties"] == {"type": "string"}
    expression = selector["properties"]["matchExpressions"]["items"]
    assert expression["required"] == ["key", "operator"]
    assert expression["properties"]["operator"]["enum"] == ["In", "NotIn", "Exists", "DoesNotExist"]
    assert expression["properties"]["values"]["items"] == {"type": "string"}
    [rule] = expression["x-kubernetes-validations"]
    assert "'In', 'NotIn'" in rule["rule"] and "size(self.values)" in rule["rule"]


def test_cluster_connection_status_is_the_connections_plus_counts() -> None:
    namespaced = _schema(_crd("infisicalconnection.yaml"))["properties"]["status"]
    cluster = _schema(_crd("clusterinfisicalconnection.yaml"))["properties"]["status"]
    assert cluster["default"] == namespaced["default"] == {"observedGeneration": -1}
    counts = {"secretSyncs", "namespaces", "deniedSecretSyncs"}
    assert set(cluster["properties"]) == set(namespaced["properties"]) | counts
    for name in counts:
        assert cluster["properties"][name]["type"] == "integer"
    for name, field in namespaced["properties"].items():
        assert _without_descriptions(cluster["properties"][name]) == _without_descriptions(field)


@pytest.mark.parametrize("where", ["destination", "source"])
def test_a_secret_sync_names_the_kind_of_its_connection(where: str) -> None:
    """connectionRef.kind: optional and without a default (absent means InfisicalConnection, so
    objects stored before it and the objects GitOps tools compare stay as they are)."""
    spec = _schema(_crd("secretsync.yaml"))["properties"]["spec"]["properties"]
    holder = (
        spec["destination"] if where == "destination" else spec["source"]["properties"]["infisical"]
    )
    ref = holder["properties"]["connectionRef"]
    assert ref["required"] == ["name"]
    kind = ref["properties"]["kind"]
    assert kind["enum"] == ["InfisicalConnection", "ClusterInfisicalConnection"]
    assert "default" not in kind
    assert "ClusterInfisicalConnection" in ref["description"]


def test_cluster_connection_rbac_reads_namespaces_and_no_secrets() -> None:
    assert _verbs("rbac-cluster-connections.yaml") == {
        ("infisical-sync.dev", "clusterinfisicalconnections"): {"get", "list", "watch", "patch"},
        ("infisical-sync.dev", "clusterinfisicalconnections/status"): {"get", "patch"},
        ("", "namespaces"): {"get", "list", "watch"},
    }
    assert _verbs("rbac-operator-namespace.yaml") == {("", "secrets"): {"get", "list", "watch"}}
    assert _verbs("rbac-cluster-events.yaml") == {
        ("", "events"): {"create"},
        ("events.k8s.io", "events"): {"create"},
    }
    # The operator's namespaced rules never name the cluster-scoped kind.
    assert not any("clusterinfisical" in resource for _, resource in _verbs("rbac-rules.yaml"))
    assert yaml.safe_load((CHART / "values.yaml").read_text())["clusterConnections"] == {
        "enabled": True
    }
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["properties"]["clusterConnections"]["properties"] == {
        "enabled": {"type": "boolean"}
    }


def _readme_release_namespace() -> str:
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"helm install infisical-sync deploy/helm/infisical-sync -n (\S+)", readme)
    assert found
    return found[1]


def test_the_cluster_connection_samples_name_each_other() -> None:
    """`kubectl apply -f deploy/samples/cluster-connection/` after deploy/samples/: the
    credentials in the operator's namespace (the README's release namespace), the connection,
    and a SecretSync in team-a that uses it with the Secret deploy/samples/ made there."""
    files = sorted((SAMPLES / "cluster-connection").iterdir())
    assert [path.name for path in files] == [
        "01-credentials-secret.yaml",
        "02-clusterinfisicalconnection.yaml",
        "03-secretsync.yaml",
    ]
    secret, connection, sync = (yaml.safe_load(path.read_text()) for path in files)
    assert all(path.read_text().startswith("#") for path in files)  # each says what it is for
    assert [doc["kind"] for doc in (secret, connection, sync)] == [
        "Secret",
        "ClusterInfisicalConnection",
        "SecretSync",
    ]
    assert secret["metadata"]["namespace"] == _readme_release_namespace()
    assert "namespace" not in connection["metadata"]
    spec = connection["spec"]
    assert spec["credentials"]["secretRef"]["name"] == secret["metadata"]["name"]
    labels = spec["namespaceSelector"]["matchLabels"]
    [(key, value)] = labels.items()
    label_command = f"kubectl label namespace {SAMPLE_NAMESPACE} {key}={value}"
    assert label_command in files[1].read_text()
    assert label_command in (ROOT / "README.md").read_text()
    assert sync["metadata"]["namespace"] == SAMPLE_NAMESPACE
    assert sync["spec"]["destination"]["connectionRef"] == {
        "kind": "ClusterInfisicalConnection",
        "name": connection["metadata"]["name"],
    }
    base = [yaml.safe_load(p.read_text()) for p in sorted(SAMPLES.glob("*.yaml"))]
    base_secrets = {doc["metadata"]["name"] for doc in base if doc["kind"] == "Secret"}
    assert {item["name"] for item in sync["spec"]["source"]["kubernetes"]["secrets"]} <= (
        base_secrets
    )
    # Not the base sample's destination: two SecretSyncs writing the same keys conflict.
    [base_sync] = [doc for doc in base if doc["kind"] == "SecretSync"]
    place = ("projectSlug", "environment", "secretPath")
    assert [sync["spec"]["destination"][k] for k in place] != [
        base_sync["spec"]["destination"][k] for k in place
    ]
    assert sync["metadata"]["name"] != base_sync["metadata"]["name"]
