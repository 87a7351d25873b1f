"""What a user does with the chart on a real node, written once for every node provider.

Each scenario gets a `NodeEnv`: kubectl and helm bound to a cluster with a real node, the image
values that point the chart at the image built from the repo's Dockerfile, and a fake Infisical
that the operator's pod reaches over the pod network. The local node (tests/node) and kind
(tests/e2e) provide the same environment, so both run exactly these steps.
"""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infisical_sync.testing.fake_infisical import FakeInfisical, Fault
from infisical_sync.testing.samples import SAMPLE_URL, SAMPLES, sample_manifests
from tests.conftest import wait_for as poll

ROOT = Path(__file__).parents[2]
CHART = ROOT / "deploy" / "helm" / "infisical-sync"
PROJECT_ID = "0b7f5a52-2c1d-4e8f-9a3b-6c5d4e3f2a10"  # the seed's `payments`
DESTINATION = (PROJECT_ID, "prod", "/apps/payments")
SAMPLE_KEYS = {"DB_PASSWORD": "demo-db-password", "API_KEY": "demo-api-key", "LOG_LEVEL": "info"}
RELEASE = "infisical-sync"
OPERATOR_NAMESPACE = "infisical-sync"


@dataclass
class NodeEnv:
    kubectl: list[str]  # argv prefix, bound to the cluster
    helm: list[str]
    image_values: dict[str, str]  # chart values naming the image built from the Dockerfile
    fake: FakeInfisical
    fake_url: str  # the fake's URL as the operator's pod reaches it
    kill_container: Callable[[str], None]  # SIGKILL a container by its CRI id
    log: list[str] = field(default_factory=list)

    def run(self, *argv: str, stdin: str | None = None, check: bool = True) -> str:
        result = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=300, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result.stdout

    def k(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        return self.run(*self.kubectl, *args, stdin=stdin, check=check)

    def h(self, *args: str, check: bool = True) -> str:
        return self.run(*self.helm, *args, check=check)

    def get_json(self, *args: str) -> Any:
        return json.loads(self.k("get", *args, "-o", "json"))


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Every second: a scenario's waits are kubectl calls, not cheap reads."""
    return poll(predicate, timeout=timeout, interval=1, message=f"waiting for {what}")


# --- steps --------------------------------------------------------------------------------------


def helm_install(env: NodeEnv, *values: str, upgrade: bool = False) -> None:
    sets = [f"{k}={v}" for k, v in env.image_values.items()] + list(values)
    args = ["upgrade", "--reuse-values"] if upgrade else ["install", "--create-namespace"]
    args += [RELEASE, str(CHART), "-n", OPERATOR_NAMESPACE, "--wait", "--timeout", "240s"]
    for value in sets:
        args += ["--set", value]
    env.h(*args)


def operator_pods(env: NodeEnv) -> list[dict[str, Any]]:
    pods = env.get_json(
        "pods", "-n", OPERATOR_NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}"
    )
    return [p for p in pods["items"] if not p["metadata"].get("deletionTimestamp")]


def lease_holder(env: NodeEnv) -> str:
    """The identity in the release's Lease ("" when nobody holds it or there is none)."""
    found = env.k("get", "lease", RELEASE, "-n", OPERATOR_NAMESPACE, "-o", "json", check=False)
    return str((json.loads(found or "{}").get("spec") or {}).get("holderIdentity") or "")


def pod_of(holder: str, pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The pod whose name the lease identity starts with (identities are the pod name and a
    per-process suffix)."""
    named = [p for p in pods if holder.startswith(p["metadata"]["name"])]
    return max(named, key=lambda p: len(p["metadata"]["name"]), default=None)


def operator_pod(env: NodeEnv) -> dict[str, Any]:
    """The pod doing the work: the lease holder's, or the only one when there is no lease."""
    pods = operator_pods(env)
    leader = pod_of(lease_holder(env), pods)
    if leader is not None:
        return dict(leader)
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    return dict(pods[0])


def ready(pod: dict[str, Any]) -> bool:
    conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
    return conditions.get("Ready") == "True"


def pod_ready(env: NodeEnv) -> dict[str, Any] | None:
    for pod in operator_pods(env):
        if ready(pod):
            return dict(pod)
    return None


def all_pods_ready(env: NodeEnv, replicas: int) -> list[dict[str, Any]] | None:
    pods = operator_pods(env)
    return pods if len(pods) == replicas and all(map(ready, pods)) else None


def container_id(pod: dict[str, Any]) -> str:
    return str(pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1])


