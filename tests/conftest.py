"""Shared fixtures: the real local control plane (session-wide) and a namespace per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from infisical_sync.testing.controlplane import ControlPlane, ControlPlaneError, install_crds

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--e2e", action="store_true", help="run the kind + Docker end-to-end tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--e2e"):
        return
    skip = pytest.mark.skip(reason="kind end-to-end tests are opt-in: pass --e2e (needs Docker)")
    for item in items:
        if "e2e" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    plane = ControlPlane()
    try:
        plane.start()
    except ControlPlaneError as exc:
        if IN_CI:
            raise  # under CI the control-plane tests run; they never skip
        pytest.skip(f"local control plane unavailable: {exc}")
    try:
        install_crds(plane.kubeconfig)
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def kube(control_plane: ControlPlane) -> Any:
    """An admin ApiClient for the local control plane."""
    from kubernetes import config

    return config.new_client_from_config(config_file=str(control_plane.kubeconfig))


@pytest.fixture
def namespace(kube: Any) -> Iterator[str]:
    from kubernetes import client

    name = f"t-{uuid.uuid4().hex[:10]}"
    core = client.CoreV1Api(kube)
    core.create_namespace({"metadata": {"name": name}})
    yield name
    # No namespace controller runs here: the namespace stays Terminating, which is harmless.
    core.delete_namespace(name)
