"""The operator at scale against a local control plane. Reports numbers; asserts nothing.

    .venv/bin/python benchmarks/bench_scale.py [--syncs 1000] [--keys 20] [--interval 5m]
        [--window SECONDS] [--burst 100] [--no-restart] [--cold-only] [--shards N]
        [--source DIR]

Starts etcd + kube-apiserver (RBAC on, the chart's rules), a fake Infisical on loopback and
creates `--syncs` Secrets of `--keys` keys with one SecretSync each (its own destination path)
BEFORE the operator starts. Then, with the operator (`run -A`, INFO, JSON logs) as a subprocess:

1. cold: seconds until every destination holds its keys (read from the fake, which costs the
   API server nothing) and until every SecretSync is Succeeded, and the peak RSS meanwhile;
2. steady (after an interval and its jitter, to settle): CPU (% of one core) and RSS over `--window` seconds,
   with what that window cost: Infisical requests by answer (304 = conditional list, no change)
   and how many SecretSyncs Kubernetes stored a new version of (status writes);
3. burst: `--burst` source Secrets edited at once, seconds from each edit to the new value at
   the destination (p50/p99/max, polled every 10 ms);
4. restart (unless --no-restart): the operator stopped and started again; when the first list of
   each destination came (spread over the restart window) and how many were conditional (304).

`--shards N` runs N operator processes (`--shard i/N`) and sums CPU and RSS. `--source` runs
another checkout's `operator/` directory, for a before/after comparison.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import signal
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client

from infisical_sync.durations import parse_duration
from infisical_sync.scheduler import RESTART_SPREAD
from infisical_sync.testing.controlplane import (
    OPERATOR_USER,
    ControlPlane,
    api_client,
    grant_operator_rbac,
    install_crds,
)
from infisical_sync.testing.fake_infisical import BackgroundFake, FakeInfisical
from infisical_sync.testing.processes import LoggedProcess, logged_process

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
GROUP, VERSION = "infisical-sync.dev", "v1alpha1"
NAMESPACE, PROJECT = "bench", "p-bench"
CLIENT_ID, CLIENT_SECRET = "55555555-5555-4555-8555-555555555555", "bench-client-secret"
TICKS = os.sysconf("SC_CLK_TCK")


def path_of(index: int) -> str:
    return f"/apps/s{index:05d}"


def encoded(values: dict[str, str]) -> dict[str, str]:
    return {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}


def source_values(index: int, keys: int, generation: int = 0) -> dict[str, str]:
    return {f"KEY_{k:02d}": f"value-{index}-{k}-{generation}" for k in range(keys)}


# --- the cluster's objects ----------------------------------------------------------------------


def create_objects(kube: Any, fake: FakeInfisical, syncs: int, keys: int, interval: str) -> float:
    core, custom = client.CoreV1Api(kube), client.CustomObjectsApi(kube)
    core.create_namespace({"metadata": {"name": NAMESPACE}})
    identity = {"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET}
    core.create_namespaced_secret(
        NAMESPACE, {"metadata": {"name": "identity"}, "data": encoded(identity)}
    )
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        NAMESPACE,
        "infisicalconnections",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "InfisicalConnection",
            "metadata": {"name": "dest"},
            "spec": {
                "instanceUrl": fake.url,
                "allowInsecureHttp": True,
                "credentials": {"secretRef": {"name": "identity"}},
            },
        },
    )

    def create(index: int) -> None:
        name = f"s{index:05d}"
        body = {"metadata": {"name": name}, "data": encoded(source_values(index, keys))}
        core.create_namespaced_secret(NAMESPACE, body)
        spec = {
            "source": {"kubernetes": {"secrets": [{"name": name}]}},
            "destination": {
                "connectionRef": {"name": "dest"},
                "projectId": PROJECT,
                "environment": "prod",
                "secretPath": path_of(index),
            },
            "syncInterval": interval,
        }
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            NAMESPACE,
            "secretsyncs",
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "SecretSync",
                "metadata": {"name": name},
                "spec": spec,
            },
        )

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(create, range(syncs)))
    return time.monotonic() - started


def list_syncs(kube: Any) -> list[dict[str, Any]]:
    custom, items, token = client.CustomObjectsApi(kube), [], None
    while True:
        page = custom.list_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, "secretsyncs", limit=1000, _continue=token
        )
        items += page["items"]
        token = page["metadata"].get("continue")
        if not token:
            return items


# --- the operator processes ---------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def memory(pid: int) -> dict[str, int]:
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) * 1024
    return found


@contextlib.contextmanager
def operators(
    plane: ControlPlane, source: Path, shards: int, run: int
) -> Iterator[list[LoggedProcess]]:
    environ = {
        **os.environ,
        "KUBECONFIG": str(plane.kubeconfig_for_user(OPERATOR_USER)),
        "PYTHONPATH": f"{source / 'operator'}:{source}",
    }
    with contextlib.ExitStack() as stack:
        processes = []
        for shard in range(shards):
            argv = [sys.executable, "-m", "infisical_sync", "run", "-A", "--log-format", "json"]
            argv += ["--log-level", "INFO", "--metrics-port", "0", "--health-port", "0"]
            if shards > 1:
                argv += ["--shard", f"{shard}/{shards}"]
            log_path = plane.workdir / f"bench-operator-{run}-{shard}.log"
            processes.append(stack.enter_context(logged_process(argv, log_path, environ)))
        for process in processes:
            process.wait_for_line("infisical-sync operator started", timeout=120)
        yield processes


def pids(processes: list[LoggedProcess]) -> list[int]:
    return [p.process.pid for p in processes]


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    if not ordered:
        return "no samples"
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"p50 {statistics.median(ordered):.2f} s, p99 {p99:.2f} s, max {ordered[-1]:.2f} s "
        f"(n={len(ordered)})"
    )


# --- the phases ---------------------------------------------------------------------------------


def written(fake: FakeInfisical, syncs: int, keys: int) -> int:
    """Destinations holding all their keys, read from the fake in this process (free)."""
    done = 0
    for index in range(syncs):
        with contextlib.suppress(RuntimeError):  # the fake's thread may be mid-write
            if len(fake.state.get_secrets(PROJECT, "prod", path_of(index))) == keys:
                done += 1
    return done


def others_cpu(plane: ControlPlane) -> dict[str, float]:
    """CPU seconds of what shares the cores with the operator: the API server, etcd and this
    process (the fake Infisical and the polling)."""
    used = {name: cpu_seconds(process.pid) for name, process in plane.processes.items()}
    times = os.times()
    return {**used, "bench+fake": times.user + times.system}


def api_requests(kube: Any) -> Counter[str]:
    """The API server's own count of requests, by verb, resource and subresource."""
    response = kube.call_api("GET", f"{kube.configuration.host}/metrics")
    response.read()
    counts: Counter[str] = Counter()
    for line in response.data.decode().splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels_text, _, value = line[len("apiserver_request_total{") :].rpartition("} ")
        labels = dict(
            item.split("=", 1) for item in labels_text.replace('"', "").split(",") if "=" in item
        )
        what = f"{labels.get('verb')} {labels.get('resource')}"
        if labels.get("subresource"):
            what += f"/{labels['subresource']}"
        counts[what] += int(float(value))
    return counts


