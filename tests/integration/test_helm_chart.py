"""The Helm chart renders, lints, and its manifests pass the real API server's validation."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from infisical_sync.testing.controlplane import (
    HELM_RELEASES,
    ControlPlane,
    ensure_helm,
    ensure_kube_binaries,
)

pytestmark = pytest.mark.controlplane
CHART = Path(__file__).parents[2] / "deploy" / "helm" / "infisical-sync"
STDIN = ("-f", "-")
CLUSTER_IDENTITY_RULE = {
    "apiGroups": [""],
    "resources": ["namespaces"],
    "resourceNames": ["kube-system"],
    "verbs": ["get"],
}
CLUSTER_CONNECTION_RULES = yaml.safe_load(
    (CHART / "files" / "rbac-cluster-connections.yaml").read_text()
)
OPERATOR_NAMESPACE_RULES = yaml.safe_load(
    (CHART / "files" / "rbac-operator-namespace.yaml").read_text()
)


@pytest.fixture(scope="module", params=sorted(HELM_RELEASES), ids=lambda major: f"helm{major}")
def helm(request: pytest.FixtureRequest) -> str:
    """Every chart test runs on each supported Helm major."""
    return str(ensure_helm(request.param))


def test_helm_reports_the_version_it_was_built_as(helm: str) -> None:
    reported = subprocess.run(
        [helm, "version", "--template", "{{.Version}}"], capture_output=True, text=True, check=True
    ).stdout
    assert reported in {release.version for release in HELM_RELEASES.values()}


@pytest.mark.parametrize("version", ["v1.34.0", "v1.35.2-eks-1a2b3c4", "1.36.1-gke.100", "v1.37.9"])
def test_supported_kubernetes_versions_install(helm: str, version: str) -> None:
    result = subprocess.run(
        [helm, "template", "sync", str(CHART), "--kube-version", version],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("version", ["v1.33.9", "v1.33.9-eks-1a2b3c4", "v1.38.0"])
def test_unsupported_kubernetes_versions_are_refused(helm: str, version: str) -> None:
    result = subprocess.run(
        [helm, "template", "sync", str(CHART), "--kube-version", version],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "chart requires kubeVersion: >=1.34.0-0 <1.38.0-0" in result.stderr, result.stderr


def render(helm: str, *values: str) -> list[dict[str, Any]]:
    args = [helm, "template", "sync", str(CHART), "--namespace", "infisical-sync"]
    for value in values:
        args += ["--set", value]
    output = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(output) if doc]


def test_lint(helm: str) -> None:
    result = subprocess.run([helm, "lint", str(CHART)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cluster_wide_defaults(helm: str) -> None:
    docs = render(helm)
    kinds = sorted(doc["kind"] for doc in docs)
    assert kinds == [
        "ClusterRole",
        "ClusterRole",
        "ClusterRole",
        "ClusterRole",
        "ClusterRole",
        "ClusterRoleBinding",
        "ClusterRoleBinding",
        "ClusterRoleBinding",
        "Deployment",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]
    deployment = next(doc for doc in docs if doc["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert "--all-namespaces" in container["args"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    # Longer than the operator's stop may take (connection daemons, then SecretSync cycles).
    from infisical_sync.app import STOP_BUDGET

    assert pod["terminationGracePeriodSeconds"] > STOP_BUDGET
    roles = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "ClusterRole"}
    rules = yaml.safe_load((CHART / "files" / "rbac-rules.yaml").read_text())
    assert roles["sync-infisical-sync"]["rules"] == rules
    assert not _grants_secret_writes(roles["sync-infisical-sync"]["rules"])
    assert roles["sync-infisical-sync-cluster-identity"]["rules"] == [CLUSTER_IDENTITY_RULE]
    assert not any(env["name"] == "INFISICAL_SYNC_CLUSTER_ID" for env in container["env"])
    # ClusterInfisicalConnections: on by default, their own ClusterRole; cluster-wide, the
    # operator's ClusterRole already reads the Secrets of its namespace (no extra Role).
    assert roles["sync-infisical-sync-cluster-connections"]["rules"] == CLUSTER_CONNECTION_RULES
    assert not any(doc["metadata"]["name"].endswith("-operator-namespace") for doc in docs)
    assert "--no-cluster-connections" not in container["args"]


def test_cluster_identity_from_a_value_needs_no_cluster_read(helm: str) -> None:
    docs = render(helm, "clusterId=prod-eu-1")
    assert not any(doc["metadata"]["name"].endswith("-cluster-identity") for doc in docs)
    container = next(doc for doc in docs if doc["kind"] == "Deployment")["spec"]["template"][
        "spec"
    ]["containers"][0]
    assert {"name": "INFISICAL_SYNC_CLUSTER_ID", "value": "prod-eu-1"} in container["env"]


def _operator_role(doc: dict[str, Any]) -> bool:
    """The operator's (Cluster)Roles of its watched namespaces, less the ones for the cluster
    identity, the Lease, cluster connections and the namespace users (aggregated into
    view/edit/admin)."""
    return doc["kind"] in ("Role", "ClusterRole") and not doc["metadata"]["name"].endswith(
        (
            "-cluster-identity",
            "-leader-election",
            "-cluster-connections",
            "-operator-namespace",
            "-cluster-connection-events",
            "-view",
            "-edit",
        )
    )


def _grants_secrets(rules: list[dict[str, Any]]) -> bool:
    return any(
        {"", "*"} & set(rule["apiGroups"]) and {"secrets", "*"} & set(rule["resources"])
        for rule in rules
    )


def _grants_secret_writes(rules: list[dict[str, Any]]) -> bool:
    return any(
        "" in rule["apiGroups"]
        and "secrets" in rule["resources"]
        and set(rule["verbs"]) & {"patch", "update", "create", "delete", "*"}
        for rule in rules
    )


@pytest.mark.parametrize(
    "values",
    [[], ["rbac.clusterWide=false", "watchNamespaces={team-a,team-b}"]],
    ids=["cluster-wide", "namespaced"],
)
def test_secret_writes_are_opt_in(helm: str, values: list[str]) -> None:
    """Only rbac.secretWrites=true lets the operator patch Secrets (the import modes)."""
    roles = [doc for doc in render(helm, *values) if _operator_role(doc)]
    assert roles and not any(_grants_secret_writes(role["rules"]) for role in roles)
    opted_in = [
        doc for doc in render(helm, *values, "rbac.secretWrites=true") if _operator_role(doc)
    ]
    assert len(opted_in) == len(roles)
    writes = yaml.safe_load((CHART / "files" / "rbac-secret-writes.yaml").read_text())
    for role in opted_in:
        assert role["rules"][-len(writes) :] == writes
        assert _grants_secret_writes(role["rules"])


def _grants_token_requests(rules: list[dict[str, Any]]) -> bool:
    return any(
        "" in rule["apiGroups"]
        and {"serviceaccounts/token", "serviceaccounts/*", "*"} & set(rule["resources"])
        and {"create", "*"} & set(rule["verbs"])
        for rule in rules
    )


@pytest.mark.parametrize(
    "values",
    [[], ["rbac.clusterWide=false", "watchNamespaces={team-a,team-b}"]],
    ids=["cluster-wide", "namespaced"],
)
def test_token_requests_are_opt_in(helm: str, values: list[str]) -> None:
    """Only rbac.kubernetesAuth=true lets the operator request service account tokens
    (kubernetes-auth connections), in the same (Cluster)Roles as the rest of its rules."""
    roles = [doc for doc in render(helm, *values) if _operator_role(doc)]
    assert roles and not any(_grants_token_requests(role["rules"]) for role in roles)
    opted_in = [
        doc for doc in render(helm, *values, "rbac.kubernetesAuth=true") if _operator_role(doc)
    ]
    assert [(r["kind"], r["metadata"].get("namespace")) for r in opted_in] == [
        (r["kind"], r["metadata"].get("namespace")) for r in roles
    ]
    grant = yaml.safe_load((CHART / "files" / "rbac-kubernetes-auth.yaml").read_text())
    for role in opted_in:
        assert role["rules"][-len(grant) :] == grant
        assert _grants_token_requests(role["rules"])


@pytest.mark.parametrize(
    "values",
    [[], ["rbac.clusterWide=false", "watchNamespaces={team-a,team-b}"], ["rbac.secretWrites=true"]],
    ids=["cluster-wide", "namespaced", "with-secret-writes"],
)
def test_token_requests_can_be_limited_to_service_account_names(
    helm: str, values: list[str]
) -> None:
    """rbac.kubernetesAuthServiceAccountNames makes the grant name those service accounts
    (resourceNames); the rest of the rules are as without it."""
    on = [*values, "rbac.kubernetesAuth=true"]
    plain = [doc for doc in render(helm, *on) if _operator_role(doc)]
    named = [
        doc
        for doc in render(helm, *on, "rbac.kubernetesAuthServiceAccountNames={infisical-login,b}")
        if _operator_role(doc)
    ]
    grant = yaml.safe_load((CHART / "files" / "rbac-kubernetes-auth.yaml").read_text())
    assert len(named) == len(plain) and len(grant) == 1
    for before, after in zip(plain, named, strict=True):
        assert after["rules"][:-1] == before["rules"][:-1]
        assert after["rules"][-1] == {**grant[0], "resourceNames": ["infisical-login", "b"]}


def test_namespaced_install(helm: str) -> None:
    docs = render(
        helm,
        "rbac.clusterWide=false",
        "watchNamespaces={team-a,team-b}",
        "metrics.serviceMonitor.enabled=true",
    )
    roles = [doc for doc in docs if _operator_role(doc)]
    assert sorted(role["metadata"]["namespace"] for role in roles) == ["team-a", "team-b"]
    # Cluster-scoped: only `get` on the kube-system namespace, for the cluster's identity (and
    # the roles namespace users get through view/edit/admin, bound to no one by the chart).
    cluster_scoped = [doc for doc in docs if doc["kind"].startswith("Cluster")]
    bindings = [doc for doc in cluster_scoped if doc["kind"] == "ClusterRoleBinding"]
    assert sorted(doc["roleRef"]["name"] for doc in bindings) == [
        "sync-infisical-sync-cluster-connections",
        "sync-infisical-sync-cluster-identity",
    ]
    roles = {doc["metadata"]["name"]: doc for doc in cluster_scoped if doc["kind"] == "ClusterRole"}
    assert sorted(roles) == [
        "sync-infisical-sync-cluster-connections",
        "sync-infisical-sync-cluster-identity",
        "sync-infisical-sync-edit",
        "sync-infisical-sync-view",
    ]
    assert roles["sync-infisical-sync-cluster-identity"]["rules"] == [CLUSTER_IDENTITY_RULE]
    # ClusterInfisicalConnections and namespaces cluster-wide, never Secrets.
    assert roles["sync-infisical-sync-cluster-connections"]["rules"] == CLUSTER_CONNECTION_RULES
    assert not any(_grants_secrets(role["rules"]) for role in roles.values())
    args = next(doc for doc in docs if doc["kind"] == "Deployment")["spec"]["template"]["spec"][
        "containers"
    ][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args
    assert any(doc["kind"] == "ServiceMonitor" for doc in docs)


def _bound_roles(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The (Cluster)Roles the chart binds to the operator's service account."""
    bound = {
        (doc["roleRef"]["kind"], doc["roleRef"]["name"], doc["metadata"].get("namespace"))
        for doc in docs
        if doc["kind"] in ("RoleBinding", "ClusterRoleBinding")
        and any(subject["name"] == "sync-infisical-sync" for subject in doc["subjects"])
    }
    return [
        doc
        for doc in docs
        if (doc["kind"], doc["metadata"]["name"], doc["metadata"].get("namespace")) in bound
    ]