def assert_runs_as_installed(env: NodeEnv) -> None:
    """The operator process (PID 1) really runs as the chart says: uid/gid 10001, no
    capabilities, no_new_privs, seccomp filtering, read-only `/`, writable /tmp only."""
    pod = operator_pod(env)
    exec_ = ["exec", "-n", OPERATOR_NAMESPACE, pod["metadata"]["name"], "--"]
    status = dict(
        line.split(":\t", 1) for line in env.k(*exec_, "cat", "/proc/1/status").splitlines()
    )
    assert status["Uid"].split() == ["10001"] * 4, status["Uid"]
    assert status["Gid"].split() == ["10001"] * 4, status["Gid"]
    assert status["CapEff"] == status["CapPrm"] == "0000000000000000", status["CapEff"]
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2", "RuntimeDefault seccomp is a filter (mode 2)"
    touched = subprocess.run(
        [*env.kubectl, *exec_, "touch", "/probe"], capture_output=True, text=True, check=False
    )
    assert touched.returncode != 0 and "Read-only file system" in touched.stderr, touched
    env.k(*exec_, "touch", "/tmp/probe")  # the chart's emptyDir


def memory_limit_bytes(env: NodeEnv) -> int:
    """The memory limit the kernel enforces on the operator's container (cgroup v1 or v2)."""
    exec_ = ["exec", "-n", OPERATOR_NAMESPACE, operator_pod(env)["metadata"]["name"], "--"]
    for path in ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max"):
        found = env.k(*exec_, "cat", path, check=False).strip()
        if found.isdigit():
            return int(found)
    raise AssertionError("no memory limit visible in the container's cgroup")


def builtin_roles_grant_the_kinds(env: NodeEnv, namespace: str) -> None:
    """The chart's aggregated ClusterRoles, as the aggregation controller applies them: a user
    bound to the built-in `edit` role in a namespace writes SecretSyncs and connections there,
    not their status; one bound to `view` reads them only."""
    for user, role in (("developer", "edit"), ("auditor", "view")):
        env.k(
            "create",
            "rolebinding",
            f"{user}-{role}",
            f"--clusterrole={role}",
            f"--user={user}",
            "-n",
            namespace,
        )

    def can(user: str, verb: str, resource: str, *extra: str) -> bool:
        asked = env.k(
            "auth", "can-i", verb, resource, *extra, "-n", namespace, "--as", user, check=False
        )
        return asked.strip() == "yes"

    syncs, connections = "secretsyncs.infisical-sync.dev", "infisicalconnections.infisical-sync.dev"
    wait_for(lambda: can("developer", "create", syncs), 60, "the edit role to include SecretSyncs")
    assert can("developer", "delete", connections)
    assert not can("developer", "patch", syncs, "--subresource=status")
    wait_for(lambda: can("auditor", "list", syncs), 60, "the view role to include SecretSyncs")
    assert can("auditor", "get", connections, "--subresource=status")
    assert not can("auditor", "create", syncs)


def apply_samples(env: NodeEnv, namespace: str, **replace: str) -> None:
    for text in sample_manifests(namespace, env.fake_url, **replace):
        env.k("apply", "-n", namespace, "-f", "-", stdin=text)


def remote(env: NodeEnv, path: str = DESTINATION[2]) -> dict[str, str]:
    # The fake runs on its own thread: a read may meet a write mid-way; read again then.
    for _ in range(5):
        with contextlib.suppress(RuntimeError):
            return env.fake.state.get_secrets(PROJECT_ID, "prod", path)
        time.sleep(0.05)
    return env.fake.state.get_secrets(PROJECT_ID, "prod", path)


def sync_status(env: NodeEnv, namespace: str) -> dict[str, Any]:
    found = env.get_json("secretsync", "app-secrets-to-selfhosted", "-n", namespace)
    return dict(found.get("status") or {})


