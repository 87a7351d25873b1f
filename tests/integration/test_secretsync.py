"""SecretSync end to end: the operator process, the real control plane, fake Infisical servers."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from tests.conftest import OperatorProcess, wait_for
from tests.kube_helpers import (
    condition,
    create,
    delete,
    event_reasons,
    get,
    patch,
    put_secret,
    read_secret,
    status,
)

from infisical_sync.planner import OWNER_KEY
from infisical_sync.testing.controlplane import OPERATOR_USER, ControlPlane, grant_secret_writes
from infisical_sync.testing.fake_infisical import BackgroundFake, FakeInfisical, Fault, RateLimits

pytestmark = pytest.mark.controlplane
CONNECTIONS, SYNCS = "infisicalconnections", "secretsyncs"
CLIENT_ID = "44444444-4444-4444-8444-444444444444"
CLIENT_SECRET = "canary-sync-client-secret-9e107d9d"
CANARY_VALUE = "canary-value-e4d909c290d0fb1c"
PROJECT = "p-dest"


@pytest.fixture
def fake() -> Iterator[FakeInfisical]:
    with BackgroundFake() as server:
        server.state.add_project("payments", project_id=PROJECT)
        server.state.add_identity(CLIENT_ID, CLIENT_SECRET, projects={PROJECT: {}})
        yield server


def ready_connection(kube: Any, namespace: str, fake: FakeInfisical, name: str = "dest") -> None:
    put_secret(
        kube, namespace, f"{name}-identity", {"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET}
    )
    create(
        kube,
        namespace,
        CONNECTIONS,
        "InfisicalConnection",
        name,
        {
            "instanceUrl": fake.url,
            "allowInsecureHttp": True,
            "credentials": {"secretRef": {"name": f"{name}-identity"}},
        },
    )
    wait_for(
        lambda: condition(kube, namespace, CONNECTIONS, name, "Ready") == ("True", "Validated")
    )


def sync_spec(secrets: list[str] | None = None, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "source": {"kubernetes": {"secrets": [{"name": n} for n in (secrets or ["app"])]}},
        "destination": {
            "connectionRef": {"name": "dest"},
            "projectId": PROJECT,
            "environment": "prod",
            "secretPath": "/apps/payments",
        },
        "syncInterval": "1h",
    }
    spec.update(overrides)
    return spec


def remote(fake: FakeInfisical, path: str = "/apps/payments") -> dict[str, str]:
    return fake.state.get_secrets(PROJECT, "prod", path)


def sync_status(kube: Any, namespace: str, name: str = "sync") -> str | None:
    return status(kube, namespace, SYNCS, name).get("syncStatus")


@pytest.fixture
def env(
    operator: OperatorProcess, kube: Any, namespace: str, fake: FakeInfisical
) -> tuple[Any, str, FakeInfisical]:
    ready_connection(kube, namespace, fake)
    return kube, namespace, fake


def test_first_sync_into_empty_destination(env: tuple[Any, str, FakeInfisical]) -> None:
    kube, namespace, fake = env
    put_secret(kube, namespace, "app", {"DB_PASSWORD": CANARY_VALUE, "API_KEY": "  key  \n"})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec())
    wait_for(lambda: sync_status(kube, namespace) == "Succeeded")
    assert remote(fake) == {"DB_PASSWORD": CANARY_VALUE, "API_KEY": "key\n"}  # folder created
    secret = fake.state.folder(PROJECT, "prod", "/apps/payments")["DB_PASSWORD"]  # type: ignore[index]
    assert {"key": OWNER_KEY, "value": f"{namespace}/sync", "isEncrypted": False} in secret.metadata
    found = status(kube, namespace, SYNCS, "sync")
    assert found["managedKeys"] == ["API_KEY", "DB_PASSWORD"]
    assert found["syncedKeys"] == 2 and found["observedGeneration"] == 1
    assert (
        found["source"] == "secret:app"
        and found["destination"] == "dest/p-dest/prod:/apps/payments"
    )
    assert found["ownershipTracking"] == "Metadata"
    assert {c["type"]: c["status"] for c in found["conditions"]} == {
        "Ready": "True",
        "SourceReady": "True",
        "DestinationReady": "True",
        "Synced": "True",
        "Reconciling": "False",
        "Stalled": "False",
    }
    assert CANARY_VALUE not in repr(found)
    assert event_reasons(kube, namespace, "sync") == ["Synced"]


def test_source_edit_is_pushed_at_once_and_a_cycle_with_nothing_to_do_writes_nothing(
    env: tuple[Any, str, FakeInfisical],
) -> None:
    kube, namespace, fake = env
    put_secret(kube, namespace, "app", {"A": "1"})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec())
    wait_for(lambda: remote(fake) == {"A": "1"})
    put_secret(kube, namespace, "app", {"A": "2", "B": "3"})
    # Within 10 s with a 1h timer and no failure to retry: the Secret watch.
    wait_for(lambda: remote(fake) == {"A": "2", "B": "3"}, timeout=10)
    # Nothing changed: a requested cycle plans from a full list (the request is one of the
    # inputs, so the recorded ETag cannot stand for the outcome) and writes nothing; its clean
    # outcome is recorded for the timer's cycles (a 304 then ends them: see the idle tests).
    next_cycle(kube, namespace)
    writes, lists = fake.count(r"/batch$"), fake.count(r"/api/v4/secrets$", method="GET")
    next_cycle(kube, namespace)
    assert fake.count(r"/api/v4/secrets$", method="GET") == lists + 1
    assert fake.count(r"/batch$") == writes
    assert status(kube, namespace, SYNCS, "sync").get("lastRead")


def request_sync(kube: Any, namespace: str, value: str, name: str = "sync") -> None:
    annotation = {"infisical-sync.dev/sync-requested-at": value}
    patch(kube, namespace, SYNCS, name, {"metadata": {"annotations": annotation}})


def next_cycle(kube: Any, namespace: str, name: str = "sync") -> None:
    """Return once a whole sync cycle that started after this call has ended: it requests a
    sync with a fresh value and waits for status.lastHandledRequest to acknowledge it (the
    acknowledging cycle read the annotation when it started)."""
    value = uuid.uuid4().hex
    request_sync(kube, namespace, value, name)
    wait_for(
        lambda: status(kube, namespace, SYNCS, name).get("lastHandledRequest") == value,
        timeout=15,
        interval=0.2,
        message=f"for a new sync cycle of {name}",
    )


def resource_version(kube: Any, namespace: str, plural: str, name: str) -> str:
    return str((get(kube, namespace, plural, name) or {})["metadata"]["resourceVersion"])


def test_a_cycle_that_changes_nothing_writes_nothing_to_kubernetes(
    operator: OperatorProcess, kube: Any, namespace: str, fake: FakeInfisical
) -> None:
    """Idle timer cycles and re-validations: no status patch, no Event, the objects'
    resourceVersions stay (nothing else writes them in this test)."""
    put_secret(
        kube, namespace, "dest-identity", {"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET}
    )
    connection = {
        "instanceUrl": fake.url,
        "allowInsecureHttp": True,
        "credentials": {"secretRef": {"name": "dest-identity"}},
        "validationInterval": "30s",
    }
    create(kube, namespace, CONNECTIONS, "InfisicalConnection", "dest", connection)
    put_secret(kube, namespace, "app", {"A": "1"})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec(syncInterval="10s"))
    wait_for(lambda: sync_status(kube, namespace) == "Succeeded" and remote(fake) == {"A": "1"})

    def idle_cycles() -> int:  # each cycle sends one conditional list: unchanged, a 304
        return fake.count(r"/api/v4/secrets$", status=304)

    # The first idle cycle may still write (its plan differs from the writing one's); a cycle
    # starts only after the one before it wrote its status.
    wait_for(lambda: idle_cycles() >= 2, timeout=30, message="two idle cycles")
    synced = resource_version(kube, namespace, SYNCS, "sync")
    validated = resource_version(kube, namespace, CONNECTIONS, "dest")
    events = event_reasons(kube, namespace, "sync")
    seen = idle_cycles()
    unchanged = operator.metric("infisical_sync_syncs_total", result="unchanged") or 0.0
    wait_for(lambda: idle_cycles() >= seen + 3, timeout=40, message="three more idle cycles")
    assert resource_version(kube, namespace, SYNCS, "sync") == synced
    # Each ended at the 304: the outcome recorded in status.lastRead stands, nothing is planned
    # (and the listing's values were not kept in memory to plan with).
    ended_unchanged = operator.metric("infisical_sync_syncs_total", result="unchanged") or 0.0
    assert ended_unchanged - unchanged >= 2
    assert event_reasons(kube, namespace, "sync") == events  # no new Event either
    # The connection's timer re-validation (a probe with the cached token) is over when its
    # liveness metric moves; it wrote nothing either.
    labels = {"kind": "InfisicalConnection", "namespace": namespace, "name": "dest"}
    checked = operator.metric("infisical_sync_last_cycle_timestamp_seconds", **labels) or 0.0
    wait_for(
        lambda: (
            (operator.metric("infisical_sync_last_cycle_timestamp_seconds", **labels) or 0)
            > checked
        ),
        timeout=40,
        message="a re-validation",
    )
    assert fake.count(r"/universal-auth/login$") == 1  # a probe, not a new login
    assert resource_version(kube, namespace, CONNECTIONS, "dest") == validated
    sync_labels = {"kind": "SecretSync", "namespace": namespace, "name": "sync"}
    assert operator.metric("infisical_sync_last_success_timestamp_seconds", **sync_labels)


def test_quiet_cycles_take_the_source_version_from_the_secret_watch(
    env: tuple[Any, str, FakeInfisical], control_plane: ControlPlane
) -> None:
    """A cycle with nothing changed reads no Secret: the metadata watch vouches for its
    resourceVersion, and the destination answers 304. An edit still syncs at once (the watch's
    kick, then a full read)."""
    kube, namespace, fake = env
    put_secret(kube, namespace, "app", {"A": "1"})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec(syncInterval="10s"))
    wait_for(lambda: sync_status(kube, namespace) == "Succeeded" and remote(fake) == {"A": "1"})

    def idle_cycles() -> int:
        return fake.count(r"/api/v4/secrets$", status=304)

    # The cycle after the writing one reads in full and records lastRead; from then on, quiet.
    wait_for(lambda: idle_cycles() >= 2, timeout=40, message="two idle cycles")

    def reads() -> int:  # by the operator, of this Secret, per the API server's audit log
        return control_plane.secret_reads(namespace, "app", OPERATOR_USER)

    before, seen = reads(), idle_cycles()
    wait_for(lambda: idle_cycles() >= seen + 3, timeout=45, message="three more idle cycles")
    assert before >= 1 and reads() == before  # read by the writing cycles, not since
    put_secret(kube, namespace, "app", {"A": "2"})
    wait_for(lambda: remote(fake) == {"A": "2"}, timeout=10)
    assert reads() > before


def test_a_quiet_cycle_that_cannot_list_fails_without_reading_the_source(
    env: tuple[Any, str, FakeInfisical], control_plane: ControlPlane
) -> None:
    """The quiet cycle's conditional list is the destination read of that cycle: when it fails
    (an outage, a 429), the cycle fails with it, instead of reading the Secrets and listing
    once more into the same failure."""
    kube, namespace, fake = env
    put_secret(kube, namespace, "app", {"A": "1"})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec(syncInterval="10s"))
    wait_for(lambda: sync_status(kube, namespace) == "Succeeded" and remote(fake) == {"A": "1"})
    wait_for(lambda: fake.count(r"/api/v4/secrets$", status=304) >= 2, timeout=40, message="quiet")
    before = control_plane.secret_reads(namespace, "app", OPERATOR_USER)
    fake.inject(Fault("status", r"^/api/v4/secrets$", method="GET", status=503))
    wait_for(
        lambda: (
            (condition(kube, namespace, SYNCS, "sync", "DestinationReady") or ("",))[0] == "False"
        ),
        timeout=60,
        message="the failed cycle's status",
    )
    assert control_plane.secret_reads(namespace, "app", OPERATOR_USER) == before
    fake.clear_faults()
    wait_for(lambda: sync_status(kube, namespace) == "Succeeded", timeout=60)


def test_drift_is_corrected_by_the_timer(env: tuple[Any, str, FakeInfisical]) -> None:
    kube, namespace, fake = env
    put_secret(kube, namespace, "app", {"A": "1"})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec(syncInterval="10s"))
    wait_for(lambda: remote(fake) == {"A": "1"})
    fake.state.put_secret(PROJECT, "prod", "/apps/payments", "A", "tampered")
    wait_for(lambda: remote(fake) == {"A": "1"}, timeout=25)  # 10 s ±10 %, nothing else kicks


def test_removed_key_is_deleted_or_kept(env: tuple[Any, str, FakeInfisical]) -> None:
    kube, namespace, fake = env
    put_secret(kube, namespace, "app", {"A": "1", "B": "2", "C": "3"})
    put_secret(kube, namespace, "keep", {"X": "1", "Y": "2", "Z": "3"})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec())
    create(
        kube,
        namespace,
        SYNCS,
        "SecretSync",
        "kept",
        sync_spec(
            ["keep"],
            destination={**sync_spec()["destination"], "secretPath": "/kept"},
            syncOptions={"disableSecretDeletion": True},
        ),
    )
    wait_for(lambda: remote(fake) == {"A": "1", "B": "2", "C": "3"})
    wait_for(lambda: remote(fake, "/kept") == {"X": "1", "Y": "2", "Z": "3"})
    put_secret(kube, namespace, "app", {"A": "1", "B": "2"})
    put_secret(kube, namespace, "keep", {"X": "1", "Y": "2"})
    wait_for(lambda: remote(fake) == {"A": "1", "B": "2"}, timeout=10)
    wait_for(
        lambda: (
            sync_status(kube, namespace, "kept") == "Succeeded"
            and status(kube, namespace, SYNCS, "kept")["syncedKeys"] == 2
        )
    )
    assert remote(fake, "/kept") == {"X": "1", "Y": "2", "Z": "3"}


def test_mass_delete_is_held_until_annotated(env: tuple[Any, str, FakeInfisical]) -> None:
    kube, namespace, fake = env
    put_secret(kube, namespace, "app", {k: k for k in "ABCD"})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec())
    wait_for(lambda: len(remote(fake)) == 4)
    put_secret(kube, namespace, "app", {"A": "A"})
    wait_for(
        lambda: condition(kube, namespace, SYNCS, "sync", "Synced") == ("False", "DeletionHeld"),
        timeout=10,
    )
    assert len(remote(fake)) == 4
    held = status(kube, namespace, SYNCS, "sync")["heldDeletes"]
    assert held["keys"] == ["B", "C", "D"]
    patch(
        kube,
        namespace,
        SYNCS,
        "sync",
        {"metadata": {"annotations": {"infisical-sync.dev/allow-mass-delete": held["id"]}}},
    )
    wait_for(lambda: remote(fake) == {"A": "A"}, timeout=10)


def test_deleted_source_secret_deletes_nothing(env: tuple[Any, str, FakeInfisical]) -> None:
    kube, namespace, fake = env
    put_secret(kube, namespace, "app", {"A": "1", "B": "2"})
    put_secret(kube, namespace, "extra", {"C": "3"})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec(["app", "extra"]))
    wait_for(lambda: remote(fake) == {"A": "1", "B": "2", "C": "3"})
    client.CoreV1Api(kube).delete_namespaced_secret("extra", namespace)
    wait_for(
        lambda: (
            condition(kube, namespace, SYNCS, "sync", "SourceReady") == ("False", "SecretNotFound")
        ),
        timeout=10,
    )
    assert remote(fake) == {"A": "1", "B": "2", "C": "3"}
    found = status(kube, namespace, SYNCS, "sync")
    assert found["syncStatus"] == "Failed"
    assert f"Secret {namespace}/extra not found" in found["lastSyncMessage"]
    # extra could override any key of app: nothing is left to write, and nothing is deleted.
    assert condition(kube, namespace, SYNCS, "sync", "Synced") == ("False", "SecretNotFound")
    client.CoreV1Api(kube).delete_namespaced_secret("app", namespace)
    wait_for(
        lambda: (
            "Secret" in status(kube, namespace, SYNCS, "sync")["lastSyncMessage"]
            and f"{namespace}/app not found"
            in status(kube, namespace, SYNCS, "sync")["lastSyncMessage"]
        ),
        timeout=10,
    )
    assert remote(fake) == {"A": "1", "B": "2", "C": "3"}


def test_two_syncs_on_one_key_report_a_conflict_without_flapping(
    env: tuple[Any, str, FakeInfisical],
) -> None:
    kube, namespace, fake = env
    put_secret(kube, namespace, "first", {"SHARED": "one"})
    put_secret(kube, namespace, "second", {"SHARED": "two", "OWN": "x"})
    create(kube, namespace, SYNCS, "SecretSync", "one", sync_spec(["first"]))
    wait_for(lambda: remote(fake) == {"SHARED": "one"})
    create(kube, namespace, SYNCS, "SecretSync", "two", sync_spec(["second"]))
    wait_for(lambda: status(kube, namespace, SYNCS, "two").get("conflicts") == ["SHARED"])
    version = fake.state.folder(PROJECT, "prod", "/apps/payments")["SHARED"].version  # type: ignore[index]
    for _ in range(2):  # further cycles of both, each run to its end
        next_cycle(kube, namespace, "one")
        next_cycle(kube, namespace, "two")
    assert remote(fake) == {"SHARED": "one", "OWN": "x"}
    assert fake.state.folder(PROJECT, "prod", "/apps/payments")["SHARED"].version == version  # type: ignore[index]
    assert condition(kube, namespace, SYNCS, "two", "Synced") == ("True", "SyncedWithConflicts")
    assert "owned by SecretSync" in status(kube, namespace, SYNCS, "two")["lastSyncMessage"]
    assert event_reasons(kube, namespace, "two").count("Conflict") == 1


def test_dry_run_plans_without_writing(env: tuple[Any, str, FakeInfisical]) -> None:
    kube, namespace, fake = env
    fake.state.put_secret(PROJECT, "prod", "/apps/payments", "OLD", "x")
    put_secret(kube, namespace, "app", {"A": "1", "B": "2"})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec(dryRun=True))
    wait_for(lambda: condition(kube, namespace, SYNCS, "sync", "Synced") == ("False", "DryRun"))
    found = status(kube, namespace, SYNCS, "sync")
    assert found["plan"] == {"create": ["A", "B"], "update": [], "delete": [], "unchanged": 0}
    assert remote(fake) == {"OLD": "x"}
    assert fake.count(r"/batch$") == 0
    patch(kube, namespace, SYNCS, "sync", {"spec": {"dryRun": False}})
    wait_for(lambda: remote(fake) == {"OLD": "x", "A": "1", "B": "2"}, timeout=10)


def test_suspend(env: tuple[Any, str, FakeInfisical]) -> None:
    kube, namespace, fake = env
    put_secret(kube, namespace, "app", {"A": "1"})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec(suspend=True))
    wait_for(lambda: condition(kube, namespace, SYNCS, "sync", "Ready") == ("False", "Suspended"))
    assert fake.count(r"/api/v4/secrets") == 0
    patch(kube, namespace, SYNCS, "sync", {"spec": {"suspend": False}})
    wait_for(lambda: remote(fake) == {"A": "1"}, timeout=10)


def lists_of(fake: FakeInfisical, path: str = "/apps/payments") -> int:
    return sum(
        1
        for record in fake.log
        if record.path.endswith("/secrets") and record.query.get("secretPath") == path
    )


def test_auto_sync_disabled_waits_for_a_request(env: tuple[Any, str, FakeInfisical]) -> None:
    kube, namespace, fake = env
    put_secret(kube, namespace, "app", {"A": "1"})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec(autoSyncEnabled=False))
    # A witness reading the same Secret shows when the operator has acted on its change.
    witness_destination = {**sync_spec()["destination"], "secretPath": "/witness"}
    create(
        kube, namespace, SYNCS, "SecretSync", "witness", sync_spec(destination=witness_destination)
    )
    wait_for(lambda: remote(fake) == {"A": "1"})  # creation counts as a spec change
    wait_for(lambda: remote(fake, "/witness") == {"A": "1"})
    lists = lists_of(fake)
    put_secret(kube, namespace, "app", {"A": "2"})
    wait_for(lambda: remote(fake, "/witness") == {"A": "2"}, timeout=10)
    next_cycle(kube, namespace, "witness")  # and a whole cycle more
    assert lists_of(fake) == lists  # the Secret change did not even make it look
    assert remote(fake) == {"A": "1"}
    request_sync(kube, namespace, "t1")
    wait_for(lambda: remote(fake) == {"A": "2"}, timeout=10)
    assert lists_of(fake) == lists + 1  # the requested cycle's, and no other


def test_overwrite_destination_adopts_on_first_sync(env: tuple[Any, str, FakeInfisical]) -> None:
    kube, namespace, fake = env
    fake.state.put_secret(PROJECT, "prod", "/apps/payments", "A", "old")
    fake.state.put_secret(PROJECT, "prod", "/apps/payments", "UNRELATED", "u")
    put_secret(kube, namespace, "app", {"A": "new"})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec())
    wait_for(lambda: remote(fake) == {"A": "new", "UNRELATED": "u"})
    # The status is written after the keys: it may not be there the moment they are.
    wait_for(lambda: status(kube, namespace, SYNCS, "sync").get("syncStatus") == "Succeeded")
    assert status(kube, namespace, SYNCS, "sync")["managedKeys"] == ["A"]


def test_unowned_key_after_the_first_sync_is_a_conflict(
    env: tuple[Any, str, FakeInfisical],
) -> None:
    kube, namespace, fake = env
    put_secret(kube, namespace, "app", {"A": "1"})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec())
    wait_for(lambda: sync_status(kube, namespace) == "Succeeded")
    fake.state.put_secret(PROJECT, "prod", "/apps/payments", "B", "theirs")
    put_secret(kube, namespace, "app", {"A": "1", "B": "mine"})
    wait_for(lambda: status(kube, namespace, SYNCS, "sync").get("conflicts") == ["B"], timeout=10)
    assert remote(fake)["B"] == "theirs"


@pytest.mark.parametrize(
    ("behavior", "expected_source", "expected_remote"),
    [
        (
            "import-prioritize-source",
            {"A": "src", "ONLY_SRC": "s", "ONLY_DEST": "d"},
            {"A": "src", "ONLY_SRC": "s", "ONLY_DEST": "d"},
        ),
        (
            "import-prioritize-destination",
            {"A": "dest", "ONLY_SRC": "s", "ONLY_DEST": "d"},
            {"A": "dest", "ONLY_SRC": "s", "ONLY_DEST": "d"},
        ),
    ],
)
def test_import_modes(
    env: tuple[Any, str, FakeInfisical],
    control_plane: ControlPlane,
    behavior: str,
    expected_source: dict[str, str],
    expected_remote: dict[str, str],
) -> None:
    kube, namespace, fake = env
    grant_secret_writes(control_plane.kubeconfig, namespace)  # rbac.secretWrites=true
    fake.state.put_secret(PROJECT, "prod", "/apps/payments", "A", "dest")
    fake.state.put_secret(PROJECT, "prod", "/apps/payments", "ONLY_DEST", "d")
    put_secret(kube, namespace, "app", {"A": "src", "ONLY_SRC": "s"})
    create(
        kube,
        namespace,
        SYNCS,
        "SecretSync",
        "sync",
        sync_spec(syncOptions={"initialSyncBehavior": behavior}),
    )
    wait_for(lambda: sync_status(kube, namespace) == "Succeeded")
    wait_for(lambda: read_secret(kube, namespace, "app") == expected_source)
    wait_for(lambda: remote(fake) == expected_remote)
    found = status(kube, namespace, SYNCS, "sync")
    assert found["lastImportedAt"] and "ONLY_DEST" in found["lastImportMessage"]
    assert found["managedKeys"] == sorted(expected_remote)


def test_import_without_secret_writes_names_the_chart_value(
    env: tuple[Any, str, FakeInfisical],
) -> None:
    """The chart's default RBAC cannot patch Secrets: the import stops with a clear reason,
    and nothing is pushed (an import mode never writes the destination before importing)."""
    kube, namespace, fake = env
    fake.state.put_secret(PROJECT, "prod", "/apps/payments", "ONLY_DEST", CANARY_VALUE)
    put_secret(kube, namespace, "app", {"A": "src"})
    create(
        kube,
        namespace,
        SYNCS,
        "SecretSync",
        "sync",
        sync_spec(syncOptions={"initialSyncBehavior": "import-prioritize-source"}),
    )
    wait_for(lambda: sync_status(kube, namespace) == "Failed")
    found = status(kube, namespace, SYNCS, "sync")
    reasons = {c["type"]: (c["status"], c["reason"]) for c in found["conditions"]}
    assert reasons["SourceReady"] == ("False", "ImportForbidden")
    assert reasons["Synced"] == ("False", "ImportForbidden")
    assert "rbac.secretWrites" in found["lastSyncMessage"]
    assert CANARY_VALUE not in repr(found)
    assert read_secret(kube, namespace, "app") == {"A": "src"}
    assert remote(fake) == {"ONLY_DEST": CANARY_VALUE}
    wait_for(lambda: "ImportForbidden" in event_reasons(kube, namespace, "sync"))


def test_deletion_policies(env: tuple[Any, str, FakeInfisical]) -> None:
    kube, namespace, fake = env
    put_secret(kube, namespace, "app", {"A": "1"})
    put_secret(kube, namespace, "other", {"B": "2"})
    fake.state.put_secret(PROJECT, "prod", "/apps/payments", "UNOWNED", "u")
    create(kube, namespace, SYNCS, "SecretSync", "retained", sync_spec(["app"]))
    create(
        kube,
        namespace,
        SYNCS,
        "SecretSync",
        "removed",
        sync_spec(["other"], deletionPolicy="Delete"),
    )
    wait_for(lambda: remote(fake) == {"A": "1", "B": "2", "UNOWNED": "u"})
    delete(kube, namespace, SYNCS, "retained")
    wait_for(lambda: get(kube, namespace, SYNCS, "retained") is None)
    assert remote(fake) == {"A": "1", "B": "2", "UNOWNED": "u"}
    delete(kube, namespace, SYNCS, "removed")
    wait_for(lambda: get(kube, namespace, SYNCS, "removed") is None)
    assert remote(fake) == {"A": "1", "UNOWNED": "u"}


def test_failing_removal_is_visible_and_abandon_releases(
    env: tuple[Any, str, FakeInfisical],
) -> None:
    kube, namespace, fake = env
    put_secret(kube, namespace, "app", {"A": "1"})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec(deletionPolicy="Delete"))
    wait_for(lambda: remote(fake) == {"A": "1"})
    fake.inject(Fault("status", r"/api/v4/secrets", status=500))
    delete(kube, namespace, SYNCS, "sync")
    wait_for(
        lambda: (
            "removing owned keys failed"
            in status(kube, namespace, SYNCS, "sync").get("lastSyncMessage", "")
        ),
        timeout=30,
    )
    assert get(kube, namespace, SYNCS, "sync") is not None  # finalizer holds it
    patch(
        kube,
        namespace,
        SYNCS,
        "sync",
        {"metadata": {"annotations": {"infisical-sync.dev/abandon": "true"}}},
    )
    wait_for(lambda: get(kube, namespace, SYNCS, "sync") is None, timeout=30)
    fake.clear_faults()
    assert remote(fake) == {"A": "1"}


def test_selector_source_and_duplicates(env: tuple[Any, str, FakeInfisical]) -> None:
    kube, namespace, fake = env
    put_secret(kube, namespace, "named", {"A": "named", "N": "n"})
    put_secret(
        kube,
        namespace,
        "labelled",
        {"A": "labelled", "L": "l"},
        labels={"infisical-sync.dev/push": "true"},
    )
    spec = sync_spec(["named"])
    spec["source"]["kubernetes"]["selector"] = {"matchLabels": {"infisical-sync.dev/push": "true"}}
    create(kube, namespace, SYNCS, "SecretSync", "sync", spec)
    wait_for(lambda: remote(fake) == {"A": "labelled", "N": "n", "L": "l"})
    assert (
        "A in secret/named and secret/labelled"
        in status(kube, namespace, SYNCS, "sync")["lastSyncMessage"]
    )
    put_secret(kube, namespace, "labelled2", {"M": "m"}, labels={"infisical-sync.dev/push": "true"})
    wait_for(lambda: remote(fake).get("M") == "m", timeout=10)


def test_infisical_to_infisical(
    operator: OperatorProcess, kube: Any, namespace: str, fake: FakeInfisical
) -> None:
    with BackgroundFake() as cloud:
        cloud.state.add_project("cloud-app", project_id="p-cloud")
        cloud.state.add_identity("cloud-id", "cloud-secret", projects={"p-cloud": {}})
        cloud.state.put_secret("p-cloud", "prod", "/", "FROM_CLOUD", CANARY_VALUE)
        cloud.state.put_secret("p-cloud", "prod", "/", "SECOND", "2")
        ready_connection(kube, namespace, fake)
        put_secret(
            kube,
            namespace,
            "cloud-identity",
            {"clientId": "cloud-id", "clientSecret": "cloud-secret"},
        )
        create(
            kube,
            namespace,
            CONNECTIONS,
            "InfisicalConnection",
            "cloud",
            {
                "instanceUrl": cloud.url,
                "allowInsecureHttp": True,
                "credentials": {"secretRef": {"name": "cloud-identity"}},
            },
        )
        spec = sync_spec()
        spec["source"] = {
            "infisical": {
                "connectionRef": {"name": "cloud"},
                "projectSlug": "cloud-app",
                "environment": "prod",
            }
        }
        create(kube, namespace, SYNCS, "SecretSync", "sync", spec)
        wait_for(lambda: remote(fake) == {"FROM_CLOUD": CANARY_VALUE, "SECOND": "2"}, timeout=20)
        # An Infisical source is not watched: the timer or a request reads it again.
        cloud.state.put_secret("p-cloud", "prod", "/", "SECOND", "changed")
        request_sync(kube, namespace, "after-change")
        wait_for(lambda: remote(fake).get("SECOND") == "changed", timeout=15)
        # Unchanged source on the next cycle: its conditional list is answered 304.
        not_modified = cloud.count(r"/api/v4/secrets$", status=304)
        next_cycle(kube, namespace)
        assert cloud.count(r"/api/v4/secrets$", status=304) > not_modified
        assert CANARY_VALUE not in repr(status(kube, namespace, SYNCS, "sync"))


def test_an_infisical_source_sends_references_expanded_or_raw(
    env: tuple[Any, str, FakeInfisical],
) -> None:
    kube, namespace, fake = env
    fake.state.put_secret(PROJECT, "prod", "/src", "URL", "https://${HOST}/${prod.db.NAME}")
    fake.state.put_secret(PROJECT, "prod", "/src", "HOST", "api.internal")
    fake.state.put_secret(PROJECT, "prod", "/db", "NAME", "orders")
    source = {"connectionRef": {"name": "dest"}, "projectId": PROJECT, "environment": "prod"}
    spec = sync_spec()
    spec["source"] = {"infisical": {**source, "secretPath": "/src"}}
    create(kube, namespace, SYNCS, "SecretSync", "sync", spec)
    wait_for(lambda: remote(fake).get("URL") == "https://api.internal/orders")

    def source_lists(expand: str) -> list[Any]:
        return [
            r
            for r in fake.log
            if r.query.get("secretPath") == "/src" and r.query["expandSecretReferences"] == expand
        ]

    assert source_lists("true")[0].status == 200  # its ETag is kept for the expanded form
    # The destination is always read raw: the operator diffs what it wrote.
    destination = [r for r in fake.log if r.query.get("secretPath") == "/apps/payments"]
    assert {r.query["expandSecretReferences"] for r in destination if r.method == "GET"} == {
        "false"
    }
    raw = {
        "source": {"infisical": {**source, "secretPath": "/src", "expandSecretReferences": False}}
    }
    patch(kube, namespace, SYNCS, "sync", {"spec": raw})
    wait_for(lambda: remote(fake).get("URL") == "https://${HOST}/${prod.db.NAME}")
    assert source_lists("false")[0].if_none_match is None  # not the expanded form's ETag


def test_rate_limits_and_5xx_converge(env: tuple[Any, str, FakeInfisical]) -> None:
    kube, namespace, fake = env
    put_secret(kube, namespace, "app", {f"K{i}": str(i) for i in range(20)})
    fake.inject(Fault("status", r"/api/v4/secrets/batch$", status=503, times=4))
    fake.inject(Fault("status", r"/api/v4/secrets$", status=429, retry_after=2, times=1))
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec())
    wait_for(lambda: remote(fake) == {f"K{i}": str(i) for i in range(20)}, timeout=60)
    fake.rate_limits = RateLimits(enabled=True, read=1000, write=1000, secrets=3)
    put_secret(kube, namespace, "app", {f"K{i}": f"v{i}" for i in range(20)})
    wait_for(lambda: remote(fake) == {f"K{i}": f"v{i}" for i in range(20)}, timeout=90)
    assert fake.count(r"/api/v4/secrets", status=429) >= 1
    wait_for(lambda: sync_status(kube, namespace) == "Succeeded", timeout=30)


def test_no_secret_values_anywhere(
    env: tuple[Any, str, FakeInfisical], operator: OperatorProcess
) -> None:
    kube, namespace, fake = env
    put_secret(kube, namespace, "app", {"CANARY": CANARY_VALUE})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec(dryRun=True))
    wait_for(lambda: condition(kube, namespace, SYNCS, "sync", "Synced") == ("False", "DryRun"))
    patch(kube, namespace, SYNCS, "sync", {"spec": {"dryRun": False}})
    wait_for(lambda: remote(fake) == {"CANARY": CANARY_VALUE})
    events = client.CoreV1Api(kube).list_namespaced_event(namespace).items
    for surface in (
        operator.log(),
        repr(get(kube, namespace, SYNCS, "sync")),
        repr([e.message for e in events]),
    ):
        assert CANARY_VALUE not in surface
        assert base64.b64encode(CANARY_VALUE.encode()).decode() not in surface  # nor as Secret data
        assert CLIENT_SECRET not in surface


def test_destination_race_is_replanned_once(env: tuple[Any, str, FakeInfisical]) -> None:
    kube, namespace, fake = env
    put_secret(kube, namespace, "app", {"A": "ours", "B": "b"})
    # Hold the batch create for a moment and let someone else create A meanwhile. Running
    # shows once the writes have taken a second (scheduler.RUNNING_AFTER), until they end.
    fake.inject(Fault("latency", r"/api/v4/secrets/batch$", method="POST", delay=3, times=1))
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec())
    wait_for(
        lambda: fake.count(r"/api/v4/secrets/batch$", "POST") >= 1 or fake.in_flight > 0, timeout=10
    )
    fake.state.put_secret(PROJECT, "prod", "/apps/payments", "A", "theirs")
    assert wait_for(lambda: sync_status(kube, namespace) == "Running", timeout=3)  # while writing
    wait_for(lambda: sync_status(kube, namespace) == "Succeeded", timeout=20)
    assert fake.count(r"/api/v4/secrets/batch$", "POST", status=400) == 1
    assert remote(fake) == {"A": "ours", "B": "b"}  # first sync: the fresh read adopts A
    assert status(kube, namespace, SYNCS, "sync")["managedKeys"] == ["A", "B"]


def test_old_server_without_v4_or_metadata_uses_v3_and_the_ledger(
    env: tuple[Any, str, FakeInfisical],
) -> None:
    kube, namespace, fake = env
    fake.v4_enabled = False
    fake.metadata_supported = False
    fake.etag_enabled = False
    put_secret(kube, namespace, "app", {"A": "1", "B": "2", "C": "3"})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec())
    wait_for(lambda: remote(fake) == {"A": "1", "B": "2", "C": "3"})
    wait_for(lambda: status(kube, namespace, SYNCS, "sync").get("managedKeys") == ["A", "B", "C"])
    assert fake.count(r"/api/v3/secrets/batch/raw$", "POST", status=200) == 1
    fake.state.put_secret(PROJECT, "prod", "/apps/payments", "FOREIGN", "f")
    put_secret(kube, namespace, "app", {"A": "1", "B": "two", "FOREIGN": "mine"})
    wait_for(
        lambda: remote(fake) == {"A": "1", "B": "two", "FOREIGN": "f"}, timeout=10
    )  # C deleted via the ledger
    found = status(kube, namespace, SYNCS, "sync")
    assert found["conflicts"] == ["FOREIGN"]
    assert found["ownershipTracking"] == "Ledger"  # known once the server listed keys


def test_new_destination_starts_afresh(env: tuple[Any, str, FakeInfisical]) -> None:
    kube, namespace, fake = env
    fake.metadata_supported = False  # the ledger is all that tells ownership here
    put_secret(kube, namespace, "app", {"A": "1", "B": "2"})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec())
    wait_for(lambda: remote(fake) == {"A": "1", "B": "2"})
    wait_for(lambda: status(kube, namespace, SYNCS, "sync").get("managedKeys") == ["A", "B"])
    fake.state.put_secret(PROJECT, "prod", "/other", "B", "someone else's")
    fake.state.put_secret(PROJECT, "prod", "/other", "C", "unrelated")
    # Suspended while both change, so that no cycle runs in between.
    patch(kube, namespace, SYNCS, "sync", {"spec": {"suspend": True}})
    wait_for(lambda: condition(kube, namespace, SYNCS, "sync", "Ready") == ("False", "Suspended"))
    put_secret(kube, namespace, "app", {"A": "1"})
    patch(kube, namespace, SYNCS, "sync", {"spec": {"destination": {"secretPath": "/other"}}})
    generation = (get(kube, namespace, SYNCS, "sync") or {})["metadata"]["generation"]
    # The spec change runs a (suspended) cycle; once its status is written, status.destination
    # has still not moved: nothing was written to the new destination.
    wait_for(lambda: status(kube, namespace, SYNCS, "sync").get("observedGeneration") == generation)
    assert status(kube, namespace, SYNCS, "sync")["destination"].endswith(":/apps/payments")
    patch(kube, namespace, SYNCS, "sync", {"spec": {"suspend": False}})
    wait_for(lambda: status(kube, namespace, SYNCS, "sync")["destination"].endswith(":/other"))
    wait_for(lambda: sync_status(kube, namespace) == "Succeeded")
    # The old ledger named B, but B at the new path was never ours: not deleted.
    assert remote(fake, "/other") == {"A": "1", "B": "someone else's", "C": "unrelated"}
    assert remote(fake) == {"A": "1", "B": "2"}  # the old destination is left as it was


def test_secret_leaving_the_selector_is_noticed_at_once(
    env: tuple[Any, str, FakeInfisical],
) -> None:
    kube, namespace, fake = env
    label = {"infisical-sync.dev/push": "true"}
    for name in ("one", "two", "three"):
        put_secret(kube, namespace, name, {name.upper(): name}, labels=label)
    spec = sync_spec([])
    spec["source"]["kubernetes"] = {"selector": {"matchLabels": label}}
    create(kube, namespace, SYNCS, "SecretSync", "sync", spec)
    wait_for(lambda: remote(fake) == {"ONE": "one", "TWO": "two", "THREE": "three"})
    put_secret(kube, namespace, "three", {"THREE": "three"}, labels={})  # label removed
    wait_for(lambda: remote(fake) == {"ONE": "one", "TWO": "two"}, timeout=10)  # not the 1h timer


def test_uncertain_source_without_deletes_is_still_not_ready(
    env: tuple[Any, str, FakeInfisical],
) -> None:
    kube, namespace, fake = env
    put_secret(kube, namespace, "app", {"A": "1"})
    spec = sync_spec()
    spec["source"]["kubernetes"]["secrets"] = [{"name": "app", "keys": ["A", "MISSING"]}]
    create(kube, namespace, SYNCS, "SecretSync", "sync", spec)
    wait_for(lambda: remote(fake) == {"A": "1"})  # what could be read is pushed
    wait_for(lambda: sync_status(kube, namespace) == "Failed")
    assert condition(kube, namespace, SYNCS, "sync", "Ready") == ("False", "SourceUncertain")
    assert condition(kube, namespace, SYNCS, "sync", "SourceReady") == ("False", "SecretKeyMissing")
    assert "has no key MISSING" in status(kube, namespace, SYNCS, "sync")["lastSyncMessage"]


def test_a_sync_that_skips_every_key_is_not_synced(env: tuple[Any, str, FakeInfisical]) -> None:
    kube, namespace, fake = env
    binary = base64.b64encode(b"\x89PNG\xff\xfe").decode()
    client.CoreV1Api(kube).create_namespaced_secret(
        namespace, {"metadata": {"name": "app"}, "data": {"LOGO": binary, "ICON": binary}}
    )
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec())
    wait_for(lambda: sync_status(kube, namespace) == "Failed")
    assert condition(kube, namespace, SYNCS, "sync", "Ready") == ("False", "AllKeysSkipped")
    assert condition(kube, namespace, SYNCS, "sync", "Synced") == ("False", "AllKeysSkipped")
    found = status(kube, namespace, SYNCS, "sync")
    assert "every source key was skipped" in found["lastSyncMessage"]
    assert "LOGO: Secret app: value is not UTF-8 text" in found["lastSyncMessage"]
    assert found["skippedKeys"] == [
        "ICON: Secret app: value is not UTF-8 text",
        "LOGO: Secret app: value is not UTF-8 text",
    ]
    assert "AllKeysSkipped" in event_reasons(kube, namespace, "sync")
    assert fake.count(r"/batch$") == 0
    # One key that can be sent makes it a sync again.
    put_secret(kube, namespace, "app", {"NAME": "n"})
    wait_for(lambda: sync_status(kube, namespace) == "Succeeded", timeout=10)
    assert condition(kube, namespace, SYNCS, "sync", "Ready") == ("True", "Synced")


def test_ownership_tracking_says_ledger_from_the_first_sync_on_an_old_server(
    env: tuple[Any, str, FakeInfisical],
) -> None:
    kube, namespace, fake = env
    fake.metadata_supported = False
    put_secret(kube, namespace, "app", {"A": "1"})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec())  # into an empty path
    wait_for(lambda: sync_status(kube, namespace) == "Succeeded")
    assert status(kube, namespace, SYNCS, "sync")["ownershipTracking"] == "Ledger"


def connection_without_credentials(kube: Any, namespace: str, fake: FakeInfisical) -> None:
    """Connection `dest` whose credentials Secret does not exist yet: not Ready."""
    create(
        kube,
        namespace,
        CONNECTIONS,
        "InfisicalConnection",
        "dest",
        {
            "instanceUrl": fake.url,
            "allowInsecureHttp": True,
            "credentials": {"secretRef": {"name": "dest-identity"}},
        },
    )
    wait_for(
        lambda: (
            condition(kube, namespace, CONNECTIONS, "dest", "Ready") == ("False", "SecretNotFound")
        )
    )


@pytest.mark.parametrize(
    "case", ["source ready", "source missing", "manual sync"], ids=lambda c: c.replace(" ", "-")
)
def test_destination_ready_follows_the_connection_becoming_ready(
    operator: OperatorProcess, kube: Any, namespace: str, fake: FakeInfisical, case: str
) -> None:
    connection_without_credentials(kube, namespace, fake)
    if case != "source missing":
        put_secret(kube, namespace, "app", {"A": "1"})
    spec = sync_spec(autoSyncEnabled=case != "manual sync")
    create(kube, namespace, SYNCS, "SecretSync", "sync", spec)
    wait_for(
        lambda: (
            condition(kube, namespace, SYNCS, "sync", "DestinationReady")
            == ("False", "ConnectionNotReady")
        )
    )
    put_secret(
        kube, namespace, "dest-identity", {"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET}
    )
    wait_for(
        lambda: condition(kube, namespace, CONNECTIONS, "dest", "Ready") == ("True", "Validated")
    )
    wait_for(
        lambda: (
            condition(kube, namespace, SYNCS, "sync", "DestinationReady")
            == ("True", "DestinationRead")
        ),
        timeout=15,
    )
    if case == "source missing":
        assert condition(kube, namespace, SYNCS, "sync", "SourceReady") == (
            "False",
            "SecretNotFound",
        )
    else:
        wait_for(lambda: remote(fake) == {"A": "1"})
        # The operator log: one WARNING when it started failing, one line when it recovered.
        recovered = f"SecretSync {namespace}/sync synced again"
        wait_for(lambda: recovered in operator.log())
        assert operator.log().count(f"SecretSync {namespace}/sync failed: ConnectionNotReady") == 1