def _operator_namespace_role(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [role] = [
        doc
        for doc in docs
        if doc["kind"] == "Role" and doc["metadata"]["name"].endswith("-operator-namespace")
    ]
    assert role["metadata"]["namespace"] == "infisical-sync"  # the release namespace
    return role


def test_namespaced_cluster_connections_read_secrets_in_the_release_namespace_only(
    helm: str,
) -> None:
    """With rbac.clusterWide=false the operator reads Secrets in watchNamespaces and, for
    ClusterInfisicalConnections, in its own (release) namespace: nowhere else, and never through
    a ClusterRole."""
    docs = render(helm, "rbac.clusterWide=false", "watchNamespaces={team-a,team-b}")
    reading = _bound_roles(docs)
    assert all(role["kind"] == "Role" for role in reading if _grants_secrets(role["rules"]))
    assert sorted(
        (role["metadata"]["namespace"], role["metadata"]["name"])
        for role in reading
        if _grants_secrets(role["rules"])
    ) == [
        ("infisical-sync", "sync-infisical-sync-operator-namespace"),
        ("team-a", "sync-infisical-sync"),
        ("team-b", "sync-infisical-sync"),
    ]
    own = _operator_namespace_role(reading)
    assert own["rules"] == OPERATOR_NAMESPACE_RULES
    assert not _grants_secret_writes(own["rules"])
    # The connections' Events: "default" is the only namespace the API server takes them in.
    [events] = [role for role in reading if role["metadata"].get("namespace") == "default"]
    assert events["kind"] == "Role"
    assert {resource for rule in events["rules"] for resource in rule["resources"]} == {"events"}
    assert {verb for rule in events["rules"] for verb in rule["verbs"]} == {"create"}
    # Secret writes (import modes) are for SecretSyncs' own namespaces, not this one.
    writes = render(
        helm, "rbac.clusterWide=false", "watchNamespaces={team-a}", "rbac.secretWrites=true"
    )
    own = _operator_namespace_role(writes)
    assert own["rules"] == OPERATOR_NAMESPACE_RULES
    # The release namespace among the watched ones: both Roles, under their own names.
    both = render(helm, "rbac.clusterWide=false", "watchNamespaces={infisical-sync}")
    assert sorted(
        doc["metadata"]["name"]
        for doc in both
        if doc["kind"] == "Role" and doc["metadata"]["namespace"] == "infisical-sync"
    ) == [
        "sync-infisical-sync",
        "sync-infisical-sync-leader-election",
        "sync-infisical-sync-operator-namespace",
    ]


@pytest.mark.parametrize("names", [[], ["infisical-login"]], ids=["any", "named"])
def test_namespaced_kubernetes_auth_requests_tokens_in_the_release_namespace(
    helm: str, names: list[str]
) -> None:
    """A cluster connection's login service account is in the operator's namespace: with
    rbac.kubernetesAuth the Role there allows the TokenRequest, narrowed like the others."""
    values = ["rbac.clusterWide=false", "watchNamespaces={team-a}", "rbac.kubernetesAuth=true"]
    if names:
        values.append("rbac.kubernetesAuthServiceAccountNames={" + ",".join(names) + "}")
    docs = render(helm, *values)
    own = _operator_namespace_role(docs)
    [grant] = yaml.safe_load((CHART / "files" / "rbac-kubernetes-auth.yaml").read_text())
    assert own["rules"] == [
        *OPERATOR_NAMESPACE_RULES,
        {**grant, "resourceNames": names} if names else grant,
    ]
    [watched] = [doc for doc in docs if doc["kind"] == "Role" and _operator_role(doc)]
    assert watched["rules"][-1] == own["rules"][-1]
    without = render(helm, "rbac.clusterWide=false", "watchNamespaces={team-a}")
    own = _operator_namespace_role(without)
    assert not _grants_token_requests(own["rules"])


@pytest.mark.parametrize(
    "values",
    [[], ["rbac.clusterWide=false", "watchNamespaces={team-a}"]],
    ids=["cluster-wide", "namespaced"],
)
def test_cluster_connections_off_grant_nothing_for_them(helm: str, values: list[str]) -> None:
    """clusterConnections.enabled=false: the operator is told to ignore them, and the chart's
    RBAC is what it was before they existed."""
    on = render(helm, *values)
    off = render(helm, *values, "clusterConnections.enabled=false")
    extra = {"-cluster-connections", "-operator-namespace", "-cluster-connection-events"}
    assert any(doc["metadata"]["name"].endswith(tuple(extra)) for doc in on)
    assert not any(doc["metadata"]["name"].endswith(tuple(extra)) for doc in off)
    # Everything else, the Deployment aside (its args), is the same.
    assert [
        doc
        for doc in on
        if doc["kind"] != "Deployment" and not doc["metadata"]["name"].endswith(tuple(extra))
    ] == [doc for doc in off if doc["kind"] != "Deployment"]
    assert not any(
        "clusterinfisicalconnections" in rule["resources"]
        for role in _bound_roles(off)
        for rule in role["rules"]
    )
    deployment = next(doc for doc in off if doc["kind"] == "Deployment")
    assert "--no-cluster-connections" in container_args(deployment)
    deployment = next(doc for doc in on if doc["kind"] == "Deployment")
    assert "--no-cluster-connections" not in container_args(deployment)


def test_two_replicas_with_leader_election_by_default(helm: str) -> None:
    docs = render(helm)
    deployment = next(doc for doc in docs if doc["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert {"--leader-election", "--lease-name=sync-infisical-sync"} <= set(container["args"])
    assert "--lease-namespace=infisical-sync" in container["args"]
    pod_name = next(env for env in container["env"] if env["name"] == "POD_NAME")
    assert pod_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # The Lease in the release namespace: a Role there, whatever the RBAC mode.
    leases = yaml.safe_load((CHART / "files" / "rbac-leader-election.yaml").read_text())
    for values in ([], ["rbac.clusterWide=false", "watchNamespaces={team-a}"]):
        role = next(
            doc
            for doc in render(helm, *values)
            if doc["kind"] == "Role" and doc["metadata"]["name"].endswith("-leader-election")
        )
        assert role["metadata"]["namespace"] == "infisical-sync" and role["rules"] == leases
    budget = next(doc for doc in docs if doc["kind"] == "PodDisruptionBudget")
    assert budget["spec"] == {
        "minAvailable": 1,
        "selector": deployment["spec"]["selector"],
    }
    one = render(helm, "replicas=1")
    assert next(d for d in one if d["kind"] == "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert not any(
        d["kind"] == "PodDisruptionBudget"
        for d in render(helm, "podDisruptionBudget.enabled=false")
    )


def test_without_leader_election_one_replica_and_recreate(helm: str) -> None:
    docs = render(helm, "leaderElection.enabled=false", "replicas=1")
    deployment = next(doc for doc in docs if doc["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert (
        "--leader-election" not in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    )
    assert not any(doc["metadata"]["name"].endswith("-leader-election") for doc in docs)
    result = subprocess.run(
        [helm, "template", "sync", str(CHART), "--set", "leaderElection.enabled=false"],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "replicas > 1 needs leaderElection" in result.stderr


def test_shards_run_one_deployment_each_with_its_own_lease_and_budget(helm: str) -> None:
    unsharded = [d for d in render(helm) if d["kind"] == "Deployment"]
    assert [d["metadata"]["name"] for d in unsharded] == ["sync-infisical-sync"]
    assert unsharded[0]["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "infisical-sync",
        "app.kubernetes.io/instance": "sync",
    }  # unchanged: a Deployment's selector cannot change on upgrade
    assert not any(a.startswith("--shard") for a in container_args(unsharded[0]))

    docs = render(helm, "shards=3")
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    budgets = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    names = [f"sync-infisical-sync-shard-{i}" for i in range(3)]
    assert [d["metadata"]["name"] for d in deployments] == names
    assert [b["metadata"]["name"] for b in budgets] == names
    for index, (deployment, budget) in enumerate(zip(deployments, budgets, strict=True)):
        args = container_args(deployment)
        assert f"--shard={index}/3" in args
        # The operator appends -shard-<i>: each shard's replicas compete for their own Lease.
        assert "--lease-name=sync-infisical-sync" in args
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector["infisical-sync.dev/shard"] == str(index)
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
        assert budget["spec"]["selector"]["matchLabels"] == selector
        assert deployment["spec"]["replicas"] == 2
    failed = subprocess.run(
        [helm, "template", "sync", str(CHART), "--set", "shards=0"], capture_output=True, text=True
    )
    assert failed.returncode != 0 and "at '/shards': minimum: got 0, want 1" in failed.stderr


def container_args(deployment: dict[str, Any]) -> list[str]:
    return list(deployment["spec"]["template"]["spec"]["containers"][0]["args"])


def test_allowed_instance_urls(helm: str) -> None:
    def args(*values: str) -> list[str]:
        deployment = next(doc for doc in render(helm, *values) if doc["kind"] == "Deployment")
        found: list[str] = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        return found

    assert not [arg for arg in args() if arg.startswith("--allowed-instance-url")]  # any
    listed = "allowedInstanceUrls={https://app.infisical.com,https://infisical.example.com/base}"
    assert [arg for arg in args(listed) if arg.startswith("--allowed-instance-url")] == [
        "--allowed-instance-url=https://app.infisical.com",
        "--allowed-instance-url=https://infisical.example.com/base",
    ]


def test_namespace_users_get_the_kinds_through_the_builtin_roles(helm: str) -> None:
    """Aggregated into view (read, status included), edit and admin (also write; status stays
    the operator's). The node tier checks what the aggregation then grants."""
    roles = {doc["metadata"]["name"]: doc for doc in render(helm) if doc["kind"] == "ClusterRole"}
    view, edit = roles["sync-infisical-sync-view"], roles["sync-infisical-sync-edit"]
    aggregate = "rbac.authorization.k8s.io/aggregate-to-"
    assert {k for k, v in view["metadata"]["labels"].items() if k.startswith(aggregate)} == {
        aggregate + "view",
        aggregate + "edit",
        aggregate + "admin",
    }
    assert {k for k, v in edit["metadata"]["labels"].items() if k.startswith(aggregate)} == {
        aggregate + "edit",
        aggregate + "admin",
    }
    read, read_cluster = view["rules"]
    assert set(read["verbs"]) == {"get", "list", "watch"}
    assert "secretsyncs/status" in read["resources"]
    # The platform team's ClusterInfisicalConnections: read only (and only for those bound
    # cluster-wide: a RoleBinding grants nothing cluster-scoped).
    assert read_cluster == {
        "apiGroups": ["infisical-sync.dev"],
        "resources": ["clusterinfisicalconnections", "clusterinfisicalconnections/status"],
        "verbs": ["get", "list", "watch"],
    }
    [write] = edit["rules"]
    assert set(write["resources"]) == {"infisicalconnections", "secretsyncs"}  # no status
    assert "create" in write["verbs"] and "delete" in write["verbs"]
    names = {doc["metadata"]["name"] for doc in render(helm, "rbac.aggregateToDefaultRoles=false")}
    assert not names & {"sync-infisical-sync-view", "sync-infisical-sync-edit"}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("replicas=two", "at '/replicas': got string, want integer"),
        ("unknownKey=1", "additional properties 'unknownKey' not allowed"),
        ("operator.logLevel=LOUD", "/operator/logLevel"),
        ("metrics.prot=9090", "additional properties 'prot' not allowed"),
        ("health.port=0", "/health/port"),
        ("metrics.dashboard.enable=true", "additional properties 'enable' not allowed"),
        ("metrics.dashboard.labels.grafana_dashboard=1", "/metrics/dashboard/labels"),
        ("metrics.prometheusRule.alerts.noLeader.for=soon", "/metrics/prometheusRule/alerts"),
        ("metrics.prometheusRule.alerts.cyclesStalled.afterSeconds=5", "/afterSeconds"),
        ("metrics.prometheusRule.alerts.stale.enabled=true", "additional properties 'stale'"),
        (
            "metrics.prometheusRule.alerts.secretSyncNotReady.ignoreReasons={a|b}",
            "/ignoreReasons",
        ),
    ],
)
def test_values_outside_the_schema_fail_with_a_clear_message(
    helm: str, value: str, message: str
) -> None:
    result = subprocess.run(
        [helm, "template", "sync", str(CHART), "--set", value],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_values_users_commonly_set_pass_the_schema(helm: str) -> None:
    """A parent chart's condition (`enabled`), a numeric tag, a compound scrape interval."""
    docs = render(
        helm,
        "enabled=true",
        "image.tag=123",
        "metrics.serviceMonitor.enabled=true",
        "metrics.serviceMonitor.interval=1m30s",
        "operator.extraEnv[0].name=TZ",
        "operator.extraEnv[0].valueFrom.configMapKeyRef.name=tz",
        "operator.extraEnv[0].valueFrom.configMapKeyRef.key=zone",
    )
    deployment = next(doc for doc in docs if doc["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].endswith(":123")
    assert {"name": "TZ", "valueFrom": {"configMapKeyRef": {"name": "tz", "key": "zone"}}} in (
        container["env"]
    )


def test_metrics_off_renders_no_port_service_monitor_dashboard_or_rules(helm: str) -> None:
    docs = render(
        helm,
        "metrics.port=0",
        "metrics.serviceMonitor.enabled=true",
        "metrics.dashboard.enabled=true",
        "metrics.prometheusRule.enabled=true",
    )
    deployment = next(doc for doc in docs if doc["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "--metrics-port=0" in container["args"]
    assert [port["name"] for port in container["ports"]] == ["health"]
    assert not [
        doc
        for doc in docs
        if doc["kind"] in ("Service", "ServiceMonitor", "ConfigMap", "PrometheusRule")
    ]


def test_dashboard_and_alerts_are_opt_in_and_follow_their_values(helm: str) -> None:
    assert not [doc for doc in render(helm) if doc["kind"] in ("ConfigMap", "PrometheusRule")]
    docs = render(
        helm,
        "metrics.dashboard.enabled=true",
        "metrics.dashboard.namespace=monitoring",
        "metrics.dashboard.labels.grafana_dashboard=null",
        "metrics.dashboard.labels.dashboards=infisical",
        "metrics.dashboard.annotations.grafana_folder=Infisical",
        "metrics.prometheusRule.enabled=true",
        "metrics.prometheusRule.labels.release=kube-prometheus",
        "metrics.prometheusRule.alertLabels.team=platform",
        "metrics.prometheusRule.alerts.noLeader.enabled=false",
        "metrics.prometheusRule.alerts.secretSyncNotReady.ignoreReasons=null",
        "metrics.prometheusRule.alerts.cyclesStalled.afterSeconds=7200",
        "metrics.prometheusRule.alerts.deletesHeld.for=1h",
    )
    [dashboard] = [doc for doc in docs if doc["kind"] == "ConfigMap"]
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert dashboard["metadata"]["labels"]["dashboards"] == "infisical"
    assert "grafana_dashboard" not in dashboard["metadata"]["labels"]
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "Infisical"}
    assert json.loads(dashboard["data"]["infisical-sync.json"]) == json.loads(
        (CHART / "files" / "dashboard.json").read_text()
    )
    [rule] = [doc for doc in docs if doc["kind"] == "PrometheusRule"]
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus"
    alerts = {item["alert"]: item for item in rule["spec"]["groups"][0]["rules"]}
    assert "InfisicalSyncNoLeader" not in alerts and len(alerts) == 5
    assert all(item["labels"]["team"] == "platform" for item in alerts.values())
    assert (
        alerts["InfisicalSecretSyncNotReady"]["expr"]
        == 'infisical_sync_ready{kind="SecretSync"} == 0'
    )
    assert alerts["InfisicalSyncCyclesStalled"]["expr"].endswith("> 7200")
    assert alerts["InfisicalSyncDeletesHeld"]["for"] == "1h"
    assert "{{ $labels.namespace }}" in alerts["InfisicalSyncDeletesHeld"]["annotations"]["summary"]
    defaults = render(helm, "metrics.prometheusRule.enabled=true")
    [rule] = [doc for doc in defaults if doc["kind"] == "PrometheusRule"]
    alerts = {item["alert"]: item for item in rule["spec"]["groups"][0]["rules"]}
    # The alert's labels stay the same whatever the reason: a reason that changes does not
    # restart its `for`.
    assert alerts["InfisicalSecretSyncNotReady"]["expr"].splitlines() == [
        'infisical_sync_ready{kind="SecretSync"} == 0',
        'unless on (kind, namespace, name) infisical_sync_not_ready_reason{kind="SecretSync", '
        'reason=~"Suspended|DeletionHeld|ConnectionNotReady"}',
    ]
    monitor = render(helm, "metrics.serviceMonitor.enabled=true")
    [monitor_doc] = [doc for doc in monitor if doc["kind"] == "ServiceMonitor"]
    assert monitor_doc["spec"]["endpoints"][0]["honorLabels"] is True


def test_namespaced_without_namespaces_fails(helm: str) -> None:
    result = subprocess.run(
        [helm, "template", "sync", str(CHART), "--set", "rbac.clusterWide=false"],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "needs watchNamespaces" in result.stderr


def test_manifests_pass_server_side_validation(
    helm: str, control_plane: ControlPlane, namespace: str
) -> None:
    kubectl = str(ensure_kube_binaries(with_kubectl=True)["kubectl"])
    manifests = subprocess.run(
        [
            helm,
            "template",
            "sync",
            str(CHART),
            "--namespace",
            namespace,
            "--include-crds",
            "--set",
            "metrics.dashboard.enabled=true",  # a plain ConfigMap (the rule needs its CRD)
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = subprocess.run(
        [
            kubectl,
            "--kubeconfig",
            str(control_plane.kubeconfig),
            "apply",
            "--dry-run=server",
            "-f",
            "-",
        ],
        input=manifests,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "deployment.apps/sync-infisical-sync created (server dry run)" in result.stdout
    assert "configmap/sync-infisical-sync-dashboard created (server dry run)" in result.stdout
    # Sharded: the Deployments and budgets per shard (the CRDs and RBAC are the same).
    sharded = subprocess.run(
        [
            helm,
            "template",
            "sync",
            str(CHART),
            "--namespace",
            namespace,
            "--set",
            "shards=2",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = subprocess.run(
        [
            kubectl,
            "--kubeconfig",
            str(control_plane.kubeconfig),
            "apply",
            "--dry-run=server",
            *STDIN,
        ],
        input=sharded,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for index in (0, 1):
        assert f"deployment.apps/sync-infisical-sync-shard-{index} created" in result.stdout
        assert f"poddisruptionbudget.policy/sync-infisical-sync-shard-{index} created" in (
            result.stdout
        )


def _dockerfile_exec_form(instruction: str) -> list[str]:
    """The final stage's ENTRYPOINT or CMD (exec form), as the container runtime sees it."""
    final_stage = (CHART.parents[2] / "Dockerfile").read_text().rsplit("\nFROM ", 1)[1]
    lines = [line for line in final_stage.splitlines() if line.startswith(f"{instruction} ")]
    assert lines, f"the final stage has no {instruction}"
    found: list[str] = json.loads(lines[-1].split(" ", 1)[1])
    return found


@pytest.mark.parametrize(
    "values",
    [
        [],
        ["rbac.clusterWide=false", "watchNamespaces={team-a}"],
        ["allowedInstanceUrls={https://app.infisical.com,http://10.0.0.7:8080/infisical}"],
        ["clusterConnections.enabled=false"],
    ],
    ids=["all", "some", "allow-list", "no-cluster-connections"],
)
def test_image_entrypoint_with_chart_args_is_a_valid_command(helm: str, values: list[str]) -> None:
    """The pod runs ENTRYPOINT + the chart's args (args replace CMD): that must parse as `run`."""
    from infisical_sync.cli import build_parser

    deployment = next(doc for doc in render(helm, *values) if doc["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "command" not in container  # the image's ENTRYPOINT is used as is
    argv = _dockerfile_exec_form("ENTRYPOINT") + container["args"]
    assert argv[0] == "infisical-sync"
    args = build_parser().parse_args(argv[1:])  # exits (SystemExit) on unknown arguments
    assert args.command == "run"
    # And the image alone (no args from a chart) runs the operator too.
    image_default = _dockerfile_exec_form("ENTRYPOINT") + _dockerfile_exec_form("CMD")
    assert build_parser().parse_args(image_default[1:]).command == "run"
