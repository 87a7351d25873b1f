"""InfisicalConnection with method kubernetes-auth, end to end on the real control plane.

The operator (as the chart's RBAC user) requests service account tokens from the real
kube-apiserver; the fake Infisical checks each one with a real TokenReview against the same
API server and applies the identity's allow-lists (fake_kubernetes_auth.py). Nothing about
Kubernetes is stubbed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from tests import kube_helpers
from tests.conftest import OperatorProcess, wait_for
from tests.kube_helpers import create, patch, put_secret

from infisical_sync.testing.controlplane import (
    ControlPlane,
    grant_cluster_role,
    grant_kubernetes_auth,
)
from infisical_sync.testing.fake_infisical import BackgroundFake, FakeInfisical
from infisical_sync.testing.fake_state import KubernetesAuthConfig
from infisical_sync.testing.samples import SAMPLES

pytestmark = pytest.mark.controlplane
CONNECTIONS, SYNCS = "infisicalconnections", "secretsyncs"
IDENTITY_ID = "55555555-5555-4555-8555-555555555555"
LOGIN_ACCOUNT = "infisical-login"
AUDIENCE = "https://infisical.example.com"
PROJECT = "p-k8s-auth"
LOGIN = "/api/v1/auth/kubernetes-auth/login"
CANARY_VALUE = "canary-value-kubernetes-auth-0cc175b9"


def service_account(kube: Any, namespace: str, name: str) -> None:
    client.CoreV1Api(kube).create_namespaced_service_account(
        namespace, {"metadata": {"name": name}}
    )


def admin_token(kube: Any, namespace: str, name: str) -> str:
    """A token for the service account, requested as the cluster admin (the reviewer's)."""
    request: Any = {"spec": {"expirationSeconds": 3600}}
    answer = client.CoreV1Api(kube).create_namespaced_service_account_token(
        name, namespace, request
    )
    return str(answer.status.token)


@pytest.fixture
def auth_delegators(kube: Any) -> Iterator[list[tuple[str, str]]]:
    """Service accounts (namespace, name) bound to system:auth-delegator (TokenReview rights)
    for the test; the cluster-scoped bindings are deleted afterwards."""
    bound: list[tuple[str, str]] = []
    yield bound
    rbac = client.RbacAuthorizationV1Api(kube)
    for namespace, name in bound:
        rbac.delete_cluster_role_binding(f"auth-delegator-{namespace}-{name}")


def bind_auth_delegator(kube: Any, bound: list[tuple[str, str]], namespace: str, name: str) -> None:
    binding: Any = {
        "metadata": {"name": f"auth-delegator-{namespace}-{name}"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "system:auth-delegator",
        },
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
    }
    client.RbacAuthorizationV1Api(kube).create_cluster_role_binding(binding)
    bound.append((namespace, name))
    # The authorizer learns of bindings from a watch: wait until it allows the review.
    review: Any = {
        "spec": {
            "user": f"system:serviceaccount:{namespace}:{name}",
            "resourceAttributes": {
                "group": "authentication.k8s.io",
                "resource": "tokenreviews",
                "verb": "create",
            },
        }
    }
    authorization = client.AuthorizationV1Api(kube)
    wait_for(
        lambda: authorization.create_subject_access_review(review).status.allowed,
        timeout=10,
        interval=0.05,
        message="TokenReview rights",
    )


@pytest.fixture
def reviewer_jwt(kube: Any, namespace: str, auth_delegators: list[tuple[str, str]]) -> str:
    """Infisical's "token reviewer JWT": a service account bound to system:auth-delegator."""
    service_account(kube, namespace, "token-reviewer")
    bind_auth_delegator(kube, auth_delegators, namespace, "token-reviewer")
    return admin_token(kube, namespace, "token-reviewer")


def kubernetes_auth(control_plane: ControlPlane, **allowed: Any) -> KubernetesAuthConfig:
    return KubernetesAuthConfig(
        kubernetes_host=control_plane.url, ca_pem=control_plane.ca_file.read_text(), **allowed
    )


@pytest.fixture
def fake(control_plane: ControlPlane, namespace: str, reviewer_jwt: str) -> Iterator[FakeInfisical]:
    """An identity whose Kubernetes Auth allows the login account of the test's namespace,
    with the audience AUDIENCE, reviewed with the reviewer's JWT."""
    with BackgroundFake() as server:
        server.state.add_project("payments", project_id=PROJECT)
        server.state.add_kubernetes_identity(
            kubernetes_auth(
                control_plane,
                token_reviewer_jwt=reviewer_jwt,
                allowed_namespaces=f"other-namespace, {namespace}",
                allowed_names=LOGIN_ACCOUNT,
                allowed_audience=AUDIENCE,
            ),
            identity_id=IDENTITY_ID,
            projects={PROJECT: {}},
        )
        yield server


def create_connection(
    kube: Any, namespace: str, url: str, name: str = "conn", **kubernetes_auth: Any
) -> None:
    spec = {
        "instanceUrl": url,
        "allowInsecureHttp": True,
        "method": "kubernetes-auth",
        "kubernetesAuth": {
            "identityId": IDENTITY_ID,
            "serviceAccountRef": {"name": LOGIN_ACCOUNT},
            "audiences": [AUDIENCE],
            **kubernetes_auth,
        },
        "validationInterval": "1m",
    }
    create(kube, namespace, CONNECTIONS, "InfisicalConnection", name, spec)


def ready(kube: Any, namespace: str, name: str = "conn") -> tuple[str, str] | None:
    return kube_helpers.condition(kube, namespace, CONNECTIONS, name, "Ready")


def wait_ready(
    kube: Any, namespace: str, expected: tuple[str, str], timeout: float = 20, name: str = "conn"
) -> dict[str, Any]:
    wait_for(lambda: ready(kube, namespace, name) == expected, timeout, message=f"Ready={expected}")
    return kube_helpers.status(kube, namespace, CONNECTIONS, name)


def conditions(found: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in found["conditions"]}


def events_text(kube: Any, namespace: str) -> str:
    items = client.CoreV1Api(kube).list_namespaced_event(namespace).items
    return "\n".join(f"{e.reason} {e.message}" for e in items)


def assert_no_jwt_leaked(
    fake: FakeInfisical, operator: OperatorProcess, kube: Any, namespace: str
) -> None:
    """Canary: no service account token the fake received appears in the operator's log, in the
    namespace's Events, or in any status of the namespace's objects."""
    jwts = set(fake.state.kubernetes_jwts_seen)
    assert jwts, "the fake saw no Kubernetes Auth login"
    custom = client.CustomObjectsApi(kube)
    statuses = json.dumps(
        [
            item.get("status")
            for plural in (CONNECTIONS, SYNCS)
            for item in custom.list_namespaced_custom_object(
                "infisical-sync.dev", "v1alpha1", namespace, plural
            )["items"]
        ]
    )
    places = {"operator log": operator.log(), "events": events_text(kube, namespace)}
    places["status"] = statuses
    for jwt in jwts:
        # The signature alone: a line that quotes part of the token leaks it just as much.
        signature = jwt.rsplit(".", 1)[-1]
        assert len(signature) > 20
        for where, text in places.items():
            assert signature not in text, f"a service account token is in the {where}"


def test_connection_logs_in_with_a_reviewed_token_and_a_secretsync_syncs_through_it(
    operator: OperatorProcess,
    control_plane: ControlPlane,
    kube: Any,
    namespace: str,
    fake: FakeInfisical,
) -> None:
    grant_kubernetes_auth(control_plane.kubeconfig, namespace)  # rbac.kubernetesAuth=true
    service_account(kube, namespace, LOGIN_ACCOUNT)
    create_connection(kube, namespace, fake.url)
    found = wait_ready(kube, namespace, ("True", "Validated"))
    assert conditions(found)["CredentialsValid"] == "True"
    assert found["identityId"] == IDENTITY_ID and "clientId" not in found
    assert f"service account {namespace}/{LOGIN_ACCOUNT}" in found["message"]
    assert found["tokenExpiresAt"]
    assert fake.count(LOGIN, "POST", 200) >= 1

    put_secret(kube, namespace, "app", {"DB_PASSWORD": CANARY_VALUE})
    create(
        kube,
        namespace,
        SYNCS,
        "SecretSync",
        "sync",
        {
            "source": {"kubernetes": {"secrets": [{"name": "app"}]}},
            "destination": {
                "connectionRef": {"name": "conn"},
                "projectId": PROJECT,
                "environment": "prod",
                "secretPath": "/apps",
            },
            "syncInterval": "1h",
        },
    )
    wait_for(
        lambda: kube_helpers.status(kube, namespace, SYNCS, "sync").get("syncStatus") == "Succeeded"
    )
    assert fake.state.get_secrets(PROJECT, "prod", "/apps") == {"DB_PASSWORD": CANARY_VALUE}
    assert_no_jwt_leaked(fake, operator, kube, namespace)


def test_every_login_sends_a_fresh_token(
    operator: OperatorProcess,
    control_plane: ControlPlane,
    kube: Any,
    namespace: str,
    fake: FakeInfisical,
) -> None:
    grant_kubernetes_auth(control_plane.kubeconfig, namespace)
    service_account(kube, namespace, LOGIN_ACCOUNT)
    create_connection(kube, namespace, fake.url)
    wait_ready(kube, namespace, ("True", "Validated"))
    logins = fake.count(LOGIN, "POST", 200)
    # A spec change logs in again (and a refused token would, too): with a new token.
    patch(kube, namespace, CONNECTIONS, "conn", {"spec": {"validationInterval": "2m"}})
    wait_for(
        lambda: fake.count(LOGIN, "POST", 200) > logins,
        message="a second login",
    )
    seen = fake.state.kubernetes_jwts_seen
    assert len(seen) >= 2 and len(set(seen)) == len(seen)
    # Each was issued for the login account and the configured audience (a real TokenReview).
    review: Any = {"spec": {"token": seen[-1], "audiences": [AUDIENCE]}}
    answer = client.AuthenticationV1Api(kube).create_token_review(review)
    assert answer.status.authenticated
    assert answer.status.user.username == f"system:serviceaccount:{namespace}:{LOGIN_ACCOUNT}"
    assert_no_jwt_leaked(fake, operator, kube, namespace)


def test_renewal_keeps_the_login_and_a_refused_token_logs_in_with_a_fresh_one(
    operator: OperatorProcess,
    control_plane: ControlPlane,
    kube: Any,
    namespace: str,
    fake: FakeInfisical,
) -> None:
    """The access token's lifecycle is Universal Auth's: renewed at two thirds of its TTL (no
    new login, no new service account token), a login when Infisical refuses it (with a new
    service account token)."""
    identity = fake.state.identity_by_id(IDENTITY_ID)
    assert identity is not None
    # Renewal due after 8 s; a sync call between 8 and 12 s renews (the source is edited every
    # second), a later one would find the token expired and log in.
    identity.access_token_ttl = 12
    grant_kubernetes_auth(control_plane.kubeconfig, namespace)
    service_account(kube, namespace, LOGIN_ACCOUNT)
    create_connection(kube, namespace, fake.url)
    wait_ready(kube, namespace, ("True", "Validated"))
    put_secret(kube, namespace, "app", {"KEY": "v0"})
    create(
        kube,
        namespace,
        SYNCS,
        "SecretSync",
        "sync",
        {
            "source": {"kubernetes": {"secrets": [{"name": "app"}]}},
            "destination": {
                "connectionRef": {"name": "conn"},
                "projectId": PROJECT,
                "environment": "prod",
                "secretPath": "/",
            },
            "syncInterval": "1h",
        },
    )
    wait_for(lambda: fake.state.get_secrets(PROJECT, "prod") == {"KEY": "v0"})
    logins = fake.count(LOGIN, "POST", 200)
    edits = iter(range(1, 1000))

    def renewed() -> bool:
        # Each edit of the source makes the SecretSync call Infisical with the cached token.
        put_secret(kube, namespace, "app", {"KEY": f"v{next(edits)}"})
        return fake.count("/api/v1/auth/token/renew", "POST", 200) > 0

    wait_for(renewed, timeout=40, interval=1, message="a renewal")
    assert fake.count(LOGIN, "POST", 200) == logins  # renewed, not logged in again

    for token in fake.state.tokens.values():
        token.revoked = True  # Infisical now answers 401 to the cached token
    seen = len(fake.state.kubernetes_jwts_seen)
    put_secret(kube, namespace, "app", {"KEY": "after-revocation"})
    wait_for(lambda: fake.state.get_secrets(PROJECT, "prod") == {"KEY": "after-revocation"})
    assert fake.count(LOGIN, "POST", 200) > logins
    jwts = fake.state.kubernetes_jwts_seen
    assert len(jwts) > seen and len(set(jwts)) == len(jwts)  # the new login: a new token
    assert_no_jwt_leaked(fake, operator, kube, namespace)


def test_missing_service_account_then_created(
    operator: OperatorProcess,
    control_plane: ControlPlane,
    kube: Any,
    namespace: str,
    fake: FakeInfisical,
) -> None:
    grant_kubernetes_auth(control_plane.kubeconfig, namespace)
    create_connection(kube, namespace, fake.url)
    found = wait_ready(kube, namespace, ("False", "ServiceAccountNotFound"))
    assert f"ServiceAccount {namespace}/{LOGIN_ACCOUNT} not found" in found["message"]
    assert conditions(found)["Stalled"] == "True"
    assert fake.count(LOGIN) == 0  # no login without a token
    # The failure retry (5 s, 10 s, ...) picks it up.
    service_account(kube, namespace, LOGIN_ACCOUNT)
    wait_ready(kube, namespace, ("True", "Validated"), timeout=30)


def test_token_request_forbidden_without_the_rbac(
    operator: OperatorProcess, kube: Any, namespace: str, fake: FakeInfisical
) -> None:
    service_account(kube, namespace, LOGIN_ACCOUNT)  # the chart's default rules only
    create_connection(kube, namespace, fake.url)
    found = wait_ready(kube, namespace, ("False", "TokenRequestForbidden"))
    assert "rbac.kubernetesAuth=true" in found["message"]
    assert conditions(found)["Stalled"] == "True"
    assert conditions(found)["CredentialsValid"] == "False"
    assert fake.count(LOGIN) == 0


def test_token_requests_limited_to_named_service_accounts(
    operator: OperatorProcess,
    control_plane: ControlPlane,
    kube: Any,
    namespace: str,
    fake: FakeInfisical,
) -> None:
    """rbac.kubernetesAuthServiceAccountNames: tokens for the named account only."""
    grant_kubernetes_auth(
        control_plane.kubeconfig, namespace, service_account_names=[LOGIN_ACCOUNT]
    )
    service_account(kube, namespace, LOGIN_ACCOUNT)
    service_account(kube, namespace, "another-account")
    create_connection(kube, namespace, fake.url)
    wait_ready(kube, namespace, ("True", "Validated"))
    create_connection(
        kube, namespace, fake.url, name="other", serviceAccountRef={"name": "another-account"}
    )
    wait_ready(kube, namespace, ("False", "TokenRequestForbidden"), name="other")


def test_audience_not_allowed(
    operator: OperatorProcess,
    control_plane: ControlPlane,
    kube: Any,
    namespace: str,
    fake: FakeInfisical,
) -> None:
    """A token for another audience: the API server's TokenReview (asked for the identity's
    allowed audience) does not authenticate it."""
    grant_kubernetes_auth(control_plane.kubeconfig, namespace)
    service_account(kube, namespace, LOGIN_ACCOUNT)
    create_connection(kube, namespace, fake.url, audiences=["https://elsewhere.example.com"])
    found = wait_ready(kube, namespace, ("False", "KubernetesAuthRefused"))
    # The API server's own words, passed on by Infisical.
    assert "is invalid for the target audiences" in found["message"]
    assert conditions(found)["Stalled"] == "True"
    assert_no_jwt_leaked(fake, operator, kube, namespace)


def test_namespace_and_name_not_allowed(
    operator: OperatorProcess,
    control_plane: ControlPlane,
    kube: Any,
    namespace: str,
    fake: FakeInfisical,
) -> None:
    grant_kubernetes_auth(control_plane.kubeconfig, namespace)
    service_account(kube, namespace, "another-account")
    create_connection(kube, namespace, fake.url, serviceAccountRef={"name": "another-account"})
    found = wait_ready(kube, namespace, ("False", "KubernetesAuthRefused"))
    assert "Access denied: K8s name not allowed." in found["message"]
    identity = fake.state.identity_by_id(IDENTITY_ID)
    assert identity is not None and identity.kubernetes_auth is not None
    identity.kubernetes_auth.allowed_namespaces = "team-*"
    service_account(kube, namespace, LOGIN_ACCOUNT)
    renamed = {"kubernetesAuth": {"serviceAccountRef": {"name": LOGIN_ACCOUNT}}}
    patch(kube, namespace, CONNECTIONS, "conn", {"spec": renamed})
    wait_for(
        lambda: (
            "Access denied: K8s namespace not allowed."
            in kube_helpers.status(kube, namespace, CONNECTIONS, "conn")["message"]
        ),
        message="namespace not allowed",
    )
    assert_no_jwt_leaked(fake, operator, kube, namespace)


def test_identity_without_kubernetes_auth(
    operator: OperatorProcess,
    control_plane: ControlPlane,
    kube: Any,
    namespace: str,
    fake: FakeInfisical,
) -> None:
    grant_kubernetes_auth(control_plane.kubeconfig, namespace)
    service_account(kube, namespace, LOGIN_ACCOUNT)
    create_connection(kube, namespace, fake.url, identityId=str(uuid.uuid4()))
    found = wait_ready(kube, namespace, ("False", "IdentityNotConfiguredForKubernetesAuth"))
    assert "did you configure Kubernetes auth?" in found["message"]
    assert conditions(found)["Stalled"] == "True"


def test_the_client_token_as_its_own_reviewer(
    operator: OperatorProcess,
    control_plane: ControlPlane,
    kube: Any,
    namespace: str,
    fake: FakeInfisical,
    auth_delegators: list[tuple[str, str]],
) -> None:
    """An identity without a reviewer JWT reviews each token with itself: the token must be one
    the API server accepts (its own audience: no audiences set on either side), and the login
    account needs TokenReview rights (system:auth-delegator)."""
    identity = fake.state.identity_by_id(IDENTITY_ID)
    assert identity is not None and identity.kubernetes_auth is not None
    identity.kubernetes_auth.token_reviewer_jwt = None
    grant_kubernetes_auth(control_plane.kubeconfig, namespace)
    service_account(kube, namespace, LOGIN_ACCOUNT)
    # A token for another audience is no credential for the API server: 401, "Unauthorized".
    create_connection(kube, namespace, fake.url)
    found = wait_ready(kube, namespace, ("False", "KubernetesAuthRefused"))
    assert "Unauthorized" in found["message"]
    identity.kubernetes_auth.allowed_audience = ""
    patch(kube, namespace, CONNECTIONS, "conn", {"spec": {"kubernetesAuth": {"audiences": []}}})
    wait_for(
        lambda: (
            "tokenreviews" in kube_helpers.status(kube, namespace, CONNECTIONS, "conn")["message"]
        ),
        message="the API server's 403 for the review, passed on by Infisical",
    )
    bind_auth_delegator(kube, auth_delegators, namespace, LOGIN_ACCOUNT)
    # A spec change tries again at once (a refused login waits otherwise).
    patch(kube, namespace, CONNECTIONS, "conn", {"spec": {"validationInterval": "2m"}})
    wait_ready(kube, namespace, ("True", "Validated"), timeout=30)
    assert_no_jwt_leaked(fake, operator, kube, namespace)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"method": "kubernetes-auth"}, "method kubernetes-auth needs kubernetesAuth"),
        (
            {
                "method": "kubernetes-auth",
                "credentials": {"secretRef": {"name": "identity"}},
                "kubernetesAuth": {"identityId": IDENTITY_ID, "serviceAccountRef": {"name": "a"}},
            },
            "credentials is for method machine-identity-universal-auth only",
        ),
        (
            {
                "credentials": {"secretRef": {"name": "identity"}},
                "kubernetesAuth": {"identityId": IDENTITY_ID, "serviceAccountRef": {"name": "a"}},
            },
            "kubernetesAuth is for method kubernetes-auth only",
        ),
        ({}, "method machine-identity-universal-auth needs credentials"),
    ],
    ids=["kubernetes-auth-alone", "kubernetes-auth-with-credentials", "universal-with-k8s", "none"],
)
def test_each_method_takes_its_own_fields_only(
    kube: Any, namespace: str, spec: dict[str, Any], message: str
) -> None:
    with pytest.raises(ApiException) as refused:
        create(
            kube,
            namespace,
            CONNECTIONS,
            "InfisicalConnection",
            "conn",
            {"instanceUrl": "https://infisical.example.com", **spec},
        )
    assert refused.value.status == 422
    assert message in str(refused.value.body)


