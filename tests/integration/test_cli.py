"""`infisical-sync status | plan | sync-now` (and `kubectl infisical-sync`) against the real
control plane, the operator process and the fake Infisical over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from tests.conftest import OperatorProcess, wait_for
from tests.kube_helpers import condition, create, get, put_secret, status

from infisical_sync.testing.controlplane import (
    ControlPlane,
    ensure_kube_binaries,
    grant_cluster_role,
)
from infisical_sync.testing.fake_infisical import BackgroundFake, FakeInfisical, Fault

pytestmark = pytest.mark.controlplane
CONNECTIONS, SYNCS = "infisicalconnections", "secretsyncs"
CLIENT_ID = "55555555-5555-4555-8555-555555555555"
CLIENT_SECRET = "canary-cli-client-secret-5d41402abc4b"
PROJECT = "p-cli"
ROOT = Path(__file__).resolve().parents[2]
# Values that must never reach the CLI's output.
KEEP, OLD, NEW, GONE, ADDED = (f"canary-{word}-{uuid.uuid4().hex}" for word in range(5))


@pytest.fixture
def fake() -> Iterator[FakeInfisical]:
    with BackgroundFake() as server:
        server.state.add_project("payments", project_id=PROJECT)
        server.state.add_identity(CLIENT_ID, CLIENT_SECRET, projects={PROJECT: {}})
        yield server


@pytest.fixture
def env(
    operator: OperatorProcess, kube: Any, namespace: str, fake: FakeInfisical
) -> tuple[Any, str, FakeInfisical]:
    put_secret(
        kube, namespace, "dest-identity", {"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET}
    )
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
        lambda: condition(kube, namespace, CONNECTIONS, "dest", "Ready") == ("True", "Validated")
    )
    return kube, namespace, fake


def sync_spec(secret: str = "app", **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "source": {"kubernetes": {"secrets": [{"name": secret}]}},
        "destination": {
            "connectionRef": {"name": "dest"},
            "projectId": PROJECT,
            "environment": "prod",
            "secretPath": "/apps",
        },
        "syncInterval": "1h",
        # Source edits wait for a request: the plan between an edit and its sync is the test.
        "autoSyncEnabled": False,
    }
    spec.update(overrides)
    return spec


def remote(fake: FakeInfisical) -> dict[str, str]:
    return fake.state.get_secrets(PROJECT, "prod", "/apps")


def cli(
    control_plane: ControlPlane, *args: str, kubeconfig: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it, in its own process."""
    environ = {**os.environ, "KUBECONFIG": str(kubeconfig or control_plane.kubeconfig)}
    return subprocess.run(
        [sys.executable, "-m", "infisical_sync", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def row(output: str, name: str) -> list[str]:
    """The cells of the status line of `name` (kind/name), the message joined back."""
    for line in output.splitlines():
        cells = line.split()
        if name in cells:
            at = cells.index(name)
            return [*cells[at : at + 4], " ".join(cells[at + 4 :])]
    raise AssertionError(f"{name} not in:\n{output}")


def synced(kube: Any, namespace: str, name: str = "sync") -> bool:
    return status(kube, namespace, SYNCS, name).get("syncStatus") == "Succeeded"


def test_status_shows_each_object_with_its_state_and_reason(
    env: tuple[Any, str, FakeInfisical], control_plane: ControlPlane, tmp_path: Path
) -> None:
    kube, namespace, _ = env
    put_secret(kube, namespace, "app", {"A": KEEP})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec())
    create(kube, namespace, SYNCS, "SecretSync", "orphan", sync_spec("missing"))
    wait_for(lambda: synced(kube, namespace))
    wait_for(lambda: condition(kube, namespace, SYNCS, "orphan", "Synced"))

    done = cli(control_plane, "status", "-n", namespace)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["NAME", "READY", "SYNCED", "REASON", "MESSAGE"]
    assert row(done.stdout, "infisicalconnection/dest")[:4] == [
        "infisicalconnection/dest",
        "True",
        "-",
        "Validated",
    ]
    assert f"as {CLIENT_ID}" in row(done.stdout, "infisicalconnection/dest")[4]
    assert row(done.stdout, "secretsync/sync") == [
        "secretsync/sync",
        "True",
        "True",
        "Synced",
        "create 1, update 0, delete 0, unchanged 0",
    ]
    orphan = row(done.stdout, "secretsync/orphan")
    assert orphan[:4] == ["secretsync/orphan", "False", "False", "SecretNotFound"]
    assert "missing" in orphan[4]
    # Connections first, then SecretSyncs by name.
    assert [line.split()[0] for line in lines[1:]] == [
        "infisicalconnection/dest",
        "secretsync/orphan",
        "secretsync/sync",
    ]
    assert KEEP not in done.stdout + done.stderr
    assert CLIENT_SECRET not in done.stdout + done.stderr

    # Without -n: the kubeconfig context's namespace, like kubectl.
    config = yaml.safe_load(control_plane.kubeconfig.read_text())
    for context in config["contexts"]:
        context["context"]["namespace"] = namespace
    scoped = tmp_path / "kubeconfig"
    scoped.write_text(yaml.safe_dump(config))
    default = cli(control_plane, "status", kubeconfig=scoped)
    assert default.returncode == 0, default.stderr
    assert default.stdout == done.stdout

    everywhere = cli(control_plane, "status", "-A")
    assert everywhere.returncode == 0, everywhere.stderr
    assert everywhere.stdout.splitlines()[0].split()[:2] == ["NAMESPACE", "NAME"]
    ours = [line.split() for line in everywhere.stdout.splitlines() if namespace in line.split()]
    assert [cells[:3] for cells in ours] == [
        [namespace, "infisicalconnection/dest", "True"],
        [namespace, "secretsync/orphan", "False"],
        [namespace, "secretsync/sync", "True"],
    ]

    # An API server that is not there: one line, exit 2.
    config["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:9"
    nowhere = tmp_path / "kubeconfig-nowhere"
    nowhere.write_text(yaml.safe_dump(config))
    unreachable = cli(control_plane, "status", kubeconfig=nowhere)
    assert unreachable.returncode == 2
    assert unreachable.stderr.startswith("error: the Kubernetes API server cannot be reached")
    assert len(unreachable.stderr.splitlines()) == 1

    empty = cli(control_plane, "status", "-n", f"{namespace}-none")
    assert empty.returncode == 0
    assert empty.stdout.startswith("No InfisicalConnections or SecretSyncs found")


def resource_versions(kube: Any, namespace: str) -> dict[str, str]:
    core = client.CoreV1Api(kube)
    found = {
        f"secret/{item.metadata.name}": item.metadata.resource_version
        for item in core.list_namespaced_secret(namespace).items
    }
    found |= {
        f"configmap/{item.metadata.name}": item.metadata.resource_version
        for item in core.list_namespaced_config_map(namespace).items
    }
    for plural, name in ((SYNCS, "sync"), (CONNECTIONS, "dest")):
        found[f"{plural}/{name}"] = (get(kube, namespace, plural, name) or {})["metadata"][
            "resourceVersion"
        ]
    return found


def infisical_writes(fake: FakeInfisical) -> int:
    """Requests to the fake that could change something, but logins and token revocations."""
    return sum(1 for record in fake.log if record.method != "GET" and "/auth/" not in record.path)


def test_plan_names_the_next_syncs_changes_by_key_and_writes_nothing(
    env: tuple[Any, str, FakeInfisical], control_plane: ControlPlane
) -> None:
    kube, namespace, fake = env
    put_secret(kube, namespace, "app", {"KEEP": KEEP, "CHANGE": OLD, "GONE": GONE})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec())
    wait_for(lambda: synced(kube, namespace) and len(remote(fake)) == 3)
    # Keys someone else wrote at the destination, which the source now has too: not ours.
    fake.state.put_secret(PROJECT, "prod", "/apps", "BY_HAND", "theirs-1")
    other = [{"key": "infisical-sync.dev/owner", "value": "elsewhere/other"}]
    fake.state.put_secret(PROJECT, "prod", "/apps", "OTHERS", "theirs-2", metadata=other)
    put_secret(
        kube,
        namespace,
        "app",
        {"KEEP": KEEP, "CHANGE": NEW, "ADDED": ADDED, "BY_HAND": NEW, "OTHERS": NEW},
    )
    before = resource_versions(kube, namespace)
    destination = remote(fake)
    writes = infisical_writes(fake)
    logins = fake.count(r"/auth/universal-auth/login$")
    revocations = fake.count(r"/auth/token/revoke$")

    done = cli(control_plane, "plan", f"{namespace}/sync")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines == [
        f"SecretSync {namespace}/sync -> dest/{PROJECT}/prod:/apps",
        "  + ADDED",
        "  ~ CHANGE",
        "  - GONE",
        "create 1, update 1, delete 1, unchanged 1",
        "not written, not managed by this SecretSync (1):",
        "  ? BY_HAND",
        "conflicts, not written (1):",
        "  ! OTHERS: owned by SecretSync elsewhere/other",
    ]
    for value in (KEEP, OLD, NEW, GONE, ADDED, CLIENT_SECRET, "theirs-1", "theirs-2"):
        assert value not in done.stdout + done.stderr

    # Nothing was written: not to Kubernetes, not to Infisical, where it logged in once (and
    # revoked that token on its way out).
    assert resource_versions(kube, namespace) == before
    assert remote(fake) == destination
    assert infisical_writes(fake) == writes
    assert fake.count(r"/auth/universal-auth/login$") == logins + 1
    assert fake.count(r"/auth/token/revoke$") == revocations + 1

    # What it planned is what the sync does.
    now = cli(control_plane, "sync-now", f"{namespace}/sync")
    assert now.returncode == 0, now.stderr
    assert remote(fake) == {
        "KEEP": KEEP,
        "CHANGE": NEW,
        "ADDED": ADDED,
        "BY_HAND": "theirs-1",
        "OTHERS": "theirs-2",
    }
    again = cli(control_plane, "plan", f"{namespace}/sync")
    assert again.returncode == 0, again.stderr
    assert "create 0, update 0, delete 0, unchanged 3" in again.stdout.splitlines()


def wait_allowed(
    kube: Any, user: str, namespace: str, verb: str, resource: str, group: str = ""
) -> None:
    """The authorizer learns of new bindings from a watch: wait until it answers yes."""
    attributes = {"namespace": namespace, "verb": verb, "resource": resource, "group": group}
    review: Any = {"spec": {"user": user, "resourceAttributes": attributes}}
    authorization = client.AuthorizationV1Api(kube)

    def allowed() -> bool:
        answer = authorization.create_subject_access_review(review)
        return bool(answer.status and answer.status.allowed)

    wait_for(allowed, timeout=10, interval=0.05, message=f"{verb} {resource} for {user}")


def test_plan_runs_with_read_access_and_says_which_is_missing(
    env: tuple[Any, str, FakeInfisical], control_plane: ControlPlane
) -> None:
    kube, namespace, _ = env
    put_secret(kube, namespace, "app", {"A": KEEP})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec())
    wait_for(lambda: synced(kube, namespace))
    user = f"cli-reader-{uuid.uuid4().hex[:8]}"
    reads = ["get", "list"]
    grant_cluster_role(
        control_plane.kubeconfig,
        user,
        [
            {
                "apiGroups": ["infisical-sync.dev"],
                "resources": [SYNCS, CONNECTIONS],
                "verbs": reads,
            },
            {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]},
        ],
    )
    wait_allowed(kube, user, namespace, "get", SYNCS, "infisical-sync.dev")
    kubeconfig = control_plane.kubeconfig_for_user(user)

    refused = cli(control_plane, "plan", f"{namespace}/sync", kubeconfig=kubeconfig)
    assert refused.returncode == 2
    assert f"forbidden: your user may not get Secret {namespace}/dest-identity" in refused.stderr
    assert f"get/list on secrets and get on configmaps in namespace {namespace}" in refused.stderr

    # Reads only, in the namespace: enough for a plan (every write it could try would be
    # refused too, besides never being sent).
    rbac = client.RbacAuthorizationV1Api(kube)
    rules = [{"apiGroups": [""], "resources": ["secrets", "configmaps"], "verbs": reads}]
    rbac.create_namespaced_role(namespace, {"metadata": {"name": user}, "rules": rules})
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": user},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": user},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        },
    )
    wait_allowed(kube, user, namespace, "get", "secrets")
    put_secret(kube, namespace, "app", {"A": KEEP, "B": ADDED})
    credentials_reads = control_plane.secret_reads(namespace, "dest-identity", user)
    source_reads = control_plane.secret_reads(namespace, "app", user)
    planned = cli(control_plane, "plan", f"{namespace}/sync", kubeconfig=kubeconfig)
    assert planned.returncode == 0, planned.stderr
    assert "  + B" in planned.stdout.splitlines()
    # As the user: the connection's credentials and the source, once each.
    assert control_plane.secret_reads(namespace, "dest-identity", user) == credentials_reads + 1
    assert control_plane.secret_reads(namespace, "app", user) == source_reads + 1

    # A plan a sync could not make fails like the sync would, with its reason.
    create(kube, namespace, SYNCS, "SecretSync", "orphan", sync_spec("missing"))
    failing = cli(control_plane, "plan", f"{namespace}/orphan", kubeconfig=kubeconfig)
    assert failing.returncode == 1
    assert "no plan, the next sync would stop before planning: SecretNotFound" in failing.stderr

    missing = cli(control_plane, "plan", f"{namespace}/nothing", kubeconfig=kubeconfig)
    assert missing.returncode == 2
    assert f"not found: SecretSync {namespace}/nothing" in missing.stderr