def cold(
    kube: Any,
    fake: FakeInfisical,
    plane: ControlPlane,
    processes: list[LoggedProcess],
    syncs: int,
    keys: int,
    started: float,
    others_before: dict[str, float],
    requests_before: Counter[str],
) -> None:
    """Until every SecretSync is Succeeded. The API server is asked only once every destination
    has its keys: listing 10,000 SecretSyncs (about 100 MB of JSON) every few seconds would load
    the very server the operator is waiting for."""
    peak, done, deadline = 0, 0, started + 1800

    def sample() -> None:
        nonlocal peak
        peak = max(peak, sum(memory(pid)["VmRSS"] for pid in pids(processes)))

    while time.monotonic() < deadline and written(fake, syncs, keys) < syncs:
        sample()
        time.sleep(1)
    keys_at = time.monotonic() - started
    while time.monotonic() < deadline:
        sample()
        done = sum(
            1 for s in list_syncs(kube) if (s.get("status") or {}).get("syncStatus") == "Succeeded"
        )
        if done == syncs:
            break
        time.sleep(5)
    seconds = time.monotonic() - started
    print(
        f"cold: every destination written after {keys_at:.1f} s; {done}/{syncs} Succeeded "
        f"after {seconds:.1f} s (checked every 5 s from then); peak RSS {peak / MIB:.0f} MiB"
    )
    cpu = {"operator": sum(cpu_seconds(pid) for pid in pids(processes))}
    cpu |= {name: used - others_before[name] for name, used in others_cpu(plane).items()}
    print("cold CPU seconds: " + ", ".join(f"{name} {used:.0f}" for name, used in cpu.items()))
    requests = api_requests(kube) - requests_before
    requests.pop("LIST secretsyncs", None)  # mostly this benchmark's own polling
    print(
        "cold API requests: "
        + ", ".join(f"{what} {count}" for what, count in requests.most_common(12))
    )


