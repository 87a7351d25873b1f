"""The node scenarios (tests/node/scenarios.py) on kind, for hosts with a Docker engine.

Opt-in (`pytest --e2e tests/e2e`): needs Docker, `kind`, and the helm/kubectl that
`make kube-binaries` builds. The image is built from the Dockerfile with `docker build`; the
fake Infisical runs in this process (it needs the `testing` extra, which the image does not
ship) and listens on the kind network's gateway, the host's address that kind's pods reach.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path

import pytest
import yaml
from tests.node.scenarios import SCENARIOS, NodeEnv, run_scenario

from infisical_sync.testing.controlplane import ensure_helm, ensure_kube_binaries
from infisical_sync.testing.fake_infisical import BackgroundFake, FakeInfisical
from infisical_sync.testing.samples import DEMO_SEED
from infisical_sync.testing.seed import load_seed

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).parents[2]
CLUSTER = "infisical-sync-e2e"
REPOSITORY, TAG = "infisical-sync", "e2e"
_ports = count(18088)


def run(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def kind_cluster() -> Iterator[str]:
    if not shutil.which("docker") or not shutil.which("kind"):
        pytest.skip("needs docker and kind")
    run("docker", "build", "-t", f"{REPOSITORY}:{TAG}", str(ROOT))
    run("kind", "create", "cluster", "--name", CLUSTER, "--wait", "120s")
    try:
        run("kind", "load", "docker-image", f"{REPOSITORY}:{TAG}", "--name", CLUSTER)
        yield run(
            "docker", "network", "inspect", "kind", "-f", "{{(index .IPAM.Config 0).Gateway}}"
        ).strip()
    finally:
        subprocess.run(["kind", "delete", "cluster", "--name", CLUSTER], check=False)


def kill_container(container_id: str) -> None:
    node = f"{CLUSTER}-control-plane"
    run(
        "docker",
        "exec",
        node,
        "ctr",
        "-n",
        "k8s.io",
        "tasks",
        "kill",
        "-s",
        "SIGKILL",
        container_id,
    )


@pytest.fixture
def kind_env(kind_cluster: str) -> Iterator[NodeEnv]:
    gateway = kind_cluster
    fake: FakeInfisical = FakeInfisical(host=gateway, port=next(_ports))
    with BackgroundFake(fake) as server:
        load_seed(server.state, yaml.safe_load(DEMO_SEED.read_text()))
        context = ["--context", f"kind-{CLUSTER}"]
        yield NodeEnv(
            kubectl=[str(ensure_kube_binaries(with_kubectl=True)["kubectl"]), *context],
            helm=[str(ensure_helm()), "--kube-context", f"kind-{CLUSTER}"],
            image_values={"image.repository": REPOSITORY, "image.tag": TAG},
            fake=server,
            fake_url=server.url,
            kill_container=kill_container,
        )


@pytest.mark.timeout(900)
@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_scenario(kind_env: NodeEnv, scenario: Callable[[NodeEnv], None]) -> None:
    run_scenario(kind_env, scenario)
