"""The deployable artefacts: CRDs, chart copies, samples, RBAC rules, Dockerfile."""

from __future__ import annotations

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