def steady(kube: Any, fake: FakeInfisical, processes: list[LoggedProcess], window: float) -> None:
    versions = {s["metadata"]["name"]: s["metadata"]["resourceVersion"] for s in list_syncs(kube)}
    logged = len(fake.log)
    cpu = sum(cpu_seconds(pid) for pid in pids(processes))
    started = time.monotonic()
    time.sleep(window)
    elapsed = time.monotonic() - started
    used = sum(cpu_seconds(pid) for pid in pids(processes)) - cpu
    rss = sum(memory(pid)["VmRSS"] for pid in pids(processes))
    answers = Counter(f"{r.method} {r.status}" for r in fake.log[logged:])
    rewritten = sum(
        1
        for s in list_syncs(kube)
        if versions.get(s["metadata"]["name"]) != s["metadata"]["resourceVersion"]
    )
    print(
        f"steady over {elapsed:.0f} s: CPU {100 * used / elapsed:.1f} % of a core, "
        f"RSS {rss / MIB:.0f} MiB; SecretSyncs stored anew: {rewritten}; "
        f"Infisical requests: {dict(sorted(answers.items())) or 'none'}"
    )


def cpu_snapshot(plane: ControlPlane, processes: list[LoggedProcess]) -> dict[str, float]:
    return {"operator": sum(cpu_seconds(pid) for pid in pids(processes)), **others_cpu(plane)}


