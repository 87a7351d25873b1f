"""`make demo`: the whole product on this machine, start to finish, then cleaned up.

A local control plane (etcd + kube-apiserver) with the CRDs, a fake Infisical started from
deploy/demo/fake-infisical-seed.yaml, the operator (`infisical-sync run`, with only the
chart's RBAC), the samples in deploy/samples applied with kubectl; then the source Secret is
edited, and you see what a user sees: `kubectl get infconn,ssync` and the destination keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import yaml
from pydantic import SecretStr

from infisical_sync.infisical.client import ClientPool, Credentials
from infisical_sync.infisical.models import SecretLocation
from infisical_sync.testing.controlplane import (
    OPERATOR_USER,
    ControlPlane,
    ensure_kube_binaries,
    free_port,
    grant_operator_rbac,
    install_crds,
)
from infisical_sync.testing.processes import logged_process
from infisical_sync.testing.samples import DEMO_SEED, SAMPLE_NAMESPACE, sample_manifests

CLI = [sys.executable, "-m", "infisical_sync"]
NAMESPACE = SAMPLE_NAMESPACE
DEMO_CLIENT_ID = "6a1f0e8e-5d43-4b7a-9c1e-0d2f3a4b5c6d"
DEMO_CLIENT_SECRET = "demo-client-secret-do-not-use"
DEMO_PROJECT_ID = "0b7f5a52-2c1d-4e8f-9a3b-6c5d4e3f2a10"


def say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def wait(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise SystemExit(f"demo: timed out waiting for {what}")


def destination_keys(url: str, path: str) -> dict[str, int]:
    """Key names and value lengths in the destination, read with the operator's own client."""

    async def read() -> dict[str, int]:
        pool = ClientPool()
        try:
            session = pool.session(
                "demo/reader",
                instance_url=url,
                credentials=Credentials(DEMO_CLIENT_ID, SecretStr(DEMO_CLIENT_SECRET)),
                allow_http=True,
            )
            listing = await session.list_secrets(
                SecretLocation(project_id=DEMO_PROJECT_ID, environment="prod", secret_path=path)
            )
            return {s.key: len(s.value.get_secret_value()) for s in listing.secrets}
        finally:
            await pool.aclose()

    return asyncio.run(read())


def show_destination(url: str) -> None:
    for path in ("/apps/payments", "/"):
        keys = destination_keys(url, path)
        print(f"  payments/prod:{path}")
        for key, length in sorted(keys.items()):
            print(f"    {key:<16} ({length} chars)")


def preferred_port(port: int) -> int:
    """The samples' port when it is free, else any free one (the samples are rewritten)."""
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))
    except OSError:
        return free_port()
    return port


def main() -> int:
    kubectl = str(ensure_kube_binaries(with_kubectl=True)["kubectl"])
    with contextlib.ExitStack() as stack:
        say("starting a local control plane (etcd + kube-apiserver, RBAC on)")
        plane = stack.enter_context(ControlPlane())
        stack.callback(say, "cleaning up: operator, fake Infisical and control plane stopped")
        install_crds(plane.kubeconfig)
        env = {**os.environ, "KUBECONFIG": str(plane.kubeconfig)}

        def k(*args: str, stdin: str | None = None) -> str:
            result = subprocess.run(
                [kubectl, "-n", NAMESPACE, *args],
                input=stdin,
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                raise SystemExit(f"kubectl {' '.join(args)} failed: {result.stderr}")
            return result.stdout

        k("create", "namespace", NAMESPACE)
        grant_operator_rbac(plane.kubeconfig)
        url = f"http://127.0.0.1:{preferred_port(8088)}"
        # INFISICAL_PROFILE=2024 answers as a late-2024 self-hosted server (no v4, no metadata).
        profile = os.environ.get("INFISICAL_PROFILE") or "current"
        say(
            f"starting a fake Infisical ({profile} generation) on {url} "
            "(seed: deploy/demo/fake-infisical-seed.yaml)"
        )
        seed = str(DEMO_SEED)
        port = url.rsplit(":", 1)[1]
        fake = stack.enter_context(
            logged_process(
                [*CLI, "fake-infisical", "--seed", seed, "--port", port, "--profile", profile],
                plane.workdir / "fake-infisical.log",
            )
        )
        fake.wait_for_line("listening")

        say(f"starting the operator as user {OPERATOR_USER} (only the chart's RBAC rules)")
        operator_env = {**os.environ, "KUBECONFIG": str(plane.kubeconfig_for_user(OPERATOR_USER))}
        operator = stack.enter_context(
            logged_process(
                [
                    *CLI,
                    "run",
                    "--namespace",
                    NAMESPACE,
                    "--metrics-port",
                    "0",
                    "--health-port",
                    "0",
                    # The samples use an InfisicalConnection; outside a pod there is no
                    # operator namespace for ClusterInfisicalConnections' Secrets anyway.
                    "--no-cluster-connections",
                ],
                plane.workdir / "operator.log",
                operator_env,
            )
        )
        operator.wait_for_line("operator started")

        say("kubectl apply -f deploy/samples/")
        for text in sample_manifests(NAMESPACE, url):
            print("  " + k("apply", "-f", "-", stdin=text).strip())
        wait(
            "the first sync",
            lambda: (
                "Succeeded" in k("get", "ssync", "-o", "jsonpath={.items[0].status.syncStatus}")
            ),
        )
        say("kubectl get infconn,ssync")
        print(k("get", "infconn,ssync"))
        say("keys in the destination (names only; UNRELATED_KEY is not ours: left alone)")
        show_destination(url)

        say("editing the source Secret: API_KEY changed, FEATURE_FLAG added, LOG_LEVEL gone")
        k(
            "patch",
            "secret",
            "app-secrets",
            "--type=json",
            "-p",
            '[{"op":"replace","path":"/data/API_KEY","value":"cm90YXRlZC1hcGkta2V5"},'
            '{"op":"add","path":"/data/FEATURE_FLAG","value":"b24="},'
            '{"op":"remove","path":"/data/LOG_LEVEL"}]',
        )

        def edited() -> bool:
            keys = destination_keys(url, "/apps/payments")
            return "FEATURE_FLAG" in keys and "LOG_LEVEL" not in keys

        wait("the edit to reach Infisical", edited, timeout=30)
        say("kubectl get infconn,ssync")
        print(k("get", "infconn,ssync"))
        say("keys in the destination after the edit")
        show_destination(url)
        say("status of the SecretSync (kubectl get ssync -o yaml: the status part)")
        raw = k("get", "ssync", "app-secrets-to-selfhosted", "-o", "jsonpath={.status}")
        print(yaml.safe_dump({"status": json.loads(raw)}, sort_keys=False))
        say("events")
        print(k("get", "events", "--sort-by=.metadata.creationTimestamp"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
