"""Command line: `infisical-sync run` (the operator), the commands for people (`status`, `plan`,
`sync-now`: cli_commands.py) and the development helpers."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path

import urllib3
from pydantic import ValidationError

from infisical_sync import cli_commands
from infisical_sync.config import Settings
from infisical_sync.durations import parse_duration
from infisical_sync.instance_urls import parse_entry


def _allowed_instance_url(text: str) -> str:
    try:
        return str(parse_entry(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _timeout(text: str) -> float:
    """Seconds, or a duration like the CRDs' ("90s", "2m")."""
    seconds = parse_duration(text, -1.0) if not text.replace(".", "", 1).isdigit() else float(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"not a positive duration: {text!r} (e.g. 60, 90s, 2m)")
    return seconds


def build_parser(prog: str = "infisical-sync") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Keep Infisical projects in sync from Kubernetes.",
        epilog="exit codes (status, plan, sync-now): 0 done; 1 the sync failed, or would stop "
        "before planning; 2 usage error, not found, access refused or API server unreachable; "
        "3 sync-now timed out",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    cluster = argparse.ArgumentParser(add_help=False)
    cluster.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube)")
    cluster.add_argument("--context", help="kubeconfig context (default: the current one)")

    status = commands.add_parser(
        "status",
        parents=[cluster],
        help="InfisicalConnections and SecretSyncs, one line each, with reasons",
    )
    where = status.add_mutually_exclusive_group()
    where.add_argument("-n", "--namespace", help="default: the kubeconfig context's namespace")
    where.add_argument("-A", "--all-namespaces", action="store_true")

    plan = commands.add_parser(
        "plan",
        parents=[cluster],
        help="what the next sync of a SecretSync would create, update and delete (key names "
        "only; writes nothing)",
    )
    plan.add_argument("target", metavar="NAMESPACE/NAME", help="the SecretSync (or NAME)")
    plan.add_argument(
        "--cluster-id",
        default=cli_commands.environment_cluster_id(),
        help="the operator's --cluster-id, if it runs with one "
        "(default: $INFISICAL_SYNC_CLUSTER_ID, else the kube-system namespace's UID)",
    )
    plan.add_argument(
        "--operator-namespace",
        default=cli_commands.DEFAULT_OPERATOR_NAMESPACE,
        help="where the operator runs: a ClusterInfisicalConnection's Secrets are there "
        f"(default {cli_commands.DEFAULT_OPERATOR_NAMESPACE})",
    )

    now = commands.add_parser(
        "sync-now",
        parents=[cluster],
        help="request a sync of a SecretSync and wait for its outcome",
    )
    now.add_argument("target", metavar="NAMESPACE/NAME", help="the SecretSync (or NAME)")
    now.add_argument(
        "--timeout", type=_timeout, default=60.0, help="how long to wait (60, 90s, 2m; default 60s)"
    )
    now.add_argument(
        "--request", help="the sync-requested-at value to set (default: a new one each time)"
    )

    run = commands.add_parser("run", help="run the operator")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument(
        "-n", "--namespace", action="append", dest="namespaces", help="namespace to watch (repeat)"
    )
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", default=None, help="watch all namespaces"
    )
    run.add_argument("--log-format", choices=["text", "json"])
    run.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    run.add_argument("--metrics-port", type=int, help="Prometheus metrics port (0: off)")
    run.add_argument("--health-port", type=int, help="liveness endpoint port (0: off)")
    run.add_argument(
        "--concurrency-per-connection", type=int, help="parallel requests per Infisical instance"
    )
    run.add_argument(
        "--peering",
        action="store_true",
        default=None,
        help="no longer supported: see --leader-election",
    )
    run.add_argument(
        "--leader-election",
        action="store_true",
        default=None,
        help="run only while holding a Lease (several replicas: one leads, the others wait)",
    )
    run.add_argument("--lease-name", help="the leader election Lease (default infisical-sync)")
    run.add_argument("--lease-namespace", help="its namespace (default: the pod's own)")
    run.add_argument("--lease-duration", type=int, help="seconds a standby waits (default 10)")
    run.add_argument(
        "--lease-renew-deadline", type=float, help="seconds the leader writes after a renewal (7)"
    )
    run.add_argument("--lease-retry-period", type=float, help="seconds between tries (2)")
    run.add_argument(
        "--cluster-id",
        help="this cluster's identity in the ownership metadata of written keys "
        "(default: the UID of the kube-system namespace)",
    )
    run.add_argument(
        "--allowed-instance-url",
        action="append",
        dest="allowed_instance_urls",
        type=_allowed_instance_url,
        metavar="URL",
        help="an Infisical instance connections may use (repeat); none given: any",
    )
    run.add_argument(
        "--no-cluster-connections",
        dest="cluster_connections",
        action="store_false",
        default=None,
        help="do not serve ClusterInfisicalConnections (no watch of them or of Namespaces)",
    )
    run.add_argument(
        "--operator-namespace",
        help="where ClusterInfisicalConnections' Secrets and service accounts are "
        "(default: the pod's own namespace)",
    )
    run.add_argument(
        "--shard",
        metavar="i/N",
        help="own the i-th of N hash slices of the SecretSyncs (default 0/1: all of them)",
    )

    fake = commands.add_parser("fake-infisical", help="serve the fake Infisical (tests, demo)")
    fake.add_argument("--seed", type=Path, required=True, help="seed file (YAML or JSON)")
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=8088)
    fake.add_argument("--tls", action="store_true", help="serve HTTPS with a generated test CA")
    fake.add_argument(
        "--profile", help="server generation to answer as (current, 2024); default: the seed's"
    )

    plane = commands.add_parser("controlplane", help="local etcd + kube-apiserver for development")
    plane.add_argument("action", choices=["up", "down"])
    return parser


