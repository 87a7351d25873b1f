"""Figures for the sync path. Reports numbers; asserts nothing.

    .venv/bin/python benchmarks/bench_sync.py [--keys 100 1000 5000]

1. planning: the pure planner on N keys (first sync, steady state, 10 % changed);
2. a full SyncEngine cycle, Infisical -> Infisical between two fake servers over loopback HTTP:
   the first sync of N keys, a steady-state cycle (conditional lists, no writes) and a cycle with
   10 % of the values changed — wall time and HTTP requests per cycle, and the Kubernetes
   status write the scheduler sends for it (only the fields that change; none when none does).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

from pydantic import SecretStr

from infisical_sync.connection import ConnectionReconciler, ConnectionState, connection_key
from infisical_sync.infisical.client import ClientPool, Credentials
from infisical_sync.instance_urls import AllowedInstances
from infisical_sync.planner import (
    OWNER_CLUSTER_KEY,
    OWNER_KEY,
    OWNER_UID_KEY,
    DestinationKey,
    Owner,
    PlanInput,
    plan,
)
from infisical_sync.status_patch import merge_patch, status_patch
from infisical_sync.sync import SyncEngine
from infisical_sync.testing.fake_infisical import FakeInfisical

OWNER = Owner("bench", "sync", "uid-1", "bench-cluster")


def timed(fn: Any, repeat: int = 5) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def bench_planner(n: int) -> None:
    source = {f"KEY_{i}": f"value-{i}" for i in range(n)}
    ours = ((OWNER_KEY, OWNER.ref), (OWNER_UID_KEY, OWNER.uid), (OWNER_CLUSTER_KEY, OWNER.cluster))
    synced = {k: DestinationKey(v, ours) for k, v in source.items()}
    changed = {k: (v + "x" if i % 10 == 0 else v) for i, (k, v) in enumerate(source.items())}
    cases = {
        "first sync": PlanInput(
            source=source, destination={}, owner=OWNER, environment="prod", initial=True
        ),
        "steady": PlanInput(source=source, destination=synced, owner=OWNER, environment="prod"),
        "10% changed": PlanInput(
            source=changed, destination=synced, owner=OWNER, environment="prod"
        ),
    }
    for label, data in cases.items():
        seconds = timed(lambda data=data: plan(data))
        print(
            f"  plan {n:>6} keys, {label:<12} {seconds * 1000:8.2f} ms  ({n / seconds:,.0f} keys/s)"
        )


async def bench_engine(n: int) -> None:
    async with FakeInfisical() as source_server, FakeInfisical() as destination_server:
        for server, project in ((source_server, "p-src"), (destination_server, "p-dst")):
            server.state.add_project(project, project_id=project)
            server.state.add_identity("bench", "bench-secret", projects={project: {}})
        for i in range(n):
            source_server.state.put_secret("p-src", "prod", "/", f"KEY_{i}", f"value-{i}")
        pool = ClientPool()
        connections = ConnectionReconciler(
            kube=None,  # type: ignore[arg-type]
            pool=pool,
            post_event=lambda *a: None,  # type: ignore[arg-type]
            allowed_instances=AllowedInstances(),
        )
        for name, server in (("src", source_server), ("dst", destination_server)):
            session = pool.session(
                connection_key("bench", name),
                instance_url=server.url,
                credentials=Credentials("bench", SecretStr("bench-secret")),
                allow_http=True,
            )
            await session.validate(force_login=True)
            connections.states[("bench", name)] = ConnectionState(True, "Validated", "")
        engine = SyncEngine(
            kube=None,  # type: ignore[arg-type]
            connections=connections,
            post_event=lambda *a: None,  # type: ignore[arg-type]
            cluster_id=OWNER.cluster,
        )
        body: dict[str, Any] = {
            "metadata": {"name": "sync", "namespace": "bench", "uid": "uid-1", "generation": 1},
            "spec": {
                "source": {
                    "infisical": {
                        "connectionRef": {"name": "src"},
                        "projectId": "p-src",
                        "environment": "prod",
                    }
                },
                "destination": {
                    "connectionRef": {"name": "dst"},
                    "projectId": "p-dst",
                    "environment": "prod",
                    "secretPath": "/apps",
                },
            },
            "status": {},
        }

        async def cycle(label: str) -> None:
            seen = len(source_server.log), len(destination_server.log)
            started = time.perf_counter()
            result = await engine.run("bench", "sync", body)
            seconds = time.perf_counter() - started
            changes = status_patch(body["status"], result.status)
            body["status"] = merge_patch(body["status"], changes)
            patched = (
                f"{len(json.dumps(changes)) / 1024:.1f} KiB status patch"
                if changes
                else "no status write"
            )
            sent = source_server.log[seen[0] :] + destination_server.log[seen[1] :]
            lists = sum(1 for r in sent if r.method == "GET" and "/secrets" in r.path)
            writes = sum(1 for r in sent if "/secrets/batch" in r.path)
            print(
                f"  sync {n:>6} keys, {label:<12} {seconds * 1000:8.1f} ms  "
                f"{len(sent):>3} HTTP requests ({lists} lists, {writes} writes), {patched}  "
                f"({result.status.get('lastSyncMessage', '')[:60]})"
            )

        await cycle("first sync")
        await cycle("steady")
        await cycle("steady")
        for i in range(0, n, 10):
            source_server.state.put_secret("p-src", "prod", "/", f"KEY_{i}", f"changed-{i}")
        await cycle("10% changed")
        await pool.aclose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, nargs="+", default=[100, 1000, 5000])
    args = parser.parse_args()
    print("planner (pure, median of 5):")
    for n in args.keys:
        bench_planner(n)
    print("engine, Infisical -> Infisical over loopback HTTP (fake servers, default batch budget):")
    for n in args.keys:
        asyncio.run(bench_engine(n))


if __name__ == "__main__":
    main()
