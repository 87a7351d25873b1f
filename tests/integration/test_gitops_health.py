"""GitOps health on statuses the operator wrote: kstatus conditions, the Argo CD health checks
(deploy/argocd/*.lua in a real Lua) and `kubectl wait`; and server-side apply as a GitOps tool
does it: no field manager but the GitOps one owns spec or the user's metadata."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from tests.argocd_health import argocd_health
from tests.conftest import OperatorProcess, wait_for
from tests.kube_helpers import GROUP, VERSION, create, get, patch, put_secret

from infisical_sync.shards import PREFIX
from infisical_sync.testing.controlplane import ControlPlane, ensure_kube_binaries
from infisical_sync.testing.fake_infisical import BackgroundFake, FakeInfisical, Fault

pytestmark = pytest.mark.controlplane
CONNECTIONS, SYNCS = "infisicalconnections", "secretsyncs"
CLIENT_ID = "55555555-5555-4555-8555-555555555555"
CLIENT_SECRET = "canary-gitops-client-secret-0c1d2e"
PROJECT = "p-gitops"
GITOPS = "argocd-controller"


@pytest.fixture
def fake() -> Iterator[FakeInfisical]:
    with BackgroundFake() as server:
        server.state.add_project("payments", project_id=PROJECT)
        server.state.add_identity(CLIENT_ID, CLIENT_SECRET, projects={PROJECT: {}})
        yield server


def connection_spec(fake: FakeInfisical, secret: str = "dest-identity") -> dict[str, Any]:
    return {
        "instanceUrl": fake.url,
        "allowInsecureHttp": True,
        "credentials": {"secretRef": {"name": secret}},
    }


def sync_spec(connection: str = "dest", **overrides: Any) -> dict[str, Any]:
    return {
        "source": {"kubernetes": {"secrets": [{"name": "app"}]}},
        "destination": {
            "connectionRef": {"name": connection},
            "projectId": PROJECT,
            "environment": "prod",
            "secretPath": "/apps",
        },
        "syncInterval": "1h",
        **overrides,
    }


def identity(kube: Any, namespace: str, secret: str = CLIENT_SECRET) -> None:
    put_secret(kube, namespace, "dest-identity", {"clientId": CLIENT_ID, "clientSecret": secret})


def live(kube: Any, namespace: str, plural: str, name: str) -> dict[str, Any]:
    found = get(kube, namespace, plural, name)
    assert found is not None
    return found


def conditions(obj: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {
        c["type"]: (c["status"], c["reason"])
        for c in (obj.get("status") or {}).get("conditions", [])
    }


def progress(obj: dict[str, Any]) -> tuple[str | None, str | None]:
    """(Reconciling, Stalled) statuses."""
    found = conditions(obj)
    return (found.get("Reconciling", (None,))[0], found.get("Stalled", (None,))[0])


def assert_current(obj: dict[str, Any]) -> None:
    """kstatus Current: Ready, neither Reconciling nor Stalled, all for this generation."""
    generation = obj["metadata"]["generation"]
    assert obj["status"]["observedGeneration"] == generation
    assert conditions(obj)["Ready"][0] == "True"
    assert progress(obj) == ("False", "False")
    assert {c["observedGeneration"] for c in obj["status"]["conditions"]} == {generation}


def ready_in(kube: Any, namespace: str, plural: str, name: str, generation: int = 1) -> Any:
    def check() -> bool:
        obj = live(kube, namespace, plural, name)
        ready = conditions(obj).get("Ready", ("",))[0] == "True"
        return ready and obj["status"]["observedGeneration"] == generation

    wait_for(check, timeout=40, message=f"{plural}/{name} Ready at generation {generation}")


def with_condition(
    kube: Any, namespace: str, plural: str, name: str, type_: str, reason: str, generation: int = 1
) -> dict[str, Any]:
    def check() -> bool:
        obj = live(kube, namespace, plural, name)
        observed = (obj.get("status") or {}).get("observedGeneration")
        return observed == generation and conditions(obj).get(type_) == ("True", reason)

    wait_for(check, timeout=60, message=f"{plural}/{name} {type_}=True ({reason})")
    return live(kube, namespace, plural, name)


def kubectl(plane: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    binary = str(ensure_kube_binaries(with_kubectl=True)["kubectl"])
    return subprocess.run(
        [binary, "--kubeconfig", str(plane.kubeconfig), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
    )


@pytest.fixture
def env(
    operator: OperatorProcess, kube: Any, namespace: str, fake: FakeInfisical
) -> tuple[Any, str, FakeInfisical]:
    return kube, namespace, fake


def test_a_synced_sync_and_its_connection_are_healthy_and_kubectl_wait_returns(
    env: tuple[Any, str, FakeInfisical], control_plane: ControlPlane
) -> None:
    kube, namespace, fake = env
    identity(kube, namespace)
    create(kube, namespace, CONNECTIONS, "InfisicalConnection", "dest", connection_spec(fake))
    put_secret(kube, namespace, "app", {"A": "1"})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec())
    for args in (["ssync/sync"], ["infconn/dest"]):
        waited = kubectl(
            control_plane, "wait", "-n", namespace, *args, "--for=condition=Ready", "--timeout=60s"
        )
        assert waited.returncode == 0, waited.stderr
    connection = live(kube, namespace, CONNECTIONS, "dest")
    sync = live(kube, namespace, SYNCS, "sync")
    assert_current(connection)
    assert_current(sync)
    assert conditions(connection)["Ready"] == ("True", "Validated")
    assert conditions(sync)["Ready"] == ("True", "Synced")
    assert argocd_health(connection) == ("Healthy", connection["status"]["message"])
    assert argocd_health(sync) == ("Healthy", sync["status"]["lastSyncMessage"])


def test_a_new_object_is_not_current_before_the_operator_has_handled_it(
    kube: Any, namespace: str, fake: FakeInfisical
) -> None:
    """What the API server stores on create, before any operator can have answered: the CRDs'
    status default, which kstatus reads as not reconciled yet (no status reads as Current)."""
    api = client.CustomObjectsApi(kube)
    for plural, kind, spec in (
        (CONNECTIONS, "InfisicalConnection", connection_spec(fake)),
        (SYNCS, "SecretSync", sync_spec()),
    ):
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": "new"}}
        created = api.create_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, {**body, "spec": spec}
        )
        assert created["status"] == {"observedGeneration": -1}
        assert created["metadata"]["generation"] == 1
        health, message = argocd_health(created)
        assert health == "Progressing" and message.startswith("Waiting for the operator's first")


def test_a_sync_whose_connection_does_not_exist_stalls_and_kubectl_wait_sees_it_through(
    env: tuple[Any, str, FakeInfisical], control_plane: ControlPlane
) -> None:
    """A connectionRef naming no InfisicalConnection (a typo, or not created yet) waits for
    someone to act, like a missing source Secret: Stalled, Degraded. Creating the connection
    clears it without anything else done."""
    kube, namespace, fake = env
    put_secret(kube, namespace, "app", {"A": "1"})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec())
    sync = with_condition(kube, namespace, SYNCS, "sync", "Stalled", "ConnectionNotReady")
    assert conditions(sync)["Ready"] == ("False", "ConnectionNotReady")
    assert progress(sync) == ("False", "True")
    health, message = argocd_health(sync)
    assert health == "Degraded" and message.endswith("is not Ready: it does not exist"), message
    binary = str(ensure_kube_binaries(with_kubectl=True)["kubectl"])
    wait = [binary, "--kubeconfig", str(control_plane.kubeconfig), "wait", "-n", namespace]
    with subprocess.Popen(
        [*wait, "ssync/sync", "--for=condition=Ready", "--timeout=120s"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as waiting:
        try:
            identity(kube, namespace)
            create(
                kube, namespace, CONNECTIONS, "InfisicalConnection", "dest", connection_spec(fake)
            )
            _out, err = waiting.communicate(timeout=150)
        finally:
            if waiting.poll() is None:
                waiting.kill()
                waiting.wait()
        assert waiting.returncode == 0, err
    sync = live(kube, namespace, SYNCS, "sync")
    assert_current(sync)
    assert argocd_health(sync)[0] == "Healthy"


def test_an_edit_not_synced_yet_and_a_transient_failure_progress(
    env: tuple[Any, str, FakeInfisical], control_plane: ControlPlane
) -> None:
    kube, namespace, fake = env
    identity(kube, namespace)
    create(kube, namespace, CONNECTIONS, "InfisicalConnection", "dest", connection_spec(fake))
    put_secret(kube, namespace, "app", {"A": "1"})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec())
    ready_in(kube, namespace, SYNCS, "sync")
    # Every list of the destination hangs (10 s; the operator gives up after 5): the cycle of
    # the edit cannot end, and then fails as Unreachable.
    fake.inject(Fault("hang", r"/api/v4/secrets$", method="GET", delay=10))
    patch(kube, namespace, SYNCS, "sync", {"spec": {"syncInterval": "2h"}})
    wait_for(lambda: fake.in_flight >= 1, message="the edit's cycle under way")
    sync = live(kube, namespace, SYNCS, "sync")
    assert (sync["metadata"]["generation"], sync["status"]["observedGeneration"]) == (2, 1)
    assert conditions(sync)["Ready"] == ("True", "Synced")  # of generation 1
    assert argocd_health(sync) == (
        "Progressing",
        "Generation 2 is not synced yet (status is for generation 1)",
    )
    # kubectl wait does not take generation 1's Ready for generation 2's.
    stale = kubectl(
        control_plane,
        "wait",
        "-n",
        namespace,
        "ssync/sync",
        "--for=condition=Ready",
        "--timeout=2s",
    )
    # It timed out (not some other kubectl error) while the only Ready was generation 1's.
    assert stale.returncode != 0 and "timed out" in stale.stderr, stale.stderr
    # Nothing made generation 2 Ready meanwhile: the status is still generation 1's (or, on a
    # slow machine, the edit's cycle has just failed: Ready False).
    sync = live(kube, namespace, SYNCS, "sync")
    assert sync["status"]["observedGeneration"] == 1 or conditions(sync)["Ready"][0] == "False"
    # A cycle of generation 1 that was under way may fail first: generation 2's failure.
    sync = with_condition(kube, namespace, SYNCS, "sync", "Reconciling", "Unreachable", 2)
    assert progress(sync) == ("True", "False")
    assert argocd_health(sync)[0] == "Progressing"
    fake.clear_faults()
    ready_in(kube, namespace, SYNCS, "sync", generation=2)
    sync = live(kube, namespace, SYNCS, "sync")
    assert_current(sync)
    assert argocd_health(sync)[0] == "Healthy"


def test_a_missing_source_secret_is_degraded_until_it_exists(
    env: tuple[Any, str, FakeInfisical], control_plane: ControlPlane
) -> None:
    kube, namespace, fake = env
    identity(kube, namespace)
    create(kube, namespace, CONNECTIONS, "InfisicalConnection", "dest", connection_spec(fake))
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec())
    sync = with_condition(kube, namespace, SYNCS, "sync", "Stalled", "SecretNotFound")
    assert progress(sync) == ("False", "True")
    assert conditions(sync)["Ready"] == ("False", "SecretNotFound")
    health, message = argocd_health(sync)
    assert health == "Degraded" and message.startswith("SecretNotFound: ")
    # A pipeline can stop waiting at once: Stalled is there to wait for too.
    stalled = kubectl(
        control_plane,
        "wait",
        "-n",
        namespace,
        "ssync/sync",
        "--for=condition=Stalled",
        "--timeout=30s",
    )
    assert stalled.returncode == 0, stalled.stderr
    put_secret(kube, namespace, "app", {"A": "1"})  # the watch picks it up
    ready_in(kube, namespace, SYNCS, "sync")
    sync = live(kube, namespace, SYNCS, "sync")
    assert_current(sync)
    assert argocd_health(sync)[0] == "Healthy"


def test_refused_credentials_degrade_the_connection_and_the_syncs_on_it(
    env: tuple[Any, str, FakeInfisical],
) -> None:
    kube, namespace, fake = env
    identity(kube, namespace, secret="not-the-client-secret")
    create(kube, namespace, CONNECTIONS, "InfisicalConnection", "dest", connection_spec(fake))
    put_secret(kube, namespace, "app", {"A": "1"})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec())
    connection = with_condition(
        kube, namespace, CONNECTIONS, "dest", "Stalled", "InvalidCredentials"
    )
    assert conditions(connection)["Ready"] == ("False", "InvalidCredentials")
    assert progress(connection) == ("False", "True")
    assert argocd_health(connection)[0] == "Degraded"
    # The SecretSync fails where it says (its connection) and stalls for the connection's cause.
    sync = with_condition(kube, namespace, SYNCS, "sync", "Stalled", "ConnectionNotReady")
    assert progress(sync) == ("False", "True")
    health, message = argocd_health(sync)
    assert health == "Degraded" and "InvalidCredentials" in message
    assert CLIENT_SECRET not in repr(connection) + repr(sync)


def test_held_deletes_are_degraded_until_confirmed(env: tuple[Any, str, FakeInfisical]) -> None:
    kube, namespace, fake = env
    identity(kube, namespace)
    create(kube, namespace, CONNECTIONS, "InfisicalConnection", "dest", connection_spec(fake))
    put_secret(kube, namespace, "app", {k: k for k in "ABCD"})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec())
    ready_in(kube, namespace, SYNCS, "sync")
    put_secret(kube, namespace, "app", {"A": "A"})  # three of four keys would go
    sync = with_condition(kube, namespace, SYNCS, "sync", "Stalled", "DeletionHeld")
    assert progress(sync) == ("False", "True")
    health, message = argocd_health(sync)
    assert health == "Degraded" and message.startswith("DeletionHeld: ")
    confirm = {f"{PREFIX}/allow-mass-delete": sync["status"]["heldDeletes"]["id"]}
    patch(kube, namespace, SYNCS, "sync", {"metadata": {"annotations": confirm}})
    wait_for(lambda: fake.state.get_secrets(PROJECT, "prod", "/apps") == {"A": "A"})
    wait_for(lambda: progress(live(kube, namespace, SYNCS, "sync")) == ("False", "False"))
    sync = live(kube, namespace, SYNCS, "sync")
    assert_current(sync)
    assert argocd_health(sync)[0] == "Healthy"


def test_a_suspended_sync_is_suspended_and_resumes(env: tuple[Any, str, FakeInfisical]) -> None:
    kube, namespace, fake = env
    identity(kube, namespace)
    create(kube, namespace, CONNECTIONS, "InfisicalConnection", "dest", connection_spec(fake))
    put_secret(kube, namespace, "app", {"A": "1"})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec(suspend=True))
    wait_for(
        lambda: (
            conditions(live(kube, namespace, SYNCS, "sync")).get("Ready") == ("False", "Suspended")
        ),
        message="suspended",
    )
    sync = live(kube, namespace, SYNCS, "sync")
    assert progress(sync) == ("False", "False")
    assert argocd_health(sync) == ("Suspended", "suspended: spec.suspend is true")
    assert fake.state.get_secrets(PROJECT, "prod", "/apps") == {}
    patch(kube, namespace, SYNCS, "sync", {"spec": {"suspend": False}})
    ready_in(kube, namespace, SYNCS, "sync", generation=2)
    assert argocd_health(live(kube, namespace, SYNCS, "sync"))[0] == "Healthy"


def test_a_plan_waiting_for_approval_in_infisical_is_suspended(
    env: tuple[Any, str, FakeInfisical],
) -> None:
    kube, namespace, fake = env
    fake.state.require_approval(PROJECT, "prod")
    identity(kube, namespace)
    create(kube, namespace, CONNECTIONS, "InfisicalConnection", "dest", connection_spec(fake))
    put_secret(kube, namespace, "app", {"A": "1"})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec())
    wait_for(
        lambda: (
            conditions(live(kube, namespace, SYNCS, "sync")).get("Ready")
            == ("False", "ApprovalRequired")
        ),
        message="waiting for approval",
    )
    sync = live(kube, namespace, SYNCS, "sync")
    assert progress(sync) == ("False", "False")
    health, message = argocd_health(sync)
    [request] = fake.open_approvals()
    assert health == "Suspended" and request.id in message
    fake.merge_approval(request.id)
    patch(kube, namespace, SYNCS, "sync", {"spec": {"syncInterval": "2h"}})  # a cycle now
    ready_in(kube, namespace, SYNCS, "sync", generation=2)
    assert argocd_health(live(kube, namespace, SYNCS, "sync"))[0] == "Healthy"


# --- server-side apply -------------------------------------------------------------------------


def manifests(namespace: str, fake: FakeInfisical, *, label: str, interval: str) -> str:
    metadata = {
        "namespace": namespace,
        "labels": {"app.kubernetes.io/part-of": "payments", "team": label},
        "annotations": {"example.com/owner": "payments-team"},
    }
    sync_metadata = {
        **metadata,
        "annotations": {
            **metadata["annotations"],
            f"{PREFIX}/sync-requested-at": f"gitops-{label}",
        },
    }
    documents = [
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "InfisicalConnection",
            "metadata": {"name": "dest", **metadata},
            "spec": connection_spec(fake),
        },
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "SecretSync",
            "metadata": {"name": "sync", **sync_metadata},
            "spec": sync_spec(syncInterval=interval),
        },
    ]
    return yaml.safe_dump_all(documents)


def apply(plane: ControlPlane, path: Path, text: str) -> None:
    path.write_text(text)
    # No --force-conflicts: a field another manager owns would make this fail.
    applied = kubectl(plane, "apply", "--server-side", f"--field-manager={GITOPS}", "-f", str(path))
    assert applied.returncode == 0, applied.stderr


def owned_by_others(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What each manager but the GitOps one owns outside the status subresource."""
    return {
        f"{entry['manager']} ({entry['operation']})": entry.get("fieldsV1", {})
        for entry in obj["metadata"]["managedFields"]
        if entry["manager"] != GITOPS and entry.get("subresource") != "status"
    }


