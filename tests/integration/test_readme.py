"""The README's Install and Configure commands, run as written on fresh test control planes.

Every `bash` block in those two sections runs with `bash -euo pipefail` from the repo root,
with kubectl and helm on PATH and KUBECONFIG pointing at a control plane of its own. A block
may be left out only with a `<!-- readme-test: skip (reason) -->` line right above it, and only
two are: the install from the published chart (no registry here; the same chart is installed
from deploy/helm) and the image build (it needs Docker and a registry; the node tier builds
that Dockerfile)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from infisical_sync.testing.controlplane import (
    HELM_RELEASES,
    REPO_ROOT,
    ControlPlane,
    ensure_helm,
    ensure_kube_binaries,
)

pytestmark = pytest.mark.controlplane
README = REPO_ROOT / "README.md"
SKIP = re.compile(r"<!-- readme-test: skip \((?P<reason>[^)]+)\) -->")
RELEASE_LABEL = "app.kubernetes.io/instance=infisical-sync"


@dataclass(frozen=True)
class Block:
    section: str
    script: str
    skip_reason: str | None


def readme_blocks(text: str) -> list[Block]:
    """The fenced `bash` blocks of Install and Configure (their subsections included)."""
    blocks: list[Block] = []
    section = ""
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("## "):
            section = line[3:].strip()
        if line.strip() == "```bash" and section in ("Install", "Configure"):
            end = lines.index("```", index + 1)
            previous = lines[index - 1] if index else ""
            skip = SKIP.fullmatch(previous.strip())
            script = "\n".join(lines[index + 1 : end]) + "\n"
            blocks.append(Block(section, script, skip["reason"] if skip else None))
            index = end
        index += 1
    return blocks


BLOCKS = readme_blocks(README.read_text())
INSTALL = [block for block in BLOCKS if block.section == "Install" and not block.skip_reason]
CONFIGURE = [block for block in BLOCKS if block.section == "Configure" and not block.skip_reason]


def test_every_block_runs_but_the_published_chart_and_the_image_build() -> None:
    skipped = [block for block in BLOCKS if block.skip_reason]
    assert [block.script.split()[:3] for block in skipped] == [
        ["helm", "install", "infisical-sync"],  # from oci://: not reachable from here
        ["docker", "build", "-t"],
    ]
    assert "oci://" in skipped[0].script
    assert len(INSTALL) >= 4 and len(CONFIGURE) >= 1
    assert any("kubectl apply -f deploy/samples/" in block.script for block in CONFIGURE)


def test_blocks_are_found_with_their_skip_marks() -> None:
    text = "\n".join(
        [
            "## Install",
            "```bash",
            "echo one",
            "```",
            "<!-- readme-test: skip (no registry here) -->",
            "```bash",
            "echo two",
            "```",
            "## Elsewhere",
            "```bash",
            "echo three",
            "```",
            "## Configure",
            "### Sub",
            "```bash",
            "echo four",
            "```",
        ]
    )
    assert readme_blocks(text) == [
        Block("Install", "echo one\n", None),
        Block("Install", "echo two\n", "no registry here"),
        Block("Configure", "echo four\n", None),
    ]


@pytest.fixture(scope="module", params=sorted(HELM_RELEASES), ids=lambda major: f"helm{major}")
def tool_path(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> str:
    """A PATH with the test kubectl and helm first, as `kubectl` and `helm`: once for each
    supported Helm major."""
    bin_dir = tmp_path_factory.mktemp("bin")
    (bin_dir / "kubectl").symlink_to(ensure_kube_binaries(with_kubectl=True)["kubectl"])
    (bin_dir / "helm").symlink_to(ensure_helm(request.param))
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


@dataclass
class Shell:
    env: dict[str, str]

    def run(self, script: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def ok(self, script: str) -> str:
        result = self.run(script)
        assert result.returncode == 0, f"{script}\nexited {result.returncode}:\n{result.stderr}"
        return result.stdout

    def get(self, *args: str) -> dict[str, Any]:
        return dict(json.loads(self.ok(f"kubectl get {' '.join(args)} -o json")))


@pytest.fixture
def shell(tool_path: str, tmp_path: Path) -> Iterator[Shell]:
    """A fresh control plane with nothing installed (the blocks install the CRDs), and a
    shell bound to it the way a user's is: KUBECONFIG, a HOME of its own for helm."""
    with ControlPlane() as plane:
        yield Shell(
            {
                "PATH": tool_path,
                "HOME": str(tmp_path),
                "KUBECONFIG": str(plane.kubeconfig),
                "LANG": "C.UTF-8",
            }
        )


def names(listing: dict[str, Any]) -> set[str]:
    return {item["metadata"]["name"] for item in listing["items"]}