def diagnosis(env: NodeEnv, namespace: str) -> str:
    """What a user would look at when a sync does not arrive: status, pods, operator logs."""
    parts = [f"destination keys: {sorted(remote(env))}"]
    with contextlib.suppress(Exception):
        parts.append(f"status: {json.dumps(sync_status(env, namespace), indent=1)}")
    parts.append(env.k("get", "pods", "-A", "-o", "wide", check=False))
    selector = f"app.kubernetes.io/instance={RELEASE}"
    for previous in ("--previous=true", "--previous=false"):
        logs = env.k(
            "logs", "-n", OPERATOR_NAMESPACE, "-l", selector, previous, "--tail=40", check=False
        )
        parts.append(f"operator logs ({previous}):\n{logs}")
    return "\n".join(parts)


def wait_synced(env: NodeEnv, namespace: str, expected: dict[str, str]) -> None:
    try:
        wait_for(lambda: remote(env) == expected, 120, "the destination")
        wait_for(lambda: sync_status(env, namespace).get("syncStatus") == "Succeeded", 60, "status")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnosis(env, namespace)}") from None


def edit_source(env: NodeEnv, namespace: str, key: str, value: str) -> None:
    encoded = base64.b64encode(value.encode()).decode()
    patch = json.dumps({"data": {key: encoded}})
    env.k("patch", "secret", "app-secrets", "-n", namespace, "--type=merge", "-p", patch)


def assert_logs_clean(env: NodeEnv) -> None:
    """The working replica says it started; no replica logged an error or a traceback."""
    leader = operator_pod(env)["metadata"]["name"]
    for pod in operator_pods(env):
        name = pod["metadata"]["name"]
        logs = env.k("logs", "-n", OPERATOR_NAMESPACE, name)
        if name == leader:
            assert "infisical-sync operator started" in logs, logs[-2000:]
        assert "Traceback" not in logs, logs[-4000:]
        for line in filter(None, logs.splitlines()):
            record = json.loads(line)  # the chart asks for JSON logs: every line is one
            # (kopf logs a request it will retry at ERROR; the operator lowers that to WARNING.)
            assert record.get("severity") not in ("error", "critical", "fatal"), line


def remove_samples(env: NodeEnv, namespace: str) -> None:
    """The documented order: SecretSyncs (their finalizers run) before the operator goes."""
    env.k("delete", "secretsync", "--all", "-n", namespace, "--wait=true", "--timeout=120s")
    env.k(
        "delete", "infisicalconnection", "--all", "-n", namespace, "--wait=true", "--timeout=120s"
    )


def uninstall_leaves_nothing(env: NodeEnv, namespaces: list[str]) -> None:
    env.h("uninstall", RELEASE, "-n", OPERATOR_NAMESPACE, "--wait", "--timeout", "120s")
    for namespace in [*namespaces, OPERATOR_NAMESPACE]:
        env.k("delete", "namespace", namespace, "--wait=true", "--timeout=120s")
    for namespace in [*namespaces, OPERATOR_NAMESPACE]:
        gone = env.k("get", "namespace", namespace, "--ignore-not-found", "-o", "name")
        assert gone.strip() == "", f"namespace {namespace} stuck"
    leftovers = env.k("get", "clusterrole,clusterrolebinding", "-o", "name")
    assert RELEASE not in leftovers, leftovers
    leftovers = env.k("get", "role,rolebinding", "-n", "default", "-o", "name")
    assert RELEASE not in leftovers, leftovers


def reset_after_failure(env: NodeEnv) -> None:
    """Best effort after a failed scenario, so the next one starts on a clean cluster: release
    every SecretSync (abandon), uninstall, delete the scenario namespaces."""
    env.k("annotate", "secretsync", "--all", "-A", "infisical-sync.dev/abandon=true", check=False)
    env.k("delete", "secretsync,infisicalconnection", "--all", "-A", "--timeout=60s", check=False)
    env.k("delete", "clusterinfisicalconnection", "--all", "--timeout=60s", check=False)
    env.h("uninstall", RELEASE, "-n", OPERATOR_NAMESPACE, "--wait", "--timeout", "60s", check=False)
    system = ("default", "kube-system", "kube-public", "kube-node-lease")
    names = env.k("get", "namespaces", "-o", "name", check=False).split()
    for name in (n.split("/", 1)[1] for n in names):
        if name not in system:
            env.k("delete", "namespace", name, "--timeout=120s", check=False)


