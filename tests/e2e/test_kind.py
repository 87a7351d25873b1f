"""End to end on kind: the real image, a Helm install, a fake Infisical in the cluster.

Opt-in (`pytest --e2e tests/e2e`): needs a Docker engine, `kind`, and the helm/kubectl that
`make kube-binaries` builds. This machine has no Docker engine, so CI skips these.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infisical_sync.testing.controlplane import ensure_helm, ensure_kube_binaries

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).parents[2]
CLUSTER = "infisical-sync-e2e"
IMAGE = "infisical-sync:e2e"
FAKE = """
apiVersion: v1
kind: ConfigMap
metadata: {name: fake-seed}
data:
  seed.yaml: |
    projects:
      - {slug: payments, id: 0b7f5a52-2c1d-4e8f-9a3b-6c5d4e3f2a10, environments: [prod]}
    identities:
      - clientId: 6a1f0e8e-5d43-4b7a-9c1e-0d2f3a4b5c6d
        clientSecret: demo-client-secret-do-not-use
        projects: {payments: {}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: fake-infisical}
spec:
  selector: {matchLabels: {app: fake-infisical}}
  template:
    metadata: {labels: {app: fake-infisical}}
    spec:
      containers:
        - name: fake
          image: infisical-sync:e2e
          imagePullPolicy: Never
          command: [infisical-sync, fake-infisical, --seed, /seed/seed.yaml, --host, 0.0.0.0, --port, "8088"]
          volumeMounts: [{name: seed, mountPath: /seed}]
      volumes: [{name: seed, configMap: {name: fake-seed}}]
---
apiVersion: v1
kind: Service
metadata: {name: fake-infisical}
spec:
  selector: {app: fake-infisical}
  ports: [{port: 8088}]
"""


def run(*args: str, stdin: str | None = None) -> str:
    return subprocess.run(args, input=stdin, capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    if not shutil.which("docker") or not shutil.which("kind"):
        pytest.skip("needs docker and kind")
    kubectl = str(ensure_kube_binaries(with_kubectl=True)["kubectl"])
    run("docker", "build", "-t", IMAGE, str(ROOT))
    run("kind", "create", "cluster", "--name", CLUSTER, "--wait", "120s")
    try:
        run("kind", "load", "docker-image", IMAGE, "--name", CLUSTER)
        yield kubectl
    finally:
        subprocess.run(["kind", "delete", "cluster", "--name", CLUSTER], check=False)


def test_helm_install_and_sync(cluster: str) -> None:
    kubectl, helm = cluster, str(ensure_helm())
    context = f"kind-{CLUSTER}"
    k = [kubectl, "--context", context]
    run(
        helm,
        "install",
        "infisical-sync",
        str(ROOT / "deploy" / "helm" / "infisical-sync"),
        "--kube-context",
        context,
        "-n",
        "infisical-sync",
        "--create-namespace",
        "--set",
        "image.repository=infisical-sync",
        "--set",
        "image.tag=e2e",
        "--set",
        "image.pullPolicy=Never",
        "--wait",
        "--timeout",
        "180s",
    )
    run(*k, "create", "namespace", "demo")
    run(*k, "-n", "demo", "apply", "-f", "-", stdin=FAKE)
    run(*k, "-n", "demo", "rollout", "status", "deployment/fake-infisical", "--timeout=120s")
    for sample in sorted((ROOT / "deploy" / "samples").glob("0*.yaml")):
        text = sample.read_text().replace(
            "http://127.0.0.1:8088", "http://fake-infisical.demo.svc:8088"
        )
        run(*k, "-n", "demo", "apply", "-f", "-", stdin=text)
    deadline = time.monotonic() + 120
    status: dict[str, object] = {}
    while time.monotonic() < deadline:
        raw = run(
            *k,
            "-n",
            "demo",
            "get",
            "ssync",
            "app-secrets-to-selfhosted",
            "-o",
            "jsonpath={.status}",
        )
        status = json.loads(raw or "{}")
        if status.get("syncStatus") == "Succeeded":
            break
        time.sleep(2)
    assert status.get("syncStatus") == "Succeeded", status
    assert status.get("managedKeys") == ["API_KEY", "DB_PASSWORD", "LOG_LEVEL"]