def burst(
    kube: Any,
    fake: FakeInfisical,
    plane: ControlPlane,
    processes: list[LoggedProcess],
    syncs: int,
    keys: int,
    count: int,
) -> None:
    core = client.CoreV1Api(kube)
    chosen = list(range(0, syncs, max(1, syncs // count)))[:count]
    edited_at: dict[int, float] = {}

    def edit(index: int) -> None:
        values = source_values(index, keys, generation=1)
        core.patch_namespaced_secret(f"s{index:05d}", NAMESPACE, {"data": encoded(values)})
        edited_at[index] = time.monotonic()

    began, cpu_before = time.monotonic(), cpu_snapshot(plane, processes)
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(edit, chosen))
    issued = time.monotonic() - began
    arrived: dict[int, float] = {}
    deadline = time.monotonic() + 300
    while len(arrived) < len(chosen) and time.monotonic() < deadline:
        for index in chosen:
            if index in arrived:
                continue
            with contextlib.suppress(RuntimeError):  # the fake's thread may be mid-write
                found = fake.state.get_secrets(PROJECT, "prod", path_of(index))
                if found.get("KEY_00") == f"value-{index}-0-1":
                    arrived[index] = time.monotonic()
        time.sleep(0.01)
    latencies = [arrived[i] - edited_at[i] for i in arrived]
    lasted = max(arrived.values(), default=began) - began
    cpu = {name: used - cpu_before[name] for name, used in cpu_snapshot(plane, processes).items()}
    print(
        f"burst of {len(chosen)} edits: {percentiles(latencies)}; missing {len(chosen) - len(arrived)}"
        f" (the edits took {issued:.2f} s to make)"
    )
    print(
        f"burst CPU over its {lasted:.2f} s (% of a core): "
        + ", ".join(f"{name} {100 * used / max(lasted, 0.01):.0f}" for name, used in cpu.items())
    )


def wait_recorded(kube: Any, syncs: int, timeout: float) -> int:
    deadline, recorded = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        recorded = sum(1 for s in list_syncs(kube) if (s.get("status") or {}).get("lastRead"))
        if recorded == syncs:
            break
        time.sleep(5)
    return recorded


def restart_spread(fake: FakeInfisical, syncs: int, since: int, started_wall: float) -> None:
    first: dict[str, tuple[float, int]] = {}
    for record in fake.log[since:]:
        if record.method == "GET" and record.path.endswith("/secrets"):
            path = record.query.get("secretPath", "")
            first.setdefault(path, (record.at - started_wall, record.status))
    offsets = [at for at, _status in first.values()]
    statuses = Counter(status for _at, status in first.values())
    print(
        f"restart: {len(first)}/{syncs} destinations listed; first lists at {percentiles(offsets)} "
        f"after start; answers {dict(statuses)} (304 = conditional, from the persisted ETag)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--syncs", type=int, default=1000)
    parser.add_argument("--keys", type=int, default=20)
    parser.add_argument("--interval", default="5m", help="each SecretSync's syncInterval")
    parser.add_argument(
        "--window", type=float, help="seconds of steady state (default: one syncInterval)"
    )
    parser.add_argument("--burst", type=int, default=100)
    parser.add_argument("--no-restart", action="store_true")
    parser.add_argument("--cold-only", action="store_true", help="stop after the cold start")
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--source", type=Path, default=ROOT, help="checkout whose operator runs")
    args = parser.parse_args()
    # The fake answers from a thread of this process, next to the threads that make the edits:
    # a short switch interval, so that its answers do not wait up to 5 ms for the GIL each.
    sys.setswitchinterval(0.0005)
    # Killed (timeout, Ctrl-C in a pipeline): unwind, so that the operators, the control plane
    # and the fake are stopped by their context managers instead of left running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    interval = parse_duration(args.interval, default=-1)
    if interval <= 0:  # a typo fails here, not after the objects are made
        parser.error(f"--interval {args.interval!r} is not a duration")
    source = args.source.resolve()
    print(
        f"operator source: {source}; {args.syncs} SecretSyncs x {args.keys} keys @ {args.interval}"
    )

    with BackgroundFake() as fake, ControlPlane() as plane:
        fake.state.add_project("bench", project_id=PROJECT)
        fake.state.add_identity(CLIENT_ID, CLIENT_SECRET, projects={PROJECT: {}})
        install_crds(plane.kubeconfig)
        grant_operator_rbac(plane.kubeconfig)
        kube = api_client(plane.kubeconfig)
        seconds = create_objects(kube, fake, args.syncs, args.keys, args.interval)
        print(f"objects created in {seconds:.0f} s (before the operator started)")

        requests_before = api_requests(kube)
        started, others_before = time.monotonic(), others_cpu(plane)
        with operators(plane, source, args.shards, run=1) as processes:
            cold(
                kube,
                fake,
                plane,
                processes,
                args.syncs,
                args.keys,
                started,
                others_before,
                requests_before,
            )
            if args.cold_only:
                return
            # The interval after the first sync is not steady yet: each SecretSync lists in full
            # once more (its first listing predates its own writes) and records lastRead.
            # Past the jitter (±10 %) of those second cycles too.
            settle = interval * 1.2
            print(f"settling for {settle:.0f} s (an interval and its jitter) before measuring")
            time.sleep(settle)
            steady(kube, fake, processes, args.window or interval)
            burst(kube, fake, plane, processes, args.syncs, args.keys, args.burst)
            if not args.no_restart:
                # lastRead is recorded by a cycle that wrote nothing: the one after the burst's.
                recorded = wait_recorded(kube, args.syncs, interval * 1.2 + 60)
                print(f"before the restart: {recorded}/{args.syncs} with status.lastRead")
        if not args.no_restart:
            since, started_wall = len(fake.log), time.time()
            with operators(plane, source, args.shards, run=2) as processes:
                time.sleep(min(interval, RESTART_SPREAD) + 30)  # the whole spread, and then some
                restart_spread(fake, args.syncs, since, started_wall)


if __name__ == "__main__":
    main()
