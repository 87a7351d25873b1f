"""The node tier: a control plane, a real node (containerd + kubelet in a network namespace of its
own), the image built from the repo's Dockerfile. Needs root and the node packages (`make deps`);
under CI=true it never skips."""

from __future__ import annotations

import os
from collections.abc import Iterator
from itertools import count

import pytest

from infisical_sync.testing.controlplane import ControlPlaneError, ensure_helm, ensure_kube_binaries
from infisical_sync.testing.fake_infisical import BackgroundFake, FakeInfisical
from infisical_sync.testing.node import Cluster, check_prerequisites, running_cluster
from infisical_sync.testing.samples import DEMO_SEED
from tests.node.scenarios import NodeEnv

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
IMAGE_REPOSITORY, IMAGE_TAG = "localhost/infisical-sync", "test"
_node_ports = count(8088)


def require_node() -> None:
    try:
        check_prerequisites()
        ensure_kube_binaries(node=True)
    except ControlPlaneError as exc:
        if IN_CI:
            raise  # under CI the node tier runs; it never skips
        pytest.skip(f"the test node is unavailable here: {exc}")


# Module scope: the lifecycle tests start nodes of their own, never two at once.
@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    require_node()
    from infisical_sync.testing.images import ensure_operator_image

    image = ensure_operator_image(f"{IMAGE_REPOSITORY}:{IMAGE_TAG}")
    with running_cluster() as cluster:
        cluster.node.load_image(image)
        yield cluster


@pytest.fixture
def fake() -> Iterator[FakeInfisical]:
    import yaml

    from infisical_sync.testing.seed import load_seed

    with BackgroundFake() as server:
        load_seed(server.state, yaml.safe_load(DEMO_SEED.read_text()))
        yield server


@pytest.fixture
def node_env(cluster: Cluster, fake: FakeInfisical) -> NodeEnv:
    kubectl = str(ensure_kube_binaries(with_kubectl=True)["kubectl"])
    kubeconfig = str(cluster.kubeconfig)
    address = cluster.node.expose(fake.port, next(_node_ports))
    return NodeEnv(
        kubectl=[kubectl, "--kubeconfig", kubeconfig],
        helm=[str(ensure_helm()), "--kubeconfig", kubeconfig],
        image_values={"image.repository": IMAGE_REPOSITORY, "image.tag": IMAGE_TAG},
        fake=fake,
        fake_url=f"http://{address}",
        kill_container=cluster.node.kill_container,
    )
