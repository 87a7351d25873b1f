"""An operator restart: the first cycle of an object in sync is one conditional list (304) and
nothing else, from what the status recorded (ETags are not kept only in memory)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import operator_process, wait_for
from tests.kube_helpers import create, patch, put_secret, status
from tests.own_plane import own_plane, scratch_namespace, seeded_fake

from infisical_sync.testing.controlplane import (
    OPERATOR_USER,
    ControlPlane,
    api_client,
)
from infisical_sync.testing.fake_infisical import FakeInfisical, RequestRecord

pytestmark = pytest.mark.controlplane
CONNECTIONS, SYNCS = "infisicalconnections", "secretsyncs"
CLIENT_ID = "66666666-6666-4666-8666-666666666666"
CLIENT_SECRET = "canary-restart-client-secret-8d9c"
PROJECT = "p-restart"
REQUESTED = "infisical-sync.dev/sync-requested-at"


@pytest.fixture(scope="module")
def plane(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    with own_plane() as own:
        yield own


@pytest.fixture
def fake() -> Iterator[FakeInfisical]:
    with seeded_fake("restart", PROJECT, CLIENT_ID, CLIENT_SECRET) as server:
        yield server


def lists_of(fake: FakeInfisical, path: str) -> list[RequestRecord]:
    return [
        r
        for r in fake.log
        if r.method == "GET" and "/secrets" in r.path and r.query.get("secretPath") == path
    ]


def writes_to(fake: FakeInfisical, path: str) -> list[RequestRecord]:
    """Batch writes (the path is in their body): those after `path`'s last list before them."""
    found = []
    for index, record in enumerate(fake.log):
        if record.method == "GET" or "/secrets" not in record.path:
            continue
        listed = [r for r in fake.log[:index] if r.method == "GET" and "/secrets" in r.path]
        if listed and listed[-1].query.get("secretPath") == path:
            found.append(record)
    return found


@pytest.fixture
def namespace(plane: ControlPlane) -> Iterator[str]:
    with scratch_namespace(api_client(plane.kubeconfig)) as name:
        yield name


def start_syncing(kube: Any, namespace: str, fake: FakeInfisical, syncs: dict[str, str]) -> None:
    """A connection and one SecretSync per (Secret name -> destination path), each synced and
    then run twice more with nothing to write (the second proves the first one finished)."""
    put_secret(kube, namespace, "identity", {"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET})
    connection = {
        "instanceUrl": fake.url,
        "allowInsecureHttp": True,
        "credentials": {"secretRef": {"name": "identity"}},
        "validationInterval": "1h",
    }
    create(kube, namespace, CONNECTIONS, "InfisicalConnection", "dest", connection)
    for secret, path in syncs.items():
        put_secret(kube, namespace, secret, {"A": "1"})
        sync = {
            "source": {"kubernetes": {"secrets": [{"name": secret}]}},
            "destination": {
                "connectionRef": {"name": "dest"},
                "projectId": PROJECT,
                "environment": "prod",
                "secretPath": path,
            },
            "syncInterval": "10s",  # the restart spreads first runs over at most this
        }
        create(kube, namespace, SYNCS, "SecretSync", secret, sync)
    for secret, path in syncs.items():
        wait_for(
            lambda s=secret: status(kube, namespace, SYNCS, s).get("syncStatus") == "Succeeded"
        )
        assert fake.state.get_secrets(PROJECT, "prod", path) == {"A": "1"}
        for requested in ("r1", "r2"):
            annotations = {"metadata": {"annotations": {REQUESTED: requested}}}
            patch(kube, namespace, SYNCS, secret, annotations)
            wait_for(
                lambda s=secret, r=requested: (
                    status(kube, namespace, SYNCS, s).get("lastHandledRequest") == r
                ),
                timeout=30,
            )
        # The clean cycle recorded what the first cycle after a restart may take from status.
        assert status(kube, namespace, SYNCS, secret).get("lastRead"), "lastRead recorded"


def test_the_first_list_after_a_restart_is_conditional_and_a_304_writes_nothing(
    plane: ControlPlane, fake: FakeInfisical, namespace: str, tmp_path: Path
) -> None:
    kube = api_client(plane.kubeconfig)
    kubeconfig = plane.kubeconfig_for_user(OPERATOR_USER)
    with operator_process(kubeconfig, tmp_path / "before.log"):
        start_syncing(kube, namespace, fake, {"app": "/apps"})
    fake.reset_log()

    with operator_process(kubeconfig, tmp_path / "after.log"):
        first = wait_for(lambda: lists_of(fake, "/apps"), timeout=40, message="a first list")[0]
        assert first.if_none_match is not None, "the first list after the restart is conditional"
        assert first.status == 304
        # A change afterwards is synced: its cycle lists (200) before it writes. Nothing was
        # written in between, by the cycle that got the 304.
        put_secret(kube, namespace, "app", {"A": "2"})
        wait_for(lambda: writes_to(fake, "/apps"), timeout=30, message="the change is written")
        first_write = fake.log.index(writes_to(fake, "/apps")[0])
        before = [r.status for r in lists_of(fake, "/apps") if fake.log.index(r) < first_write]
        assert before == [304, 200]
        assert fake.state.get_secrets(PROJECT, "prod", "/apps") == {"A": "2"}


def test_a_restart_plans_in_full_when_the_destination_or_the_source_changed_meanwhile(
    plane: ControlPlane, fake: FakeInfisical, namespace: str, tmp_path: Path
) -> None:
    kube = api_client(plane.kubeconfig)
    kubeconfig = plane.kubeconfig_for_user(OPERATOR_USER)
    with operator_process(kubeconfig, tmp_path / "before.log"):
        start_syncing(kube, namespace, fake, {"drift": "/drift", "edited": "/edited"})
    fake.reset_log()
    folder = fake.state.folder(PROJECT, "prod", "/drift")
    assert folder is not None
    del folder["A"]  # someone deleted our key while the operator was away
    put_secret(kube, namespace, "edited", {"A": "2"})  # and a source changed

    with operator_process(kubeconfig, tmp_path / "after.log"):
        wait_for(
            lambda: fake.state.get_secrets(PROJECT, "prod", "/drift") == {"A": "1"}, timeout=40
        )
        wait_for(
            lambda: fake.state.get_secrets(PROJECT, "prod", "/edited") == {"A": "2"}, timeout=40
        )
        drift, edited = lists_of(fake, "/drift")[0], lists_of(fake, "/edited")[0]
        # The destination answered the recorded ETag with its new content: planned and written.
        assert drift.if_none_match is not None and drift.status == 200
        # The source's resourceVersion changed: the recorded ETag could not tell, not sent.
        assert edited.if_none_match is None and edited.status == 200