@pytest.mark.parametrize(
    "block", INSTALL, ids=[f"install-{number}" for number in range(1, len(INSTALL) + 1)]
)
def test_install_then_configure_as_written(shell: Shell, block: Block) -> None:
    shell.ok(block.script)

    deployment = shell.get("deployment", "infisical-sync", "-n", "infisical-sync")
    assert deployment["metadata"]["namespace"] == "infisical-sync"
    assert shell.get("serviceaccount", "infisical-sync", "-n", "infisical-sync")
    crds = names(shell.get("crd"))
    assert {"secretsyncs.infisical-sync.dev", "infisicalconnections.infisical-sync.dev"} <= crds
    if "watchNamespaces" in block.script:
        for namespace in ("team-a", "team-b"):
            assert "infisical-sync" in names(shell.get("role", "-n", namespace))
    if "image.repository" in block.script:
        image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image == "registry.example.com/platform/infisical-sync:0.1.0"
    if block.script.lstrip().startswith("helm install") or "\nhelm install" in block.script:
        releases = json.loads(shell.ok("helm list -n infisical-sync -o json"))
        assert [(r["name"], r["status"]) for r in releases] == [("infisical-sync", "deployed")]

    for configure in CONFIGURE:
        shell.ok(configure.script)
    assert names(shell.get("secretsync", "-n", "team-a")) == {"app-secrets-to-selfhosted"}
    assert names(shell.get("infisicalconnection", "-n", "team-a")) == {"selfhosted"}
    secrets = names(shell.get("secret", "-n", "team-a"))
    assert {"app-secrets", "infisical-sync-identity"} <= secrets


def test_rendered_namespaced_install_applies_without_a_namespace_flag(shell: Shell) -> None:
    """The plain pipeline with watchNamespaces: the Roles name their own namespaces."""
    shell.ok(
        "kubectl apply -f deploy/crds/\n"
        "kubectl create namespace infisical-sync\n"
        "kubectl create namespace team-a\n"
        "helm template infisical-sync deploy/helm/infisical-sync -n infisical-sync"
        " --set rbac.clusterWide=false --set 'watchNamespaces={team-a}' | kubectl apply -f -\n"
    )
    assert "infisical-sync" in names(shell.get("rolebinding", "-n", "team-a"))
    assert "infisical-sync" in names(shell.get("deployment", "-n", "infisical-sync"))
    # In default only the Role for cluster connections' Events (the one namespace the API server
    # takes them in): every other Role names its own namespace.
    assert names(shell.get("role", "-n", "default")) == {"infisical-sync-cluster-connection-events"}


def test_a_missing_watched_namespace_stops_the_install_before_the_release_and_its_rbac(
    shell: Shell,
) -> None:
    """Helm installs the chart's crds/ before it renders, so the CRDs are there; the release,
    its RBAC and its Deployment are not."""
    crds = {"secretsyncs.infisical-sync.dev", "infisicalconnections.infisical-sync.dev"}
    assert not names(shell.get("crd")) & crds
    install = (
        "helm install infisical-sync deploy/helm/infisical-sync -n infisical-sync"
        " --create-namespace --set rbac.clusterWide=false"
        " --set 'watchNamespaces={team-a,team-b}'"
    )
    shell.ok("kubectl create namespace team-a")
    refused = shell.run(install)
    assert refused.returncode != 0
    assert 'namespace "team-b" does not exist' in refused.stderr, refused.stderr
    assert json.loads(shell.ok("helm list -A -o json")) == []  # failed ones included
    assert "not found" in shell.run("helm status infisical-sync -n infisical-sync").stderr
    assert not names(shell.get("clusterrole", "-l", RELEASE_LABEL))
    assert not names(shell.get("role", "-n", "team-a", "-l", RELEASE_LABEL))
    assert not names(shell.get("rolebinding", "-n", "team-a", "-l", RELEASE_LABEL))
    assert not names(shell.get("clusterrolebinding", "-l", RELEASE_LABEL))
    assert not names(shell.get("deployment", "-A", "-l", RELEASE_LABEL))
    assert crds <= names(shell.get("crd"))

    shell.ok("kubectl create namespace team-b")
    notes = shell.ok(install)  # the same command again, now that the namespace is there
    assert "kubectl apply -f deploy/samples/" in notes  # the samples' team-a is watched
    releases = json.loads(shell.ok("helm list -n infisical-sync -o json"))
    assert [(r["name"], r["status"]) for r in releases] == [("infisical-sync", "deployed")]
    assert "infisical-sync" in names(shell.get("role", "-n", "team-b"))


def test_the_release_namespace_may_be_watched_and_created_by_helm(shell: Shell) -> None:
    """--create-namespace makes the release namespace after rendering: not a missing one."""
    notes = shell.ok(
        "helm install infisical-sync deploy/helm/infisical-sync -n infisical-sync"
        " --create-namespace --set rbac.clusterWide=false"
        " --set 'watchNamespaces={infisical-sync}'"
    )
    assert "infisical-sync" in names(shell.get("role", "-n", "infisical-sync"))
    # NOTES suggest the samples only where they would be watched (their namespace is team-a).
    assert "Watching: infisical-sync" in notes
    assert "deploy/samples" not in notes