def run_scenario(env: NodeEnv, scenario: Callable[[NodeEnv], None]) -> None:
    try:
        scenario(env)
    except BaseException:
        reset_after_failure(env)
        raise


# --- scenarios ----------------------------------------------------------------------------------


def scenario_cluster_wide(env: NodeEnv) -> None:
    """Install cluster-wide (the chart's defaults: two replicas, one leader), sync the samples,
    edit, kill the leader mid-sync, hand over on a pod deletion, upgrade, uninstall."""
    namespace = "demo"
    env.k("create", "namespace", namespace)
    helm_install(env)
    assert all_pods_ready(env, 2), "both replicas Ready through their own probes (--wait)"
    holder = wait_for(lambda: lease_holder(env), 60, "a leader")
    assert pod_of(holder, operator_pods(env)), f"the lease names no pod: {holder}"
    budgets = env.get_json("poddisruptionbudget", "-n", OPERATOR_NAMESPACE)["items"]
    assert [b["metadata"]["name"] for b in budgets] == [RELEASE], budgets
    assert_runs_as_installed(env)
    builtin_roles_grant_the_kinds(env, namespace)

    apply_samples(env, namespace)
    wait_synced(env, namespace, SAMPLE_KEYS)
    # The seed's key at the project root is not the SecretSync's: untouched.
    assert env.fake.state.get_secrets(PROJECT_ID, "prod", "/") == {"UNRELATED_KEY": "left-alone"}
    edit_source(env, namespace, "API_KEY", "rotated-api-key")
    wait_synced(env, namespace, {**SAMPLE_KEYS, "API_KEY": "rotated-api-key"})
    assert_logs_clean(env)

    leader_killed_mid_sync(env, namespace)
    leader_pod_deleted(env, namespace)

    # An upgrade with changed values rolls both pods; a new one leads and syncs.
    helm_install(env, "operator.logLevel=DEBUG", "resources.limits.memory=300Mi", upgrade=True)

    def upgraded() -> list[dict[str, Any]] | None:
        pods = all_pods_ready(env, 2)
        limits = [p["spec"]["containers"][0]["resources"]["limits"]["memory"] for p in pods or []]
        leader = pod_of(lease_holder(env), pods or [])
        return pods if leader and limits == ["300Mi", "300Mi"] else None

    wait_for(upgraded, 240, "the upgraded pods, one of them leading")
    assert "--log-level=DEBUG" in operator_pod(env)["spec"]["containers"][0]["args"]
    assert memory_limit_bytes(env) == 300 * 1024 * 1024  # enforced by the kernel, not only spec
    edit_source(env, namespace, "DB_PASSWORD", "after-upgrade")
    expected = {"DB_PASSWORD": "after-upgrade", "API_KEY": "rotated-api-key", "LOG_LEVEL": "debug"}
    wait_synced(env, namespace, expected)
    assert_logs_clean(env)

    namespace_deletion_removes_keys_first(env)
    remove_samples(env, namespace)
    uninstall_leaves_nothing(env, [namespace])


