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
from tests.conftest import wait_for as poll

ROOT = Path(__file__).parents[2]
CHART = ROOT / "deploy" / "helm" / "infisical-sync"
SAMPLES = ROOT / "deploy" / "samples"
SEED = SAMPLES / "fake-infisical-seed.yaml"
SAMPLE_URL = "http://127.0.0.1:8088"
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


def operator_pod(env: NodeEnv) -> dict[str, Any]:
    pods = env.get_json(
        "pods", "-n", OPERATOR_NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}"
    )
    running = [p for p in pods["items"] if not p["metadata"].get("deletionTimestamp")]
    assert len(running) == 1, [p["metadata"]["name"] for p in pods["items"]]
    return dict(running[0])


def pod_ready(env: NodeEnv) -> dict[str, Any] | None:
    pods = env.get_json(
        "pods", "-n", OPERATOR_NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}"
    )
    for pod in pods["items"]:
        conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
        if conditions.get("Ready") == "True" and not pod["metadata"].get("deletionTimestamp"):
            return dict(pod)
    return None


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


def apply_samples(env: NodeEnv, namespace: str, **replace: str) -> None:
    for sample in sorted(SAMPLES.glob("0*.yaml")):
        text = sample.read_text().replace(SAMPLE_URL, env.fake_url)
        for old, new in replace.items():
            text = text.replace(old, new)
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
    pod = operator_pod(env)["metadata"]["name"]
    logs = env.k("logs", "-n", OPERATOR_NAMESPACE, pod)
    assert "infisical-sync operator started" in logs, logs[-2000:]
    assert "Traceback" not in logs, logs[-4000:]
    for line in filter(None, logs.splitlines()):
        record = json.loads(line)  # the chart asks for JSON logs: every line is one
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


def reset_after_failure(env: NodeEnv) -> None:
    """Best effort after a failed scenario, so the next one starts on a clean cluster: release
    every SecretSync (abandon), uninstall, delete the scenario namespaces."""
    env.k("annotate", "secretsync", "--all", "-A", "infisical-sync.dev/abandon=true", check=False)
    env.k("delete", "secretsync,infisicalconnection", "--all", "-A", "--timeout=60s", check=False)
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
    """Install cluster-wide, sync the samples, edit, kill mid-sync, upgrade, uninstall."""
    namespace = "demo"
    env.k("create", "namespace", namespace)
    helm_install(env)
    assert pod_ready(env), "the operator's pod is not Ready through its own probes"
    assert_runs_as_installed(env)

    apply_samples(env, namespace)
    wait_synced(env, namespace, SAMPLE_KEYS)
    # The seed's key at the project root is not the SecretSync's: untouched.
    assert env.fake.state.get_secrets(PROJECT_ID, "prod", "/") == {"UNRELATED_KEY": "left-alone"}
    edit_source(env, namespace, "API_KEY", "rotated-api-key")
    wait_synced(env, namespace, {**SAMPLE_KEYS, "API_KEY": "rotated-api-key"})
    assert_logs_clean(env)

    # Killed mid-sync: writes hang at the fake, the container dies while one is in flight.
    pod = operator_pod(env)
    container_id = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    # A hung write never lands: what arrives later can only come from the replacement.
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
    env.kill_container(container_id)
    env.fake.faults.remove(writes)
    wait_for(
        lambda: (p := pod_ready(env)) and p["status"]["containerStatuses"][0]["restartCount"] >= 1,
        120,
        "the restarted container to be Ready",
    )
    wait_synced(env, namespace, {**SAMPLE_KEYS, "API_KEY": "rotated-api-key", "LOG_LEVEL": "debug"})
    assert env.fake.count(r"/secrets/batch", status=200) > landed_before
    assert sync_status(env, namespace)["managedKeys"] == ["API_KEY", "DB_PASSWORD", "LOG_LEVEL"]
    assert_logs_clean(env)

    # An upgrade with changed values replaces the pod; the new one syncs too.
    helm_install(env, "operator.logLevel=DEBUG", "resources.limits.memory=300Mi", upgrade=True)
    pod = wait_for(
        lambda: (
            (p := pod_ready(env))
            and p["spec"]["containers"][0]["resources"]["limits"]["memory"] == "300Mi"
            and p
        ),
        180,
        "the upgraded pod",
    )
    assert "--log-level=DEBUG" in pod["spec"]["containers"][0]["args"]
    assert memory_limit_bytes(env) == 300 * 1024 * 1024  # enforced by the kernel, not only spec
    edit_source(env, namespace, "DB_PASSWORD", "after-upgrade")
    expected = {"DB_PASSWORD": "after-upgrade", "API_KEY": "rotated-api-key", "LOG_LEVEL": "debug"}
    wait_synced(env, namespace, expected)
    assert_logs_clean(env)

    namespace_deletion_removes_keys_first(env)
    remove_samples(env, namespace)
    uninstall_leaves_nothing(env, [namespace])


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
    helm_install(env, "rbac.clusterWide=false", f"watchNamespaces={{{namespace}}}")
    # Cluster-scoped: only the read of the kube-system namespace (the cluster's identity).
    roles = env.k("get", "clusterrole,clusterrolebinding", "-o", "name").split()
    ours = [role for role in roles if RELEASE in role]
    assert ours and all(role.endswith("-cluster-identity") for role in ours), roles
    assert env.k("get", "role", "-n", namespace, "-o", "name").strip()
    assert pod_ready(env)
    apply_samples(env, namespace)
    wait_synced(env, namespace, SAMPLE_KEYS)
    assert_logs_clean(env)
    remove_samples(env, namespace)
    uninstall_leaves_nothing(env, [namespace])


SCENARIOS: dict[str, Callable[[NodeEnv], None]] = {
    "cluster-wide": scenario_cluster_wide,
    "namespaced": scenario_namespaced,
}