def _has_testing_extra() -> bool:
    import importlib.util

    return all(
        importlib.util.find_spec(name) is not None
        for name in ("infisical_sync.testing", "aiohttp", "cryptography")
    )


def _inspect(args: argparse.Namespace) -> int:
    """status, plan, sync-now: a failure is one line on stderr and an exit code."""
    target = cli_commands.Cluster(args.kubeconfig, args.context)
    try:
        if args.command == "status":
            return cli_commands.status(target, args.namespace, args.all_namespaces)
        if args.command == "plan":
            return cli_commands.plan(target, args.target, args.cluster_id, args.operator_namespace)
        return cli_commands.sync_now(target, args.target, args.timeout, args.request)
    except cli_commands.CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        cause = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) else exc
        print(
            f"error: the Kubernetes API server cannot be reached ({type(cause).__name__})",
            file=sys.stderr,
        )
        return cli_commands.EXIT_ERROR
    except KeyboardInterrupt:
        return 130


def kubectl_main() -> int:
    """`kubectl infisical-sync ...`: kubectl runs the kubectl-infisical_sync executable."""
    return main(prog="kubectl infisical-sync")


def main(argv: list[str] | None = None, prog: str = "infisical-sync") -> int:
    args = build_parser(prog).parse_args(argv)
    if args.command in ("status", "plan", "sync-now"):
        return _inspect(args)
    if args.command == "run":
        from infisical_sync.app import run_operator

        try:
            settings = Settings.from_env(
                namespaces=args.namespaces,
                all_namespaces=args.all_namespaces,
                log_format=args.log_format,
                log_level=args.log_level,
                metrics_port=args.metrics_port,
                health_port=args.health_port,
                concurrency_per_connection=args.concurrency_per_connection,
                peering=args.peering,
                leader_election=args.leader_election,
                lease_name=args.lease_name,
                lease_namespace=args.lease_namespace,
                lease_duration=args.lease_duration,
                lease_renew_deadline=args.lease_renew_deadline,
                lease_retry_period=args.lease_retry_period,
                cluster_id=args.cluster_id,
                allowed_instance_urls=args.allowed_instance_urls,
                shard=args.shard,
                cluster_connections=args.cluster_connections,
                operator_namespace=args.operator_namespace,
            )
        except ValidationError as exc:
            for error in exc.errors():
                where = ".".join(str(part) for part in error["loc"])
                print(f"infisical-sync: {where}: {error['msg']}", file=sys.stderr)
            return 2
        return run_operator(settings)
    if args.command in ("fake-infisical", "controlplane") and not _has_testing_extra():
        print(
            f"`{args.command}` is a development tool: install infisical-sync[testing] "
            "(the operator image does not ship it)",
            file=sys.stderr,
        )
        return 2
    if args.command == "fake-infisical":
        from infisical_sync.testing.seed import serve

        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(args.seed, args.host, args.port, args.tls, profile=args.profile))
        return 0
    if args.command == "controlplane":
        from infisical_sync.testing import controlplane

        if args.action == "up":
            state = controlplane.up()
            print(f"export KUBECONFIG={state['kubeconfig']}")
        else:
            stopped = controlplane.down()
            print("stopped" if stopped else "not running", file=sys.stderr)
        return 0
    return 2
