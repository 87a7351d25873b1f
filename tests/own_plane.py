"""What the modules that start and stop their own operators share: a control plane of their
own, namespaces that are emptied afterwards, and a fake Infisical seeded with one project and
one identity."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

from kubernetes import client

from infisical_sync.testing.controlplane import (
    ControlPlane,
    grant_operator_rbac,
    install_crds,
)
from infisical_sync.testing.fake_infisical import BackgroundFake, FakeInfisical
from tests.conftest import wait_for
from tests.kube_helpers import GROUP, VERSION, delete, patch

SYNCS, CONNECTIONS = "secretsyncs", "infisicalconnections"


@contextlib.contextmanager
def own_plane() -> Iterator[ControlPlane]:
    """A control plane with the CRDs and the operator's RBAC (the chart's rules): operators
    started and stopped there share no object with the session's operator."""
    with ControlPlane() as plane:
        install_crds(plane.kubeconfig)
        grant_operator_rbac(plane.kubeconfig)
        yield plane


@contextlib.contextmanager
def scratch_namespace(kube: Any) -> Iterator[str]:
    """A namespace whose SecretSyncs and InfisicalConnections are gone afterwards (deleted,
    finalizers dropped): the next test's operator must not find them (their fake is gone)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    client.CoreV1Api(kube).create_namespace({"metadata": {"name": name}})
    yield name
    custom = client.CustomObjectsApi(kube)

    def left(plural: str) -> list[str]:
        found = custom.list_namespaced_custom_object(GROUP, VERSION, name, plural)["items"]
        return [item["metadata"]["name"] for item in found]

    for plural in (SYNCS, CONNECTIONS):
        for item in left(plural):
            with contextlib.suppress(client.exceptions.ApiException):  # gone meanwhile
                delete(kube, name, plural, item)
                patch(kube, name, plural, item, {"metadata": {"finalizers": None}})
    wait_for(lambda: not left(SYNCS) and not left(CONNECTIONS))


@contextlib.contextmanager
def seeded_fake(
    slug: str, project_id: str, client_id: str, client_secret: str, profile: str = "current"
) -> Iterator[FakeInfisical]:
    """A fake Infisical on loopback with one project the identity may use."""
    with BackgroundFake(FakeInfisical(profile=profile)) as server:
        server.state.add_project(slug, project_id=project_id)
        server.state.add_identity(client_id, client_secret, projects={project_id: {}})
        yield server
