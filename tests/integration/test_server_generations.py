"""The SecretSync scenarios whose behaviour depends on the Infisical server generation, run
against every profile of the fake (issue: server generations): missing folders, project slugs,
import modes, ownership tracking and validation errors. The operator process, the real control
plane, the fake Infisical answering as `current` or as the late-2024 server.

A new profile is an entry in fake_profiles.PROFILES: every test here runs on it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from tests.conftest import OperatorProcess, wait_for
from tests.integration import test_secretsync as base
from tests.integration.test_secretsync import (
    CLIENT_ID,
    CLIENT_SECRET,
    CONNECTIONS,
    PROJECT,
    SYNCS,
    next_cycle,
    ready_connection,
    sync_spec,
    sync_status,
)
from tests.kube_helpers import condition, create, put_secret, status

from infisical_sync.testing.fake_infisical import BackgroundFake, FakeInfisical, Fault
from infisical_sync.testing.fake_profiles import PROFILES

pytestmark = pytest.mark.controlplane
Env = tuple[Any, str, FakeInfisical]
SLUG = "payments"


@pytest.fixture(params=sorted(PROFILES))
def fake(request: pytest.FixtureRequest) -> Iterator[FakeInfisical]:
    """The fake answering as each server generation (the SecretSync suite's `env` uses it)."""
    with BackgroundFake(FakeInfisical(profile=request.param)) as server:
        server.state.add_project(SLUG, project_id=PROJECT)
        server.state.add_identity(CLIENT_ID, CLIENT_SECRET, projects={PROJECT: {}})
        yield server


env = base.env  # a Ready connection to `fake`


def remote(fake: FakeInfisical, path: str) -> dict[str, str]:
    return fake.state.get_secrets(PROJECT, "prod", path)


def by_slug(path: str, **overrides: Any) -> dict[str, Any]:
    spec = sync_spec(**overrides)
    destination = spec["destination"]
    del destination["projectId"]
    destination.update(projectSlug=SLUG, secretPath=path)
    return spec


def test_missing_nested_folder_by_slug_then_edits_and_deletes(env: Env) -> None:
    kube, namespace, fake = env
    path = "/apps/payments/api"
    assert fake.state.folder(PROJECT, "prod", path) is None
    put_secret(kube, namespace, "app", {"A": "1", "B": "2", "C": "3"})
    create(kube, namespace, SYNCS, "SecretSync", "sync", by_slug(path))
    wait_for(lambda: sync_status(kube, namespace) == "Succeeded")
    assert remote(fake, path) == {"A": "1", "B": "2", "C": "3"}  # every segment created
    found = status(kube, namespace, SYNCS, "sync")
    assert found["managedKeys"] == ["A", "B", "C"]
    # Known from the first sync: without secretMetadata only the ledger says which keys are ours.
    tracking = "Metadata" if fake.server.secret_metadata else "Ledger"
    assert found["ownershipTracking"] == tracking
    fake.state.put_secret(PROJECT, "prod", path, "FOREIGN", "theirs")
    put_secret(kube, namespace, "app", {"A": "1", "B": "two"})
    wait_for(lambda: remote(fake, path) == {"A": "1", "B": "two", "FOREIGN": "theirs"})
    wait_for(lambda: status(kube, namespace, SYNCS, "sync").get("managedKeys") == ["A", "B"])
    assert status(kube, namespace, SYNCS, "sync")["ownershipTracking"] == tracking


def test_import_into_an_infisical_source_creates_and_updates(env: Env) -> None:
    kube, namespace, fake = env
    fake.state.put_secret(PROJECT, "prod", "/source", "BOTH", "from-source")
    fake.state.put_secret(PROJECT, "prod", "/source", "ONLY_SOURCE", "s")
    fake.state.put_secret(PROJECT, "prod", "/destination", "BOTH", "from-destination")
    fake.state.put_secret(PROJECT, "prod", "/destination", "ONLY_DESTINATION", "d")
    spec = by_slug(
        "/destination", syncOptions={"initialSyncBehavior": "import-prioritize-destination"}
    )
    spec["source"] = {
        "infisical": {
            "connectionRef": {"name": "dest"},
            "projectSlug": SLUG,
            "environment": "prod",
            "secretPath": "/source",
        }
    }
    create(kube, namespace, SYNCS, "SecretSync", "sync", spec)
    wait_for(lambda: sync_status(kube, namespace) == "Succeeded")
    # The destination's keys went into the source (one created, one updated), then both match.
    expected = {"BOTH": "from-destination", "ONLY_SOURCE": "s", "ONLY_DESTINATION": "d"}
    assert remote(fake, "/source") == expected
    assert remote(fake, "/destination") == expected
    found = status(kube, namespace, SYNCS, "sync")
    assert "ONLY_DESTINATION" in found["lastImportMessage"]


def test_a_refused_request_is_a_validation_failure_not_a_credentials_one(env: Env) -> None:
    kube, namespace, fake = env
    put_secret(kube, namespace, "app", {"A": "1"})
    # The server's own validation error: 422 on the current generation, 401 on 2024.
    fake.inject(Fault("status", r"/batch", method="POST", status=422, error="ValidationFailure"))
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec())
    wait_for(lambda: sync_status(kube, namespace) == "Failed")
    assert condition(kube, namespace, SYNCS, "sync", "Synced") == ("False", "ValidationFailed")
    logins = fake.count(r"/universal-auth/login$")
    next_cycle(kube, namespace)
    assert condition(kube, namespace, SYNCS, "sync", "Synced") == ("False", "ValidationFailed")
    assert fake.count(r"/universal-auth/login$") == logins  # the token was not dropped
    assert condition(kube, namespace, CONNECTIONS, "dest", "Ready") == ("True", "Validated")
    fake.clear_faults()
    next_cycle(kube, namespace)
    wait_for(lambda: sync_status(kube, namespace) == "Succeeded")
    assert remote(fake, "/apps/payments") == {"A": "1"}