def test_the_sample_is_accepted_by_the_api_server(kube: Any, namespace: str) -> None:
    """deploy/samples/kubernetes-auth/ passes the CRD's schema and CEL rules as written."""
    for path in sorted((SAMPLES / "kubernetes-auth").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        doc["metadata"]["namespace"] = namespace
        if doc["kind"] == "ServiceAccount":
            client.CoreV1Api(kube).create_namespaced_service_account(namespace, doc)
        else:
            client.CustomObjectsApi(kube).create_namespaced_custom_object(
                "infisical-sync.dev", "v1alpha1", namespace, CONNECTIONS, doc
            )
    stored = kube_helpers.get(kube, namespace, CONNECTIONS, "selfhosted-kubernetes-auth")
    assert stored is not None and stored["spec"]["method"] == "kubernetes-auth"


def test_plan_logs_in_with_the_users_token_request(
    operator: OperatorProcess,
    control_plane: ControlPlane,
    kube: Any,
    namespace: str,
    fake: FakeInfisical,
) -> None:
    """`plan` logs in as the operator would, requesting the service account's token with the
    user's credentials: a user who may not create it is told so."""
    grant_kubernetes_auth(control_plane.kubeconfig, namespace)
    service_account(kube, namespace, LOGIN_ACCOUNT)
    create_connection(kube, namespace, fake.url)
    wait_ready(kube, namespace, ("True", "Validated"))
    put_secret(kube, namespace, "app", {"KEY": "value"})
    spec = {
        "source": {"kubernetes": {"secrets": [{"name": "app"}]}},
        "destination": {
            "connectionRef": {"name": "conn"},
            "projectId": PROJECT,
            "environment": "prod",
            "secretPath": "/",
        },
        "syncInterval": "1h",
        "dryRun": True,  # the operator writes nothing: the plan still adds KEY
    }
    create(kube, namespace, SYNCS, "SecretSync", "sync", spec)

    def plan(kubeconfig: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "infisical_sync", "plan", f"{namespace}/sync"],
            env={**os.environ, "KUBECONFIG": str(kubeconfig)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    logins = fake.count(LOGIN, "POST", 200)
    planned = plan(control_plane.kubeconfig)  # the cluster admin may request the token
    assert planned.returncode == 0, planned.stderr
    assert "  + KEY" in planned.stdout.splitlines()
    assert fake.count(LOGIN, "POST", 200) == logins + 1

    user = f"cli-reader-{uuid.uuid4().hex[:8]}"
    grant_cluster_role(
        control_plane.kubeconfig,
        user,
        [
            {
                "apiGroups": ["infisical-sync.dev"],
                "resources": [SYNCS, CONNECTIONS],
                "verbs": ["get", "list"],
            },
            {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["secrets", "configmaps"], "verbs": ["get", "list"]},
        ],
    )
    refused = plan(control_plane.kubeconfig_for_user(user))
    assert refused.returncode == 2
    assert (
        f"forbidden: your user may not create a token for ServiceAccount "
        f"{namespace}/{LOGIN_ACCOUNT} (kubernetes-auth)" in refused.stderr
    )
    assert "create on serviceaccounts/token" in refused.stderr
    assert_no_jwt_leaked(fake, operator, kube, namespace)