def test_sync_now_waits_for_the_requested_sync_and_exits_with_its_outcome(
    env: tuple[Any, str, FakeInfisical], control_plane: ControlPlane
) -> None:
    kube, namespace, fake = env
    put_secret(kube, namespace, "app", {"A": KEEP})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec())
    wait_for(lambda: synced(kube, namespace))
    put_secret(kube, namespace, "app", {"A": KEEP, "B": ADDED})
    time.sleep(0.5)  # autoSyncEnabled false: the edit alone syncs nothing
    assert remote(fake) == {"A": KEEP}

    done = cli(control_plane, "sync-now", f"{namespace}/sync", "--timeout", "30s")
    assert done.returncode == 0, done.stderr
    assert remote(fake) == {"A": KEEP, "B": ADDED}
    request = status(kube, namespace, SYNCS, "sync")["lastHandledRequest"]
    assert done.stdout.splitlines() == [
        f"requested: infisical-sync.dev/sync-requested-at={request}; waiting up to 30s",
        f"SecretSync {namespace}/sync: Succeeded (Synced)",
        "  create 1, update 0, delete 0, unchanged 1",
    ]
    assert ADDED not in done.stdout + done.stderr

    # A sync that fails: exit 1, with its reason.
    create(kube, namespace, SYNCS, "SecretSync", "orphan", sync_spec("missing"))
    wait_for(lambda: condition(kube, namespace, SYNCS, "orphan", "Synced"))
    failed = cli(control_plane, "sync-now", f"{namespace}/orphan", "--request", "run-7")
    assert failed.returncode == 1
    assert f"SecretSync {namespace}/orphan: Failed (SecretNotFound)" in failed.stdout
    assert status(kube, namespace, SYNCS, "orphan")["lastHandledRequest"] == "run-7"
    # The same value again would run nothing and print the old outcome: refused.
    again = cli(control_plane, "sync-now", f"{namespace}/orphan", "--request", "run-7")
    assert again.returncode == 2
    assert "request run-7 was already handled" in again.stderr

    # Not handled in time (the destination answers after the CLI gave up): exit 3, and the
    # request is still handled afterwards.
    fake.inject(Fault("latency", r"/api/v4/secrets$", method="GET", delay=4, times=1))
    late = cli(control_plane, "sync-now", f"{namespace}/sync", "--timeout", "1", "--request", "r2")
    assert late.returncode == 3
    assert "request r2 not handled within 1s" in late.stderr
    wait_for(
        lambda: status(kube, namespace, SYNCS, "sync").get("lastHandledRequest") == "r2",
        timeout=30,
    )

    gone = cli(control_plane, "sync-now", f"{namespace}/nothing", "--timeout", "5")
    assert gone.returncode == 2
    assert f"not found: secretsyncs {namespace}/nothing" in gone.stderr