def test_server_side_apply_leaves_spec_and_user_metadata_to_the_gitops_tool(
    env: tuple[Any, str, FakeInfisical], control_plane: ControlPlane, tmp_path: Path
) -> None:
    kube, namespace, fake = env
    identity(kube, namespace)
    put_secret(kube, namespace, "app", {"A": "1"})
    manifest = tmp_path / "manifest.yaml"
    apply(control_plane, manifest, manifests(namespace, fake, label="a", interval="1h"))
    ready_in(kube, namespace, CONNECTIONS, "dest")
    ready_in(kube, namespace, SYNCS, "sync")
    # A second commit: a label, a requested sync and the spec change; applied without forcing.
    apply(control_plane, manifest, manifests(namespace, fake, label="b", interval="2h"))
    ready_in(kube, namespace, SYNCS, "sync", generation=2)
    wait_for(
        lambda: (
            live(kube, namespace, SYNCS, "sync")["status"].get("lastHandledRequest") == "gitops-b"
        ),
        message="the requested sync handled",
    )
    apply(control_plane, manifest, manifests(namespace, fake, label="b", interval="2h"))
    for plural, name in ((CONNECTIONS, "dest"), (SYNCS, "sync")):
        obj = live(kube, namespace, plural, name)
        mine = [e for e in obj["metadata"]["managedFields"] if e["manager"] == GITOPS]
        assert [e["operation"] for e in mine] == ["Apply"]
        assert "f:spec" in mine[0]["fieldsV1"]
        assert "f:team" in mine[0]["fieldsV1"]["f:metadata"]["f:labels"]
        others = owned_by_others(obj)
        # The operator's own entry is there to be checked (kopf's finalizer).
        assert any("f:finalizers" in f.get("f:metadata", {}) for f in others.values()), others
        for manager, fields in others.items():
            assert "f:spec" not in fields, f"{manager} owns spec fields of {plural}/{name}"
            metadata = fields.get("f:metadata", {})
            # The finalizer (kopf's, for removing keys on deletion) and the operator's own
            # annotations (kopf's last-handled-configuration of a connection) only.
            assert set(metadata) <= {"f:finalizers", "f:annotations"}, (manager, metadata)
            for key in metadata.get("f:annotations", {}):
                assert key.startswith(f"f:{PREFIX}/"), (manager, key)
                assert key != f"f:{PREFIX}/sync-requested-at", (manager, key)
        assert obj["metadata"]["labels"]["team"] == "b"
        assert obj["metadata"]["annotations"]["example.com/owner"] == "payments-team"
        assert_current(obj)
        assert argocd_health(obj)[0] == "Healthy"
    assert live(kube, namespace, SYNCS, "sync")["spec"]["syncInterval"] == "2h"