def leader_killed_mid_sync(env: NodeEnv, namespace: str) -> None:
    """SIGKILL the leader's container while a write is in flight: another process takes the
    lease once it runs out and finishes the sync; no key is lost or left behind. Usually that is
    the standby; the killed pod's restarted container may ask first, which is failover too."""
    leader = operator_pod(env)
    holder = lease_holder(env)
    standby = next(
        p for p in operator_pods(env) if p["metadata"]["uid"] != leader["metadata"]["uid"]
    )
    # A hung write never lands: what arrives later can only come from the new leader.
    writes = env.fake.inject(Fault(kind="hang", path_pattern=r"/secrets/batch"))
    edit_source(env, namespace, "LOG_LEVEL", "debug")
    wait_for(
        lambda: (
            sync_status(env, namespace).get("syncStatus") == "Running" and env.fake.in_flight >= 1
        ),
        60,
        "a write in flight",
    )
    landed_before = env.fake.count(r"/secrets/batch", status=200)
    killed_at = time.monotonic()
    env.kill_container(container_id(leader))
    env.fake.faults.remove(writes)
    new_holder = wait_for(
        lambda: (h := lease_holder(env)) != holder and h, 60, "another process to take the lease"
    )
    # A figure for the record (the goal is 15 s), not an assertion: times vary with the host.
    print(f"leader killed: another process led {time.monotonic() - killed_at:.1f}s later")
    new_leader = pod_of(new_holder, operator_pods(env))
    assert new_leader, new_holder
    if new_leader["metadata"]["uid"] != standby["metadata"]["uid"]:
        # Not the standby: then it is the killed pod's restarted container (a new identity in
        # the same pod; the restart itself is checked below once the kubelet reports it).
        assert new_leader["metadata"]["uid"] == leader["metadata"]["uid"], new_holder
        print("leader killed: its restarted container took the lease before the standby")
    expected = {**SAMPLE_KEYS, "API_KEY": "rotated-api-key", "LOG_LEVEL": "debug"}
    wait_synced(env, namespace, expected)
    assert env.fake.count(r"/secrets/batch", status=200) > landed_before
    assert sync_status(env, namespace)["managedKeys"] == ["API_KEY", "DB_PASSWORD", "LOG_LEVEL"]

    def killed_back() -> bool:
        pods = all_pods_ready(env, 2) or []
        again = [p for p in pods if p["metadata"]["uid"] == leader["metadata"]["uid"]]
        return bool(again) and again[0]["status"]["containerStatuses"][0]["restartCount"] >= 1

    wait_for(killed_back, 120, "the killed container back")
    # Both replicas run again and the lease has not moved since the takeover: no flapping.
    assert lease_holder(env) == new_holder, "the lease moved again after the takeover"
    assert_logs_clean(env)


def leader_pod_deleted(env: NodeEnv, namespace: str) -> None:
    """`kubectl delete pod` of the leader (a drain, a rolling update): it releases the lease on
    SIGTERM and another replica leads without waiting for the lease to run out: the standby, or
    the Deployment's replacement pod when that one asked first after the release."""
    leader = operator_pod(env)
    holder = lease_holder(env)
    deleted_at = time.monotonic()
    env.k("delete", "pod", "-n", OPERATOR_NAMESPACE, leader["metadata"]["name"], "--wait=false")
    new_holder = wait_for(
        lambda: (h := lease_holder(env)) != holder and h, 60, "another replica to lead"
    )
    print(f"leader deleted: another replica led {time.monotonic() - deleted_at:.1f}s later")
    new_leader = pod_of(new_holder, operator_pods(env))
    assert new_leader and new_leader["metadata"]["uid"] != leader["metadata"]["uid"], new_holder
    edit_source(env, namespace, "API_KEY", "after-handover")
    wait_synced(env, namespace, {**SAMPLE_KEYS, "API_KEY": "after-handover", "LOG_LEVEL": "debug"})
    edit_source(env, namespace, "API_KEY", "rotated-api-key")
    wait_synced(env, namespace, {**SAMPLE_KEYS, "API_KEY": "rotated-api-key", "LOG_LEVEL": "debug"})
    wait_for(lambda: all_pods_ready(env, 2), 120, "the Deployment's replacement pod")
    assert_logs_clean(env)


def namespace_deletion_removes_keys_first(env: NodeEnv) -> None:
    """`kubectl delete namespace` with a deletionPolicy Delete SecretSync in it: the namespace
    controller deletes the connection and the SecretSync at once; the connection stays usable
    until the SecretSync has removed its keys, and the namespace goes away."""
    namespace, path = "teardown", "/apps/teardown"
    env.k("create", "namespace", namespace)
    apply_samples(
        env,
        namespace,
        **{"/apps/payments": path, "deletionPolicy: Retain": "deletionPolicy: Delete"},
    )
    wait_for(lambda: remote(env, path) == SAMPLE_KEYS, 120, "the teardown namespace's sync")
    env.k("delete", "namespace", namespace, "--wait=true", "--timeout=120s", check=False)
    try:
        wait_for(
            lambda: not env.k("get", "namespace", namespace, "--ignore-not-found", "-o", "name"),
            60,
            "the namespace to go",
        )
    except AssertionError as exc:
        left = env.k(
            "get", "secretsync,infisicalconnection", "-n", namespace, "-o", "yaml", check=False
        )
        raise AssertionError(f"{exc}\n{left}\n{diagnosis(env, 'demo')}") from None
    assert remote(env, path) == {}  # removed before the connection went
    assert_logs_clean(env)