def test_cloud_to_an_older_self_hosted_instance(
    operator: OperatorProcess, kube: Any, namespace: str
) -> None:
    """The headline use: the current cloud generation as source, a 2024 server as destination."""
    with (
        BackgroundFake(FakeInfisical(profile="current")) as cloud,
        BackgroundFake(FakeInfisical(profile="2024")) as self_hosted,
    ):
        for fake in (cloud, self_hosted):
            fake.state.add_project(SLUG, project_id=PROJECT)
            fake.state.add_identity(CLIENT_ID, CLIENT_SECRET, projects={PROJECT: {}})
        cloud.state.put_secret(PROJECT, "prod", "/", "FROM_CLOUD", "c")
        ready_connection(kube, namespace, self_hosted, name="dest")
        ready_connection(kube, namespace, cloud, name="cloud")
        spec = by_slug("/from-cloud")
        spec["source"] = {
            "infisical": {
                "connectionRef": {"name": "cloud"},
                "projectSlug": SLUG,
                "environment": "prod",
            }
        }
        create(kube, namespace, SYNCS, "SecretSync", "sync", spec)
        wait_for(lambda: sync_status(kube, namespace) == "Succeeded")
        assert remote(self_hosted, "/from-cloud") == {"FROM_CLOUD": "c"}
        assert status(kube, namespace, SYNCS, "sync")["ownershipTracking"] == "Ledger"


def test_a_source_that_cannot_be_read_creates_no_folder(env: Env) -> None:
    kube, namespace, fake = env
    create(kube, namespace, SYNCS, "SecretSync", "sync", by_slug("/never/made"))  # no Secret app
    wait_for(lambda: sync_status(kube, namespace) == "Failed")
    assert condition(kube, namespace, SYNCS, "sync", "SourceReady")[0] == "False"
    assert condition(kube, namespace, SYNCS, "sync", "DestinationReady") == (
        "True",
        "DestinationRead",
    )
    assert fake.state.folder(PROJECT, "prod", "/never/made") is None
    assert fake.count(r"/folders$", "POST") == 0


def test_keys_created_before_a_later_write_failed_stay_ours(env: Env) -> None:
    """A cycle whose create went through and whose update then failed: the created keys are in
    the ledger at once, so on a server without secretMetadata they are not taken for someone
    else's on the next cycle."""
    kube, namespace, fake = env
    path = "/apps/payments"
    put_secret(kube, namespace, "app", {"A": "1"})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec())
    wait_for(lambda: sync_status(kube, namespace) == "Succeeded")
    fake.inject(Fault("status", r"/batch", method="PATCH", status=422, error="ValidationFailure"))
    put_secret(kube, namespace, "app", {"A": "changed", "B": "new"})
    wait_for(lambda: sync_status(kube, namespace) == "Failed", timeout=10)
    assert remote(fake, path) == {"A": "1", "B": "new"}  # the create went through
    assert status(kube, namespace, SYNCS, "sync")["managedKeys"] == ["A", "B"]
    fake.clear_faults()
    next_cycle(kube, namespace)
    wait_for(lambda: sync_status(kube, namespace) == "Succeeded")
    found = status(kube, namespace, SYNCS, "sync")
    assert found["conflicts"] == [] and found["managedKeys"] == ["A", "B"]
    assert remote(fake, path) == {"A": "changed", "B": "new"}
