"""Operator memory against Secrets it does not sync. Reports numbers; asserts nothing.

    .venv/bin/python benchmarks/bench_secret_memory.py [--secrets 20000] [--size 10240]
        [--last-applied] [--source DIR]

Starts a local control plane (etcd + kube-apiserver) and the operator (`run -A`, INFO, as a
user with the chart's RBAC), then creates N Secrets of `size` bytes in a namespace no SecretSync
reads, and reports the operator's RSS before and after (settled: five equal one-second samples
within 1 MiB) and its peak (VmHWM). `--last-applied` also gives each Secret a kubectl
last-applied-configuration annotation holding its data (what `kubectl apply` leaves: metadata
that carries the values). `--source` runs another checkout's `operator/` directory, e.g. main's,
for a before/after comparison.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client

from infisical_sync.testing.controlplane import (
    OPERATOR_USER,
    ControlPlane,
    api_client,
    grant_operator_rbac,
    install_crds,
)
from infisical_sync.testing.processes import logged_process

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of `pid`, in bytes."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) * 1024
    return found


def settled_rss(pid: int, timeout: float = 120) -> int:
    """RSS once five one-second samples in a row stay within 1 MiB of each other."""
    samples: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        samples.append(memory(pid)["VmRSS"])
        recent = samples[-5:]
        if len(recent) == 5 and max(recent) - min(recent) <= MIB:
            return recent[-1]
        time.sleep(1)
    return samples[-1]


def info_lines(log: str) -> int:
    return sum(1 for line in log.splitlines() if '"severity": "info"' in line)


def create_secrets(kube: Any, namespace: str, count: int, size: int, last_applied: bool) -> float:
    core = client.CoreV1Api(kube)
    value = base64.b64encode(os.urandom(size)[: size * 3 // 4]).decode()[:size]

    def create(index: int) -> None:
        name = f"unrelated-{index:06d}"
        data = {"VALUE": base64.b64encode(value.encode()).decode()}
        metadata: dict[str, Any] = {"name": name, "labels": {"bench": "unrelated"}}
        if last_applied:
            applied = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}}
            metadata["annotations"] = {
                "kubectl.kubernetes.io/last-applied-configuration": json.dumps(
                    {**applied, "data": data}
                )
            }
        core.create_namespaced_secret(namespace, {"metadata": metadata, "data": data})

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(create, range(count)))
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--secrets", type=int, default=20000)
    parser.add_argument("--size", type=int, default=10 * 1024, help="bytes of data per Secret")
    parser.add_argument("--last-applied", action="store_true")
    parser.add_argument("--source", type=Path, default=ROOT, help="checkout whose operator runs")
    args = parser.parse_args()

    with ControlPlane() as plane:
        install_crds(plane.kubeconfig)
        grant_operator_rbac(plane.kubeconfig)
        kube = api_client(plane.kubeconfig)
        namespace = "bench-unrelated"
        client.CoreV1Api(kube).create_namespace({"metadata": {"name": namespace}})
        source = args.source.resolve()
        environ = {
            **os.environ,
            "KUBECONFIG": str(plane.kubeconfig_for_user(OPERATOR_USER)),
            "PYTHONPATH": f"{source / 'operator'}:{source}",
        }
        argv = [sys.executable, "-m", "infisical_sync", "run", "-A", "--log-level", "INFO"]
        argv += ["--log-format", "json"]
        argv += ["--metrics-port", "0", "--health-port", "0"]
        log_path = plane.workdir / "bench-operator.log"
        with logged_process(argv, log_path, environ) as operator:
            operator.wait_for_line("infisical-sync operator started")
            pid = operator.process.pid
            before = settled_rss(pid)
            lines_before = info_lines(operator.log())
            seconds = create_secrets(kube, namespace, args.secrets, args.size, args.last_applied)
            after = settled_rss(pid)
            peak = memory(pid)["VmHWM"]
            lines_after = info_lines(operator.log()) - lines_before
        print(f"operator source: {source}")
        print(
            f"{args.secrets} unrelated Secrets of {args.size} bytes"
            f"{' (+ last-applied annotation)' if args.last_applied else ''}, "
            f"created in {seconds:.1f} s"
        )
        print(f"  RSS before    {before / MIB:8.1f} MiB")
        print(f"  RSS after     {after / MIB:8.1f} MiB")
        print(f"  added         {(after - before) / MIB:8.1f} MiB")
        print(f"  peak (VmHWM)  {peak / MIB:8.1f} MiB")
        print(f"  INFO lines    {lines_after:8d}  (logged while the Secrets were created)")


if __name__ == "__main__":
    main()