def scenario_namespaced(env: NodeEnv) -> None:
    """Install for one namespace only (Role + RoleBinding there, no cluster-wide access)."""
    namespace = "team-a"
    env.k("create", "namespace", namespace)
    # One replica: leader election on by default, and nobody to hand over to.
    helm_install(env, "rbac.clusterWide=false", f"watchNamespaces={{{namespace}}}", "replicas=1")
    # Cluster-scoped: the operator's only grants are ClusterInfisicalConnections with the
    # namespaces their selectors match (no Secrets) and the read of the kube-system namespace
    # (the cluster's identity); the roles aggregated into view/edit/admin are for namespace users.
    bindings = env.k("get", "clusterrolebinding", "-o", "name").split()
    ours = sorted(binding.rsplit("/", 1)[1] for binding in bindings if RELEASE in binding)
    assert ours == [f"{RELEASE}-cluster-connections", f"{RELEASE}-cluster-identity"]
    roles = env.k("get", "clusterrole", "-o", "name").split()
    ours = sorted(role.rsplit("/", 1)[1] for role in roles if RELEASE in role)
    assert ours == [
        f"{RELEASE}-{suffix}"
        for suffix in ("cluster-connections", "cluster-identity", "edit", "view")
    ]
    assert env.k("get", "role", "-n", namespace, "-o", "name").strip()
    assert pod_ready(env)
    apply_samples(env, namespace)
    wait_synced(env, namespace, SAMPLE_KEYS)
    assert_logs_clean(env)
    cluster_connection_sample(env, namespace)
    remove_samples(env, namespace)
    uninstall_leaves_nothing(env, [namespace])


def cluster_connection_sample(env: NodeEnv, namespace: str) -> None:
    """deploy/samples/cluster-connection as the README applies it, with the namespaced chart:
    its Secret is read in the operator's namespace (the chart's Role there), the namespace is
    refused until labelled, then syncs; the connection goes once its SecretSync has."""
    for sample in sorted((SAMPLES / "cluster-connection").glob("*.yaml")):
        text = sample.read_text().replace(SAMPLE_URL, env.fake_url)
        env.k(
            "apply",
            "-f",
            "-",
            stdin=text.replace("namespace: team-a\n", f"namespace: {namespace}\n"),
        )
    sync = "app-secrets-to-shared"

    def ready_reason() -> str:
        status = env.get_json("secretsync", sync, "-n", namespace).get("status") or {}
        found = [c for c in status.get("conditions") or [] if c["type"] == "Ready"]
        return str(found[0]["reason"]) if found else ""

    wait_for(
        lambda: ready_reason() == "ConnectionNotAllowed", 60, "the unlabelled namespace refused"
    )
    assert env.fake.state.get_secrets(PROJECT_ID, "dev", "/apps/payments") == {}
    env.k("label", "namespace", namespace, "infisical-sync.dev/connection=shared")
    wait_for(
        lambda: env.fake.state.get_secrets(PROJECT_ID, "dev", "/apps/payments") == SAMPLE_KEYS,
        60,
        "the labelled namespace synced through the cluster connection",
    )
    wait_for(
        lambda: (
            (env.get_json("clusterinfisicalconnection", "shared").get("status") or {}).get(
                "secretSyncs"
            )
            == 1
        ),
        30,
        "the connection's usage count",
    )
    env.k("delete", "secretsync", sync, "-n", namespace, "--wait=true", "--timeout=120s")
    env.k("delete", "clusterinfisicalconnection", "shared", "--wait=true", "--timeout=120s")
    assert_logs_clean(env)


SCENARIOS: dict[str, Callable[[NodeEnv], None]] = {
    "cluster-wide": scenario_cluster_wide,
    "namespaced": scenario_namespaced,
}