def test_kubectl_runs_the_declared_plugin(
    env: tuple[Any, str, FakeInfisical], control_plane: ControlPlane, tmp_path: Path
) -> None:
    """`kubectl infisical-sync` finds kubectl-infisical_sync on PATH: the script pip makes from
    pyproject's entry point (made here the way pip makes it)."""
    _, namespace, _ = env
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts["kubectl-infisical_sync"].split(":")
    assert scripts["infisical-sync"] == "infisical_sync.cli:main"
    plugin = tmp_path / "kubectl-infisical_sync"
    plugin.write_text(
        f"#!{sys.executable}\nimport sys\nfrom {module} import {function}\nsys.exit({function}())\n"
    )
    plugin.chmod(0o755)
    kubectl = str(ensure_kube_binaries(with_kubectl=True)["kubectl"])
    environ = {
        **os.environ,
        "KUBECONFIG": str(control_plane.kubeconfig),
        "PATH": f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}",
    }

    def kubectl_plugin(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [kubectl, "infisical-sync", *args],
            env=environ,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    shown = kubectl_plugin("status", "-n", namespace)
    assert shown.returncode == 0, shown.stderr
    assert row(shown.stdout, "infisicalconnection/dest")[1:4] == ["True", "-", "Validated"]
    usage = kubectl_plugin("--help")
    assert usage.returncode == 0
    assert usage.stdout.startswith("usage: kubectl infisical-sync")
    assert "3 sync-now timed out" in " ".join(usage.stdout.split())


def test_plan_shows_held_deletes_and_the_command_that_lets_them_go(
    env: tuple[Any, str, FakeInfisical], control_plane: ControlPlane
) -> None:
    kube, namespace, fake = env
    put_secret(kube, namespace, "app", {"A": KEEP, "B": OLD, "C": GONE})
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec())
    wait_for(lambda: synced(kube, namespace) and len(remote(fake)) == 3)
    put_secret(kube, namespace, "app", {"A": KEEP})  # two of three owned keys would go

    first = cli(control_plane, "plan", f"{namespace}/sync")
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert "create 0, update 0, delete 0, unchanged 1" in lines
    held = lines.index(next(line for line in lines if line.startswith("deletes held (2): ")))
    assert "would delete 2 of 3 owned keys" in lines[held]
    assert lines[held + 1 : held + 4] == [
        "  ! B",
        "  ! C",
        "  the operator shows the id that lets them go in status.heldDeletes",
    ]

    refused = cli(control_plane, "sync-now", f"{namespace}/sync")
    assert refused.returncode == 1
    hold = status(kube, namespace, SYNCS, "sync")["heldDeletes"]["id"]
    assert f"SecretSync {namespace}/sync: Failed (DeletionHeld)" in refused.stdout
    assert f"  held deletes: infisical-sync.dev/allow-mass-delete={hold}" in refused.stdout

    # Now status shows the hold: the plan names the command, with the id the operator accepts.
    second = cli(control_plane, "plan", f"{namespace}/sync")
    command = (
        f"kubectl annotate secretsync -n {namespace} sync "
        f"infisical-sync.dev/allow-mass-delete={hold}"
    )
    assert f"  to let them go: {command}" in second.stdout.splitlines()
    kubectl = str(ensure_kube_binaries(with_kubectl=True)["kubectl"])
    subprocess.run(
        [kubectl, "--kubeconfig", str(control_plane.kubeconfig), *command.split()[1:]],
        check=True,
        capture_output=True,
        timeout=30,
    )
    wait_for(lambda: remote(fake) == {"A": KEEP}, message="the confirmed deletes")
    after = cli(control_plane, "plan", f"{namespace}/sync")
    assert after.returncode == 0, after.stderr
    assert "nothing to write" in after.stdout.splitlines()

    # A SecretSync whose connection does not exist: no plan, as its sync would stop.
    create(
        kube,
        namespace,
        SYNCS,
        "SecretSync",
        "nowhere",
        {
            **sync_spec(),
            "destination": {**sync_spec()["destination"], "connectionRef": {"name": "x"}},
        },
    )
    stopped = cli(control_plane, "plan", f"{namespace}/nowhere")
    assert stopped.returncode == 1
    assert "stop before planning: ConnectionNotReady: InfisicalConnection" in stopped.stderr

    # Ready for the operator, but the login from where `plan` runs fails: said so.
    fake.inject(Fault("status", r"/auth/universal-auth/login$", method="POST", status=503))
    try:
        unreachable = cli(control_plane, "plan", f"{namespace}/sync")
    finally:
        fake.clear_faults()
    assert unreachable.returncode == 2  # not what the next sync would meet: this machine's
    assert "is Ready for the operator, but logging in from this machine failed: ServerError: " in (
        unreachable.stderr
    )
