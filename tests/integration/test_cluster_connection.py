"""ClusterInfisicalConnection end to end: one connection, defined once in the operator's
namespace, used by the namespaces its namespaceSelector allows; and Kubernetes Auth (on both
kinds of connection) as the chart installs the operator.

The operator runs as the chart's service account: the chart is rendered (namespaced mode,
watchNamespaces, rbac.kubernetesAuth) and its RBAC applied to a control plane of this module's
own; the operator authenticates with a token of that service account. Nothing about Kubernetes
is stubbed; Infisical is the fake, which reviews Kubernetes Auth tokens with the same API server.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, utils
from tests.conftest import OperatorProcess, operator_process, wait_for
from tests.integration.test_cli import cli
from tests.integration.test_kubernetes_auth import (
    admin_token,
    bind_auth_delegator,
    kubernetes_auth,
    service_account,
)
from tests.kube_helpers import GROUP, VERSION, create, delete, put_secret, status

from infisical_sync.testing.controlplane import (
    REPO_ROOT,
    ControlPlane,
    api_client,
    ensure_helm,
    install_crds,
)
from infisical_sync.testing.fake_infisical import BackgroundFake, FakeInfisical

pytestmark = pytest.mark.controlplane
CLUSTER_CONNECTIONS, SYNCS = "clusterinfisicalconnections", "secretsyncs"
KIND = "ClusterInfisicalConnection"
OPERATOR_NAMESPACE = "infisical-sync"  # the chart's release namespace (README Install)
TEAMS = ("team-a", "team-b", "team-c")  # watchNamespaces
ALLOW = "infisical-sync.dev/shared-connection"  # the label the connections select by
CLIENT_ID = "88888888-8888-4888-8888-888888888888"
CLIENT_SECRET = "canary-cluster-connection-secret-7f3a"
IDENTITY_ID = "99999999-9999-4999-8999-999999999999"
LOGIN_ACCOUNT = "infisical-login"
PROJECT = "p-shared"
CHART = REPO_ROOT / "deploy" / "helm" / "infisical-sync"
CLUSTER_ID = "cluster-connection-test"
RBAC_KINDS = {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}


# --- the chart's service account on a control plane of this module's own ----------------------


def chart_rbac(namespaces: tuple[str, ...]) -> list[dict[str, Any]]:
    """The chart's ServiceAccount and RBAC, namespaced mode, as `helm template` renders them."""
    rendered = subprocess.run(
        [
            str(ensure_helm(3)),
            "template",
            "infisical-sync",
            str(CHART),
            "-n",
            OPERATOR_NAMESPACE,
            "--set",
            "rbac.clusterWide=false",
            "--set",
            f"watchNamespaces={{{','.join(namespaces)}}}",
            "--set",
            "rbac.kubernetesAuth=true",
            "--set",
            f"clusterId={CLUSTER_ID}",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [d for d in yaml.safe_load_all(rendered) if d and d.get("kind") in RBAC_KINDS]


def allowed(kube: Any, user: str, **attributes: str) -> bool:
    review: Any = {"spec": {"user": user, "resourceAttributes": attributes}}
    return bool(client.AuthorizationV1Api(kube).create_subject_access_review(review).status.allowed)


def token_kubeconfig(plane: ControlPlane, token: str, path: Path) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "plane",
                "cluster": {"server": plane.url, "certificate-authority": str(plane.ca_file)},
            }
        ],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "plane", "user": "operator"}}],
        "current-context": "operator",
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def plane(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    with ControlPlane() as own:
        install_crds(own.kubeconfig)
        yield own


@pytest.fixture(scope="module")
def kube(plane: ControlPlane) -> Any:
    return api_client(plane.kubeconfig)


@pytest.fixture(scope="module")
def operator(
    plane: ControlPlane, kube: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    core = client.CoreV1Api(kube)
    for namespace in (OPERATOR_NAMESPACE, *TEAMS, "elsewhere"):
        core.create_namespace({"metadata": {"name": namespace}})
    rbac = chart_rbac(TEAMS)
    for document in rbac:
        utils.create_from_dict(kube, document)
    account = next(d for d in rbac if d["kind"] == "ServiceAccount")["metadata"]["name"]
    user = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{account}"
    # The authorizer learns of bindings from a watch: wait until the last ones apply.
    wait_for(
        lambda: (
            allowed(kube, user, verb="watch", group=GROUP, resource=CLUSTER_CONNECTIONS)
            and allowed(kube, user, verb="get", resource="secrets", namespace=OPERATOR_NAMESPACE)
        ),
        timeout=20,
        message="the chart's RBAC in force",
    )
    directory = tmp_path_factory.mktemp("cluster-connection")
    token = admin_token(kube, OPERATOR_NAMESPACE, account)
    kubeconfig = token_kubeconfig(plane, token, directory / "kubeconfig")
    scope = tuple(arg for team in TEAMS for arg in ("-n", team))
    with operator_process(
        kubeconfig,
        directory / "operator.log",
        env={"INFISICAL_SYNC_OPERATOR_NAMESPACE": OPERATOR_NAMESPACE},
        args=["--cluster-id", CLUSTER_ID],
        scope=scope,
    ) as process:
        yield process


@pytest.fixture
def fake() -> Iterator[FakeInfisical]:
    with BackgroundFake() as server:
        server.state.add_project("shared", project_id=PROJECT)
        server.state.add_identity(CLIENT_ID, CLIENT_SECRET, projects={PROJECT: {}})
        yield server


# --- helpers ------------------------------------------------------------------------------------


def shared_identity(kube: Any) -> None:
    """The credentials Secret the cluster connections name, in the operator's namespace."""
    put_secret(
        kube,
        OPERATOR_NAMESPACE,
        "shared-identity",
        {"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET},
    )


def cluster_connection(
    kube: Any, name: str, url: str, selector: dict[str, Any] | None, **spec: Any
) -> None:
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name},
        "spec": {
            "instanceUrl": url,
            "allowInsecureHttp": True,
            "credentials": {"secretRef": {"name": "shared-identity"}},
            "validationInterval": "1h",
            **({"namespaceSelector": selector} if selector is not None else {}),
            **spec,
        },
    }
    body["spec"] = {key: value for key, value in body["spec"].items() if value is not None}
    client.CustomObjectsApi(kube).create_cluster_custom_object(
        GROUP, VERSION, CLUSTER_CONNECTIONS, body
    )


def cluster_status(kube: Any, name: str) -> dict[str, Any]:
    try:
        found: Any = client.CustomObjectsApi(kube).get_cluster_custom_object(
            GROUP, VERSION, CLUSTER_CONNECTIONS, name
        )
    except client.exceptions.ApiException as exc:
        if exc.status == 404:
            return {}
        raise
    return dict(found.get("status") or {})


def get_cluster_connection(kube: Any, name: str) -> dict[str, Any]:
    found: Any = client.CustomObjectsApi(kube).get_cluster_custom_object(
        GROUP, VERSION, CLUSTER_CONNECTIONS, name
    )
    return dict(found)


def patch_cluster_connection(kube: Any, name: str, body: dict[str, Any]) -> None:
    client.CustomObjectsApi(kube).patch_cluster_custom_object(
        GROUP, VERSION, CLUSTER_CONNECTIONS, name, body
    )


def label_namespace(kube: Any, namespace: str, value: str | None) -> None:
    client.CoreV1Api(kube).patch_namespace(namespace, {"metadata": {"labels": {ALLOW: value}}})


def ready(found: dict[str, Any]) -> tuple[str, str] | None:
    for item in found.get("conditions") or []:
        if item["type"] == "Ready":
            return item["status"], item["reason"]
    return None


def conditions(found: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in found.get("conditions") or []}


def secret_sync(
    kube: Any, namespace: str, name: str, connection: str, path: str, **spec: Any
) -> None:
    create(
        kube,
        namespace,
        SYNCS,
        "SecretSync",
        name,
        {
            "source": {"kubernetes": {"secrets": [{"name": name}]}},
            "destination": {
                "connectionRef": {"kind": KIND, "name": connection},
                "projectId": PROJECT,
                "environment": "prod",
                "secretPath": path,
            },
            "syncInterval": "1h",
            **spec,
        },
    )


def remote(fake: FakeInfisical, path: str) -> dict[str, str]:
    return fake.state.get_secrets(PROJECT, "prod", path)


def touched(fake: FakeInfisical, path: str) -> int:
    """Requests the fake answered that named `path` (query or body)."""
    return sum(1 for r in fake.log if path in json.dumps(r.query) or path in r.path)


def events(kube: Any, namespace: str, name: str, kind: str) -> list[tuple[str, str, str]]:
    items = client.CoreV1Api(kube).list_namespaced_event(namespace).items
    return [
        (str(e.type), str(e.reason), str(e.message))
        for e in items
        if e.involved_object.name == name and e.involved_object.kind == kind
    ]


# --- tests --------------------------------------------------------------------------------------


def test_a_cluster_connection_serves_the_namespaces_its_selector_allows(
    operator: OperatorProcess, kube: Any, fake: FakeInfisical
) -> None:
    name = f"shared-{uuid.uuid4().hex[:6]}"
    shared_identity(kube)
    cluster_connection(kube, name, fake.url, {"matchLabels": {ALLOW: name}})
    label_namespace(kube, "team-a", name)
    for team in ("team-a", "team-b"):
        put_secret(kube, team, "app", {"DB_PASSWORD": f"{team}-password"})
        secret_sync(kube, team, "app", name, f"/{team}")

    wait_for(lambda: ready(cluster_status(kube, name)) == ("True", "Validated"), 30)
    wait_for(lambda: remote(fake, "/team-a") == {"DB_PASSWORD": "team-a-password"}, 30)
    denied = wait_for(
        lambda: (
            found
            if ready(found := status(kube, "team-b", SYNCS, "app"))
            == ("False", "ConnectionNotAllowed")
            else None
        ),
        30,
        message="team-b refused",
    )
    assert conditions(denied)["Stalled"] == "True"
    assert conditions(denied)["Reconciling"] == "False"
    message = next(c["message"] for c in denied["conditions"] if c["type"] == "Ready")
    assert f"ClusterInfisicalConnection {name} does not allow namespace team-b" in message
    assert f"namespaceSelector {{{ALLOW}={name}}}" in message
    # Nothing read or written for team-b: its path never reached Infisical, no key is its own.
    assert touched(fake, "/team-b") == 0 and remote(fake, "/team-b") == {}
    assert not denied.get("managedKeys")
    # The status counts its users, the refused among them.
    wait_for(
        lambda: (
            {
                k: cluster_status(kube, name).get(k)
                for k in ("secretSyncs", "namespaces", "deniedSecretSyncs")
            }
            == {"secretSyncs": 2, "namespaces": 2, "deniedSecretSyncs": 1}
        ),
        20,
        message="usage counts",
    )

    # A label on the namespace: allowed within seconds, without touching the SecretSync.
    label_namespace(kube, "team-b", name)
    wait_for(lambda: remote(fake, "/team-b") == {"DB_PASSWORD": "team-b-password"}, 20)
    wait_for(lambda: cluster_status(kube, name).get("deniedSecretSyncs") == 0, 20)

    # The label removed: refused again; the keys it wrote stay, nothing more is written.
    label_namespace(kube, "team-a", None)
    wait_for(
        lambda: ready(status(kube, "team-a", SYNCS, "app")) == ("False", "ConnectionNotAllowed"),
        20,
    )
    writes = fake.count(r"/secrets", method="PATCH") + fake.count(r"/secrets", method="POST")
    put_secret(kube, "team-a", "app", {"DB_PASSWORD": "changed-while-refused"})
    time.sleep(3)  # the change kicks a cycle at once; it must stop before reading or writing
    assert remote(fake, "/team-a") == {"DB_PASSWORD": "team-a-password"}
    assert (
        fake.count(r"/secrets", method="PATCH") + fake.count(r"/secrets", method="POST") == writes
    )

    # The selector widened to every namespace: allowed again, and the change syncs.
    # (A merge patch of {} would change nothing: the matchLabels go, an empty selector stays.)
    logins = fake.count(r"/universal-auth/login$")
    patch_cluster_connection(kube, name, {"spec": {"namespaceSelector": {"matchLabels": None}}})
    assert (
        cluster_status(kube, name)
        and get_cluster_connection(kube, name)["spec"]["namespaceSelector"] == {}
    )
    wait_for(lambda: remote(fake, "/team-a") == {"DB_PASSWORD": "changed-while-refused"}, 20)
    wait_for(lambda: ready(status(kube, "team-a", SYNCS, "app")) == ("True", "Synced"), 20)
    assert fake.count(r"/universal-auth/login$") == logins  # who may use it is not a login

    # Its Events: in "default", as the API server wants them for a cluster-scoped object.
    reasons = [reason for _, reason, _ in events(kube, "default", name, KIND)]
    assert "Ready" in reasons
    # The client secret is nowhere the operator reports to.
    assert CLIENT_SECRET not in operator.log()
    assert CLIENT_SECRET not in json.dumps(cluster_status(kube, name))
    for team in ("team-a", "team-b"):
        delete(kube, team, SYNCS, "app")
    client.CustomObjectsApi(kube).delete_cluster_custom_object(
        GROUP, VERSION, CLUSTER_CONNECTIONS, name
    )
    wait_for(lambda: not cluster_status(kube, name), 30, message="the connection gone")


def test_deletion_waits_for_its_users_and_a_refused_namespace_keeps_its_keys(
    operator: OperatorProcess, kube: Any, fake: FakeInfisical
) -> None:
    name = f"teardown-{uuid.uuid4().hex[:6]}"
    shared_identity(kube)
    cluster_connection(kube, name, fake.url, {"matchLabels": {ALLOW: name}})
    label_namespace(kube, "team-c", name)
    put_secret(kube, "team-c", "teardown", {"API_KEY": "kept"})
    secret_sync(kube, "team-c", "teardown", name, "/team-c", deletionPolicy="Delete")
    wait_for(lambda: remote(fake, "/team-c") == {"API_KEY": "kept"}, 30)

    label_namespace(kube, "team-c", None)
    wait_for(
        lambda: (
            ready(status(kube, "team-c", SYNCS, "teardown")) == ("False", "ConnectionNotAllowed")
        ),
        20,
    )
    client.CustomObjectsApi(kube).delete_cluster_custom_object(
        GROUP, VERSION, CLUSTER_CONNECTIONS, name
    )
    held = wait_for(
        lambda: (
            found
            if "deletion waits" in (found := cluster_status(kube, name)).get("message", "")
            else None
        ),
        20,
        message="the deletion held",
    )
    assert "team-c/teardown" in held["message"]

    # Deleting the SecretSync: its namespace may no longer use the connection, so its
    # deletionPolicy Delete removes nothing; the keys stay and an Event says so.
    delete(kube, "team-c", SYNCS, "teardown")
    wait_for(lambda: not cluster_status(kube, name), 30, message="the connection gone")
    assert status(kube, "team-c", SYNCS, "teardown") == {}
    assert remote(fake, "/team-c") == {"API_KEY": "kept"}
    left = [e for e in events(kube, "team-c", "teardown", "SecretSync") if e[0] == "Warning"]
    assert any(
        reason == "ConnectionNotAllowed" and "keys left in place" in msg for _, reason, msg in left
    )


def test_credentials_are_read_in_the_operators_namespace_only(
    operator: OperatorProcess, kube: Any, fake: FakeInfisical
) -> None:
    name = f"elsewhere-{uuid.uuid4().hex[:6]}"
    # A Secret of that name in a team's namespace is not the one meant.
    put_secret(kube, "team-a", "team-identity", {"clientId": CLIENT_ID, "clientSecret": "x"})
    cluster_connection(
        kube, name, fake.url, {}, credentials={"secretRef": {"name": "team-identity"}}
    )
    found = wait_for(
        lambda: (
            s if ready(s := cluster_status(kube, name)) == ("False", "SecretNotFound") else None
        ),
        20,
    )
    assert f"{OPERATOR_NAMESPACE}/team-identity not found" in found["message"]
    # Created where it belongs: the Secret watch of the operator's namespace revalidates at once.
    put_secret(
        kube,
        OPERATOR_NAMESPACE,
        "team-identity",
        {"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET},
    )
    wait_for(lambda: ready(cluster_status(kube, name)) == ("True", "Validated"), 20)
    # The chart's RBAC: Secrets in the watched namespaces and the operator's, nowhere else.
    user = f"system:serviceaccount:{OPERATOR_NAMESPACE}:infisical-sync"
    assert allowed(kube, user, verb="get", resource="secrets", namespace=OPERATOR_NAMESPACE)
    assert not allowed(kube, user, verb="get", resource="secrets", namespace="elsewhere")
    assert not allowed(kube, user, verb="get", resource="secrets", namespace="kube-system")
    client.CustomObjectsApi(kube).delete_cluster_custom_object(
        GROUP, VERSION, CLUSTER_CONNECTIONS, name
    )


def test_kubernetes_auth_with_the_operators_service_account(
    operator: OperatorProcess, plane: ControlPlane, kube: Any
) -> None:
    """method kubernetes-auth on a cluster connection: the login service account is in the
    operator's namespace, its token requested as the chart's RBAC allows (rbac.kubernetesAuth),
    and reviewed by the fake with the real TokenReview."""
    name = f"keyless-{uuid.uuid4().hex[:6]}"
    service_account(kube, OPERATOR_NAMESPACE, "token-reviewer")
    bind_auth_delegator(kube, [], OPERATOR_NAMESPACE, "token-reviewer")
    reviewer = admin_token(kube, OPERATOR_NAMESPACE, "token-reviewer")
    service_account(kube, OPERATOR_NAMESPACE, LOGIN_ACCOUNT)
    with BackgroundFake() as server:
        server.state.add_project("shared", project_id=PROJECT)
        server.state.add_kubernetes_identity(
            kubernetes_auth(
                plane,
                token_reviewer_jwt=reviewer,
                allowed_namespaces=OPERATOR_NAMESPACE,
                allowed_names=LOGIN_ACCOUNT,
            ),
            identity_id=IDENTITY_ID,
            projects={PROJECT: {}},
        )
        cluster_connection(
            kube,
            name,
            server.url,
            {"matchLabels": {"kubernetes.io/metadata.name": "team-b"}},
            credentials=None,
            method="kubernetes-auth",
            kubernetesAuth={
                "identityId": IDENTITY_ID,
                "serviceAccountRef": {"name": LOGIN_ACCOUNT},
            },
        )
        wait_for(lambda: ready(cluster_status(kube, name)) == ("True", "Validated"), 30)
        put_secret(kube, "team-b", "keyless", {"TOKEN_FREE": "yes"})
        secret_sync(kube, "team-b", "keyless", name, "/keyless")
        wait_for(lambda: remote(server, "/keyless") == {"TOKEN_FREE": "yes"}, 30)
        assert cluster_status(kube, name)["identityId"] == IDENTITY_ID
        delete(kube, "team-b", SYNCS, "keyless")
        wait_for(lambda: status(kube, "team-b", SYNCS, "keyless") == {}, 20)
        client.CustomObjectsApi(kube).delete_cluster_custom_object(
            GROUP, VERSION, CLUSTER_CONNECTIONS, name
        )
        wait_for(lambda: not cluster_status(kube, name), 20)


def test_plan_and_status_with_a_cluster_connection(
    operator: OperatorProcess, plane: ControlPlane, kube: Any, fake: FakeInfisical
) -> None:
    """`plan` decides access before it reads the connection's Secret or logs in; `status`
    lists the cluster connections the SecretSyncs shown use."""
    name = f"planned-{uuid.uuid4().hex[:6]}"
    shared_identity(kube)
    cluster_connection(kube, name, fake.url, {"matchLabels": {ALLOW: name}})
    label_namespace(kube, "team-a", name)
    for team in ("team-a", "team-b"):
        put_secret(kube, team, "planned", {"NEW_KEY": "v"})
        secret_sync(kube, team, "planned", name, f"/planned-{team}", dryRun=True)
    wait_for(lambda: ready(cluster_status(kube, name)) == ("True", "Validated"), 30)
    wait_for(lambda: status(kube, "team-a", SYNCS, "planned").get("plan"), 30)

    logins = fake.count(r"/universal-auth/login$")
    refused = cli(plane, "plan", "team-b/planned", "--operator-namespace", OPERATOR_NAMESPACE)
    assert refused.returncode == 1, refused.stderr
    assert "ConnectionNotAllowed" in refused.stderr
    assert f"ClusterInfisicalConnection {name} does not allow namespace team-b" in refused.stderr
    assert fake.count(r"/universal-auth/login$") == logins  # refused before any login

    planned = cli(plane, "plan", "team-a/planned", "--operator-namespace", OPERATOR_NAMESPACE)
    assert planned.returncode == 0, planned.stderr
    assert f"-> cluster:{name}/{PROJECT}/prod:/planned-team-a" in planned.stdout
    assert "+ NEW_KEY" in planned.stdout
    assert CLIENT_SECRET not in planned.stdout + planned.stderr

    shown = cli(plane, "status", "-n", "team-a")
    assert shown.returncode == 0, shown.stderr
    assert f"clusterinfisicalconnection/{name}" in shown.stdout
    assert "secretsync/planned" in shown.stdout
    for team in ("team-a", "team-b"):
        delete(kube, team, SYNCS, "planned")
    label_namespace(kube, "team-a", None)


def test_an_operator_not_serving_cluster_connections_says_so_and_lets_deletions_go(
    operator: OperatorProcess, plane: ControlPlane, kube: Any, tmp_path: Path
) -> None:
    """--no-cluster-connections (chart value clusterConnections.enabled=false): a SecretSync
    naming one is refused with the reason, not retried for ever, and its deletion goes through
    leaving the keys alone. (A second operator, for a namespace the module's does not watch.)"""
    put_secret(kube, "elsewhere", "unserved", {"KEY": "v"})
    secret_sync(kube, "elsewhere", "unserved", "anything", "/unserved")
    with operator_process(
        plane.kubeconfig,
        tmp_path / "unserving.log",
        args=["--no-cluster-connections", "--cluster-id", CLUSTER_ID],
        scope=("-n", "elsewhere"),
    ) as unserving:
        found = wait_for(
            lambda: (
                s
                if ready(s := status(kube, "elsewhere", SYNCS, "unserved"))
                == ("False", "ConnectionNotAllowed")
                else None
            ),
            30,
        )
        assert conditions(found)["Stalled"] == "True"
        message = next(c["message"] for c in found["conditions"] if c["type"] == "Ready")
        assert "this operator does not serve ClusterInfisicalConnections" in message
        delete(kube, "elsewhere", SYNCS, "unserved")
        wait_for(lambda: status(kube, "elsewhere", SYNCS, "unserved") == {}, 20)
        assert "Traceback" not in unserving.log()


def test_an_infisical_source_on_a_refused_cluster_connection_is_not_read(
    operator: OperatorProcess, kube: Any, fake: FakeInfisical
) -> None:
    """The cluster connection as the source (Infisical to Infisical), the destination an
    InfisicalConnection of the namespace: refused, the source path is never asked for."""
    name = f"source-{uuid.uuid4().hex[:6]}"
    shared_identity(kube)
    fake.state.put_secret(PROJECT, "prod", f"/{name}", "FROM_SOURCE", "copied")
    cluster_connection(kube, name, fake.url, {"matchLabels": {ALLOW: name}})
    put_secret(
        kube, "team-b", "local-identity", {"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET}
    )
    local = {
        "instanceUrl": fake.url,
        "allowInsecureHttp": True,
        "credentials": {"secretRef": {"name": "local-identity"}},
        "validationInterval": "1h",
    }
    create(kube, "team-b", "infisicalconnections", "InfisicalConnection", name, local)
    copy = {
        "source": {
            "infisical": {
                "connectionRef": {"kind": KIND, "name": name},
                "projectId": PROJECT,
                "environment": "prod",
                "secretPath": f"/{name}",
            }
        },
        "destination": {
            "connectionRef": {"name": name},
            "projectId": PROJECT,
            "environment": "prod",
            "secretPath": f"/{name}-copy",
        },
        "syncInterval": "1h",
    }
    create(kube, "team-b", SYNCS, "SecretSync", name, copy)
    found = wait_for(
        lambda: (
            s
            if ready(s := status(kube, "team-b", SYNCS, name)) == ("False", "ConnectionNotAllowed")
            else None
        ),
        30,
    )
    assert {c["type"]: c["status"] for c in found["conditions"]}["SourceReady"] == "False"
    assert touched(fake, f"/{name}") == 0 and remote(fake, f"/{name}-copy") == {}

    label_namespace(kube, "team-b", name)
    wait_for(lambda: remote(fake, f"/{name}-copy") == {"FROM_SOURCE": "copied"}, 20)
    delete(kube, "team-b", SYNCS, name)
    wait_for(lambda: status(kube, "team-b", SYNCS, name) == {}, 20)
    label_namespace(kube, "team-b", None)


def test_kubernetes_auth_on_an_infisical_connection_as_the_charts_service_account(
    operator: OperatorProcess, plane: ControlPlane, kube: Any
) -> None:
    """Section 1 as installed: an InfisicalConnection with method kubernetes-auth in a watched
    namespace, its login service account there, the token requested by the chart's service
    account through the Role the chart renders (rbac.kubernetesAuth), reviewed by the fake."""
    suffix = uuid.uuid4().hex[:6]
    reviewer, login = f"reviewer-{suffix}", f"login-{suffix}"
    service_account(kube, "team-a", reviewer)
    bind_auth_delegator(kube, [], "team-a", reviewer)
    service_account(kube, "team-a", login)
    with BackgroundFake() as server:
        server.state.add_project("shared", project_id=PROJECT)
        server.state.add_kubernetes_identity(
            kubernetes_auth(
                plane,
                token_reviewer_jwt=admin_token(kube, "team-a", reviewer),
                allowed_namespaces="team-a",
                allowed_names=login,
            ),
            identity_id=IDENTITY_ID,
            projects={PROJECT: {}},
        )
        spec = {
            "instanceUrl": server.url,
            "allowInsecureHttp": True,
            "method": "kubernetes-auth",
            "kubernetesAuth": {"identityId": IDENTITY_ID, "serviceAccountRef": {"name": login}},
            "validationInterval": "1h",
        }
        create(kube, "team-a", "infisicalconnections", "InfisicalConnection", login, spec)
        put_secret(kube, "team-a", login, {"KEYLESS": "namespaced"})
        create(
            kube,
            "team-a",
            SYNCS,
            "SecretSync",
            login,
            {
                "source": {"kubernetes": {"secrets": [{"name": login}]}},
                "destination": {
                    "connectionRef": {"name": login},
                    "projectId": PROJECT,
                    "environment": "prod",
                    "secretPath": f"/{login}",
                },
                "syncInterval": "1h",
            },
        )
        wait_for(lambda: remote(server, f"/{login}") == {"KEYLESS": "namespaced"}, 30)
        connection = status(kube, "team-a", "infisicalconnections", login)
        assert ready(connection) == ("True", "Validated")
        assert connection["identityId"] == IDENTITY_ID
        jwts = server.state.kubernetes_jwts_seen
        assert jwts and all(jwt.rsplit(".", 1)[-1] not in operator.log() for jwt in jwts)
        delete(kube, "team-a", SYNCS, login)
        wait_for(lambda: status(kube, "team-a", SYNCS, login) == {}, 20)
