"""The Helm chart renders, lints, and its manifests pass the real API server's validation."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from infisical_sync.testing.controlplane import ControlPlane, ensure_helm, ensure_kube_binaries

pytestmark = pytest.mark.controlplane
CHART = Path(__file__).parents[2] / "deploy" / "helm" / "infisical-sync"


@pytest.fixture(scope="module")
def helm() -> str:
    return str(ensure_helm())


def render(helm: str, *values: str) -> list[dict[str, Any]]:
    args = [helm, "template", "sync", str(CHART), "--namespace", "infisical-sync"]
    for value in values:
        args += ["--set", value]
    output = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(output) if doc]


def test_lint(helm: str) -> None:
    result = subprocess.run([helm, "lint", str(CHART)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cluster_wide_defaults(helm: str) -> None:
    docs = render(helm)
    kinds = sorted(doc["kind"] for doc in docs)
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Deployment", "Service", "ServiceAccount"]
    deployment = next(doc for doc in docs if doc["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert "--all-namespaces" in container["args"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    role = next(doc for doc in docs if doc["kind"] == "ClusterRole")
    rules = yaml.safe_load((CHART / "files" / "rbac-rules.yaml").read_text())
    assert role["rules"] == rules


def test_namespaced_install(helm: str) -> None:
    docs = render(
        helm,
        "rbac.clusterWide=false",
        "watchNamespaces={team-a,team-b}",
        "metrics.serviceMonitor.enabled=true",
    )
    roles = [doc for doc in docs if doc["kind"] == "Role"]
    assert sorted(role["metadata"]["namespace"] for role in roles) == ["team-a", "team-b"]
    assert not [doc for doc in docs if doc["kind"].startswith("Cluster")]
    args = next(doc for doc in docs if doc["kind"] == "Deployment")["spec"]["template"]["spec"][
        "containers"
    ][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args
    assert any(doc["kind"] == "ServiceMonitor" for doc in docs)


def test_namespaced_without_namespaces_fails(helm: str) -> None:
    result = subprocess.run(
        [helm, "template", "sync", str(CHART), "--set", "rbac.clusterWide=false"],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "needs watchNamespaces" in result.stderr


def test_manifests_pass_server_side_validation(
    helm: str, control_plane: ControlPlane, kube: Any
) -> None:
    from kubernetes import client

    client.CoreV1Api(kube).create_namespace({"metadata": {"name": "infisical-sync"}})
    kubectl = str(ensure_kube_binaries(with_kubectl=True)["kubectl"])
    manifests = subprocess.run(
        [helm, "template", "sync", str(CHART), "--namespace", "infisical-sync", "--include-crds"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = subprocess.run(
        [
            kubectl,
            "--kubeconfig",
            str(control_plane.kubeconfig),
            "apply",
            "--dry-run=server",
            "-f",
            "-",
        ],
        input=manifests,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "deployment.apps/sync-infisical-sync created (server dry run)" in result.stdout
