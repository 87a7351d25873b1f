"""The commands for people: `status`, `plan` and `sync-now` (also `kubectl infisical-sync ...`).

They run with the user's kubeconfig, not the operator's service account. `status` and `sync-now`
read and annotate objects with the synchronous client. `plan` runs the operator's own cycle as
a dry run (SyncEngine.preview): the same source reads, destination listing, ledger and planner
as a sync, so the plan is the one the next sync would make. Nothing it uses can write: the
Kubernetes adapter's fence is closed, and the Infisical one lets through only the login and
the revocation of the token it got.

Output names keys, never values. Exit codes: EXIT_OK, EXIT_FAILED (the sync failed, or would
stop before planning), EXIT_ERROR (bad arguments, object not found, access refused, API server
unreachable), EXIT_TIMEOUT (sync-now: the request was not handled in time).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from pydantic import SecretStr, ValidationError

from infisical_sync.cluster_access import ClusterAccess
from infisical_sync.connection import ConnectionReconciler, ConnectionState, plural_of
from infisical_sync.fence import Fence
from infisical_sync.infisical.client import ClientPool
from infisical_sync.infisical.transport import TransportOptions
from infisical_sync.instance_urls import AllowedInstances
from infisical_sync.kube import GROUP, VERSION, Kube, KubeUnavailable, SecretData, load_api_client
from infisical_sync.planner import NOT_MANAGED, Plan
from infisical_sync.references import sync_connections
from infisical_sync.resources import CLUSTER_SCOPE, SecretSyncSpec, describe_connection
from infisical_sync.sync import SYNC_REQUESTED_AT, SyncEngine, SyncFailed

EXIT_OK, EXIT_FAILED, EXIT_ERROR, EXIT_TIMEOUT = 0, 1, 2, 3
CONNECTIONS, SYNCS = "infisicalconnections", "secretsyncs"
CLUSTER_CONNECTIONS = "clusterinfisicalconnections"
MESSAGE_WIDTH = 100  # status: a message longer than this is cut (the object has it whole)
# Where the chart's README installs the operator: a ClusterInfisicalConnection's Secrets are there.
DEFAULT_OPERATOR_NAMESPACE = "infisical-sync"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class CommandError(Exception):
    """The command cannot do what was asked; the message says why, for the user."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


class AccessDenied(Exception):
    """The API server refused the user a read `plan` needs (403)."""


@dataclass(frozen=True)
class Cluster:
    """Where the command goes: the kubeconfig (None: in-cluster, else $KUBECONFIG or
    ~/.kube/config) and its context (None: the current one)."""

    kubeconfig: str | None = None
    context: str | None = None

    def api_client(self) -> client.ApiClient:
        try:
            return load_api_client(4, kubeconfig=self.kubeconfig, context=self.context)
        except (config.ConfigException, OSError) as exc:
            raise CommandError(f"no usable kubeconfig: {exc}") from None

    def current_namespace(self) -> str:
        """The context's namespace, like kubectl; in a pod without a kubeconfig, the pod's."""
        try:
            contexts, current = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
                config_file=self.kubeconfig
            )
        except (config.ConfigException, OSError):
            if SERVICE_ACCOUNT_NAMESPACE.exists():
                return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
            return "default"
        if self.context is not None:
            current = next((c for c in contexts if c.get("name") == self.context), current)
        return str((current or {}).get("context", {}).get("namespace") or "default")


def _refused(exc: ApiException, what: str) -> CommandError:
    """An API answer the user can act on, without the response body."""
    if exc.status == 403:
        return CommandError(f"forbidden: your user may not {what}")
    if exc.status == 404:
        return CommandError(f"not found: {what.split(' ', 1)[1]}")
    return CommandError(f"the Kubernetes API server answered {exc.status} {exc.reason} ({what})")


def parse_target(text: str, default_namespace: str) -> tuple[str, str]:
    """NS/NAME, or NAME in the default namespace."""
    namespace, _, name = text.rpartition("/")
    if not name or "/" in namespace:
        raise CommandError(f"expected NAMESPACE/NAME or NAME, got {text!r}")
    return namespace or default_namespace, name


# --- status ------------------------------------------------------------------------------------


def _condition(status: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for item in status.get("conditions") or []:
        if item.get("type") == type_:
            return dict(item)
    return None


def _short(message: str, width: int = MESSAGE_WIDTH) -> str:
    line = " ".join(message.split())
    return line if len(line) <= width else line[: width - 3] + "..."


def object_row(kind: str, body: Mapping[str, Any]) -> list[str]:
    """[NAMESPACE, NAME, READY, SYNCED, REASON, MESSAGE] of one object. The reason and message
    are Ready's (a SecretSync's Synced when it has no Ready yet)."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    ready = _condition(status, "Ready")
    synced = _condition(status, "Synced")
    shown = ready or synced
    if shown is None:
        reason, message = "Pending", "not handled by the operator yet"
    else:
        reason, message = str(shown.get("reason") or ""), str(shown.get("message") or "")
    generation, observed = meta.get("generation"), status.get("observedGeneration")
    if shown is not None and observed is not None and observed != generation:
        message = f"(of generation {observed}; the spec is at {generation}) {message}"
    return [
        str(meta.get("namespace", "")),
        f"{kind}/{meta.get('name', '')}",
        str(ready.get("status")) if ready else "-",
        "-" if kind != "secretsync" else (str(synced.get("status")) if synced else "-"),
        reason,
        _short(message),
    ]


def status_lines(
    connections: Iterable[Mapping[str, Any]],
    syncs: Iterable[Mapping[str, Any]],
    *,
    all_namespaces: bool,
    cluster_connections: Iterable[Mapping[str, Any]] = (),
) -> list[str]:
    """A table like `kubectl get`'s: cluster connections, connections, then SecretSyncs, each
    by namespace and name; the NAMESPACE column only with -A. Empty when there is nothing."""

    def ordered(items: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        return sorted(
            items, key=lambda b: ((b["metadata"].get("namespace") or ""), b["metadata"]["name"])
        )

    rows = [object_row("clusterinfisicalconnection", body) for body in ordered(cluster_connections)]
    rows += [object_row("infisicalconnection", body) for body in ordered(connections)]
    rows += [object_row("secretsync", body) for body in ordered(syncs)]
    if not rows:
        return []
    header = ["NAMESPACE", "NAME", "READY", "SYNCED", "REASON", "MESSAGE"]
    table = [header, *rows]
    if not all_namespaces:
        table = [row[1:] for row in table]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    return [
        "   ".join(
            [*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]]
        ).rstrip()
        for row in table
    ]


def list_objects(api: client.ApiClient, plural: str, namespace: str | None) -> list[Any]:
    custom = client.CustomObjectsApi(api)
    where = f"in namespace {namespace}" if namespace else "in all namespaces"
    found: Any
    try:
        if namespace is None:
            found = custom.list_cluster_custom_object(GROUP, VERSION, plural)
        else:
            found = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)
    except ApiException as exc:
        raise _refused(exc, f"list {plural} {where}") from None
    return list(found.get("items") or [])


def status(cluster: Cluster, namespace: str | None, all_namespaces: bool) -> int:
    api = cluster.api_client()
    scope = None if all_namespaces else (namespace or cluster.current_namespace())
    syncs = list_objects(api, SYNCS, scope)
    lines = status_lines(
        list_objects(api, CONNECTIONS, scope),
        syncs,
        all_namespaces=all_namespaces,
        cluster_connections=_cluster_connections_used(api, syncs, everything=scope is None),
    )
    if not lines:
        where = "any namespace" if scope is None else f"namespace {scope}"
        print(f"No InfisicalConnections or SecretSyncs found in {where}.")
    for line in lines:
        print(line)
    return EXIT_OK


def _cluster_connections_used(
    api: client.ApiClient, syncs: Iterable[Mapping[str, Any]], *, everything: bool
) -> list[Any]:
    """The ClusterInfisicalConnections the SecretSyncs shown use (all of them with -A); none
    when the user may not read them (a namespace's user often may not)."""
    used = {
        address[1]
        for body in syncs
        for address in sync_connections(
            body["metadata"].get("namespace", ""), "", body.get("spec") or {}
        )
        if address[0] == CLUSTER_SCOPE
    }
    if not used and not everything:
        return []
    try:
        found: Any = client.CustomObjectsApi(api).list_cluster_custom_object(
            GROUP, VERSION, CLUSTER_CONNECTIONS
        )
    except ApiException as exc:
        if exc.status in (403, 404):
            return []
        raise _refused(exc, f"list {CLUSTER_CONNECTIONS}") from None
    items = list(found.get("items") or [])
    return items if everything else [b for b in items if b["metadata"]["name"] in used]


# --- plan --------------------------------------------------------------------------------------


class _NoWrites(Fence):
    """Closed for good: a write is refused, saying why."""

    def __init__(self) -> None:
        super().__init__(closed=True)

    def refusal(self, what: str) -> str:
        return f"{what} not sent: `plan` writes nothing"


class _LoginOnly(Fence):
    """Lets through the login, a renewal and the revocation of the token they got; no other
    request but a GET is sent to Infisical."""

    ALLOWED = ("POST auth.login ", "POST auth.renew ", "POST auth.revoke ")

    def sending(self, what: str, refused: Callable[[str], Exception]) -> Any:
        if not what.startswith(self.ALLOWED):
            raise refused(f"{what} not sent: `plan` writes nothing")
        return super().sending(what, refused)


class _UserKube(Kube):
    """The operator's Kubernetes adapter with the user's credentials. A 403 here is the user's
    RBAC, not the operator's: it stops the command (AccessDenied) instead of becoming a sync
    outcome (an uncertain source, an unreadable ledger) the operator would not have."""

    async def read_secret(self, namespace: str, name: str) -> SecretData | None:
        try:
            return await super().read_secret(namespace, name)
        except ApiException as exc:
            raise _denied(exc, f"get Secret {namespace}/{name}") from None

    async def list_secrets(self, namespace: str, label_selector: str) -> list[SecretData]:
        try:
            return await super().list_secrets(namespace, label_selector)
        except ApiException as exc:
            raise _denied(exc, f"list Secrets in namespace {namespace}") from None

    async def read_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await super().read_configmap(namespace, name)
        except ApiException as exc:
            raise _denied(exc, f"get ConfigMap {namespace}/{name}") from None

    async def namespace_labels(self, name: str) -> dict[str, str] | None:
        try:
            return await super().namespace_labels(name)
        except ApiException as exc:
            raise _denied(exc, f"get namespace {name} (a cluster connection's selector)") from None

    async def request_service_account_token(
        self, namespace: str, name: str, audiences: tuple[str, ...], expiration_seconds: int
    ) -> SecretStr:
        try:
            return await super().request_service_account_token(
                namespace, name, audiences, expiration_seconds
            )
        except ApiException as exc:
            what = f"create a token for ServiceAccount {namespace}/{name} (kubernetes-auth)"
            raise _denied(exc, what) from None


def _denied(exc: ApiException, what: str) -> Exception:
    return AccessDenied(what) if exc.status == 403 else exc


@dataclass(frozen=True)
class PlanReport:
    namespace: str
    name: str
    body: Mapping[str, Any]
    plan: Plan


def _get(api: client.ApiClient, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
    """One of our objects (namespace "": a cluster-scoped one), None when there is none."""
    custom = client.CustomObjectsApi(api)
    try:
        found: Any = (
            custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
            if namespace
            else custom.get_cluster_custom_object(GROUP, VERSION, plural, name)
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        where = f"{namespace}/{name}" if namespace else name
        raise _refused(exc, f"get {plural} {where}") from None
    return dict(found)


def _cluster_id(api: client.ApiClient, given: str | None) -> str:
    """The identity the operator stamps on keys: --cluster-id (the operator's own flag), else
    the kube-system namespace's UID, as the operator takes it."""
    if given:
        return given
    try:
        found: Any = client.CoreV1Api(api).read_namespace("kube-system")
    except ApiException as exc:
        raise CommandError(
            "cannot read namespace kube-system, whose UID is the cluster's identity in key "
            f"ownership ({exc.status} {exc.reason}): pass --cluster-id (the operator's value)"
        ) from None
    return str(found.metadata.uid)


async def _connect(
    connections: ConnectionReconciler, namespace: str, name: str, body: Mapping[str, Any] | None
) -> None:
    """Make a connection usable as the operator has it: only one whose status says the operator
    validated its current spec (Ready, this generation) is logged in to, with the credentials
    read from its Secret; else it is as not Ready as status says (the sync says so)."""
    if body is None:
        return  # unknown: the cycle reports it not validated (or missing)
    status = body.get("status") or {}
    ready = _condition(status, "Ready") or {}
    validated = status.get("observedGeneration") == (body.get("metadata") or {}).get("generation")
    if ready.get("status") != "True" or not validated:
        reason = str(ready.get("reason") or "NotValidated")
        message = str(ready.get("message") or "the operator has not validated it yet")
        if ready and not validated:
            reason, message = "NotValidated", "the operator has not validated its current spec"
        connections.states[(namespace, name)] = ConnectionState(False, reason, message)
        return
    outcome = await connections.validate(namespace, name, body.get("spec") or {}, force_login=False)
    if not outcome.ready:
        # Ready for the operator but not from here (a cluster-internal URL, a firewall): this
        # machine's problem, not what the next sync would meet.
        raise CommandError(
            f"{describe_connection((namespace, name))} is Ready for the operator, but logging in "
            f"from this machine failed: {outcome.reason}: {outcome.message} (run plan where "
            "the instance is reachable, e.g. in a pod in the cluster)",
            EXIT_ERROR,
        )
    connections.states[(namespace, name)] = ConnectionState(True, outcome.reason, outcome.message)


async def _preview(
    api: client.ApiClient,
    namespace: str,
    name: str,
    body: Mapping[str, Any],
    connection_bodies: Mapping[tuple[str, str], Mapping[str, Any] | None],
    cluster_id: str,
    operator_namespace: str,
) -> Plan:
    kube = _UserKube(api, concurrency=4, fence=_NoWrites())
    pool = ClientPool(TransportOptions(fence=_LoginOnly()))
    connections = ConnectionReconciler(
        kube,
        pool,
        post_event=lambda *_: None,
        # Only connections whose status says the operator validated them are used: its own
        # allow-list was applied then.
        allowed_instances=AllowedInstances(),
        operator_namespace=operator_namespace,
    )
    access = ClusterAccess()  # what the operator's watches would tell of cluster connections
    engine = SyncEngine(
        kube, connections, post_event=lambda *_: None, cluster_id=cluster_id, access=access
    )
    try:
        for address, connection in connection_bodies.items():
            if address[0] == CLUSTER_SCOPE and connection is not None:
                access.connection_seen("ADDED", address[1], connection.get("spec") or {})
        with contextlib.suppress(ValidationError):  # an invalid spec: the preview says so
            # Before any login: a namespace a cluster connection refuses reads nothing.
            await engine.check_access(namespace, SecretSyncSpec.model_validate(body.get("spec")))
        for address, connection in connection_bodies.items():
            await _connect(connections, *address, connection)
        return await engine.preview(namespace, name, body)
    finally:
        await pool.aclose()  # revokes the token it got
        await kube.aclose()


def make_plan(
    cluster: Cluster,
    target: str,
    cluster_id: str | None,
    operator_namespace: str = DEFAULT_OPERATOR_NAMESPACE,
) -> PlanReport:
    api = cluster.api_client()
    namespace, name = parse_target(target, cluster.current_namespace())
    body = _get(api, SYNCS, namespace, name)
    if body is None:
        raise CommandError(f"not found: SecretSync {namespace}/{name}")
    addresses = sorted(sync_connections(namespace, name, body.get("spec") or {}))
    connection_bodies = {
        address: _get(api, plural_of(address[0]), *address) for address in addresses
    }
    identity = _cluster_id(api, cluster_id)
    try:
        found = asyncio.run(
            _preview(api, namespace, name, body, connection_bodies, identity, operator_namespace)
        )
    except AccessDenied as exc:
        raise CommandError(
            f"forbidden: your user may not {exc}; `plan` reads what a sync reads (the source "
            "Secrets, the connection's credentials Secret, the ledger ConfigMap) with your "
            "credentials: it needs get/list on secrets and get on configmaps in "
            f"namespace {namespace} (and create on serviceaccounts/token there to log in "
            "with a kubernetes-auth connection); through a ClusterInfisicalConnection, its "
            f"Secret or service account is in namespace {operator_namespace} instead, and it "
            "needs get on the SecretSync's namespace"
        ) from None
    except KubeUnavailable as exc:
        raise CommandError(str(exc)) from None
    except SyncFailed as failure:
        raise CommandError(
            f"SecretSync {namespace}/{name}: no plan, the next sync would stop before planning: "
            f"{failure.reason}: {failure.message}",
            EXIT_FAILED,
        ) from None
    return PlanReport(namespace, name, body, found)


def _names(keys: Iterable[str]) -> list[str]:
    return sorted(keys)


def plan_lines(report: PlanReport) -> list[str]:
    """The plan in words: key names, counts, reasons; never a value."""
    result, spec = report.plan, report.body.get("spec") or {}
    status = report.body.get("status") or {}
    destination = spec.get("destination") or {}
    ref = destination.get("connectionRef") or {}
    cluster = "cluster:" if ref.get("kind") == "ClusterInfisicalConnection" else ""
    where = "{}{}/{}/{}:{}".format(
        cluster,
        ref.get("name", ""),
        destination.get("projectId") or destination.get("projectSlug") or "",
        destination.get("environment", ""),
        destination.get("secretPath", "/"),
    )
    lines = [f"SecretSync {report.namespace}/{report.name} -> {where}"]
    if spec.get("dryRun"):
        lines.append("spec.dryRun is true: the operator only reports this plan (status.plan)")
    if result.import_to_source:
        lines.append(f"import into the source first ({len(result.import_to_source)}):")
        lines += [f"  < {key}" for key in _names(result.import_to_source)]
    for sign, keys in (("+", result.create), ("~", result.update), ("-", result.delete)):
        for key in _names(keys):
            note = ""
            if key in result.metadata_only:
                note = "  (ownership metadata only, the value is unchanged)"
            elif key in result.adopt:
                note = "  (adopted: not owned by anyone yet)"
            lines.append(f"  {sign} {key}{note}")
    lines.append(
        f"create {len(result.create)}, update {len(result.update)}, "
        f"delete {len(result.delete)}, unchanged {len(result.unchanged)}"
    )
    if not result.writes and not result.import_to_source:
        lines.append("nothing to write")
    if result.held_deletes:
        lines.append(f"deletes held ({len(result.held_deletes)}): {result.hold_reason}")
        lines += [f"  ! {key}" for key in _names(result.held_deletes)]
        shown_id = (status.get("heldDeletes") or {}).get("id")
        if shown_id and shown_id == result.held_id:
            lines.append(
                f"  to let them go: kubectl annotate secretsync -n {report.namespace} "
                f"{report.name} infisical-sync.dev/allow-mass-delete={shown_id}"
            )
        elif result.held_id:
            lines.append("  the operator shows the id that lets them go in status.heldDeletes")
    foreign = {k: v for k, v in result.conflicts.items() if v != NOT_MANAGED}
    unowned = [k for k, v in result.conflicts.items() if v == NOT_MANAGED]
    if unowned:
        lines.append(f"not written, not managed by this SecretSync ({len(unowned)}):")
        lines += [f"  ? {key}" for key in _names(unowned)]
    if foreign:
        lines.append(f"conflicts, not written ({len(foreign)}):")
        lines += [f"  ! {key}: {why}" for key, why in sorted(foreign.items())]
        if any("of another cluster" in why for why in foreign.values()):
            lines.append("  if the operator runs with --cluster-id, pass the same value to `plan`")
    if result.skipped:
        lines.append(f"skipped source keys ({len(result.skipped)}):")
        lines += [f"  x {key}: {why}" for key, why in sorted(result.skipped.items())]
    pending = status.get("pendingApproval") or {}
    if pending.get("ids") or pending.get("id"):
        ids = ", ".join(pending.get("ids") or [pending["id"]])
        lines.append(
            f"the last plan waits for Infisical change requests {ids}: writes they already "
            "carry are not sent again"
        )
    return lines


def plan(
    cluster: Cluster,
    target: str,
    cluster_id: str | None,
    operator_namespace: str = DEFAULT_OPERATOR_NAMESPACE,
) -> int:
    for line in plan_lines(make_plan(cluster, target, cluster_id, operator_namespace)):
        print(line)
    return EXIT_OK


# --- sync-now ----------------------------------------------------------------------------------


def request_value(now: dt.datetime | None = None) -> str:
    """A value the annotation never had: the time and a random suffix."""
    moment = now or dt.datetime.now(dt.UTC)
    return f"cli-{moment:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def outcome_lines(namespace: str, name: str, status: Mapping[str, Any]) -> tuple[bool, list[str]]:
    """Whether the handled sync succeeded (Synced True; a dry run counts), and what to print."""
    synced = _condition(status, "Synced") or {}
    ok = synced.get("status") == "True" or synced.get("reason") == "DryRun"
    lines = [
        f"SecretSync {namespace}/{name}: {status.get('syncStatus') or 'Unknown'} "
        f"({synced.get('reason') or 'no Synced condition'})",
        f"  {synced.get('message') or status.get('lastSyncMessage') or ''}".rstrip(),
    ]
    held = status.get("heldDeletes") or {}
    if held.get("id"):
        lines.append(f"  held deletes: infisical-sync.dev/allow-mass-delete={held['id']}")
    return ok, [line for line in lines if line.strip()]


def sync_now(
    cluster: Cluster,
    target: str,
    timeout: float,
    request: str | None = None,
    *,
    interval: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    api = cluster.api_client()
    namespace, name = parse_target(target, cluster.current_namespace())
    custom = client.CustomObjectsApi(api)
    value = request or request_value()
    if request is not None:
        current = _get(api, SYNCS, namespace, name)
        if current is None:
            raise CommandError(f"not found: secretsyncs {namespace}/{name}")
        if (current.get("status") or {}).get("lastHandledRequest") == request:
            # The same value again changes nothing: no sync would run, and the old outcome
            # would be printed as if it were new.
            raise CommandError(
                f"SecretSync {namespace}/{name}: request {request} was already handled; pass "
                "a new --request value (or none: a new one is made)",
                EXIT_ERROR,
            )
    patch = {"metadata": {"annotations": {SYNC_REQUESTED_AT: value}}}
    try:
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, SYNCS, name, patch)
    except ApiException as exc:
        raise _refused(exc, f"patch secretsyncs {namespace}/{name}") from None
    print(f"requested: {SYNC_REQUESTED_AT}={value}; waiting up to {timeout:g}s", flush=True)
    deadline = clock() + timeout
    while True:
        body = _get(api, SYNCS, namespace, name)
        if body is None:
            raise CommandError(f"SecretSync {namespace}/{name} was deleted", EXIT_FAILED)
        status = body.get("status") or {}
        if status.get("lastHandledRequest") == value:
            ok, lines = outcome_lines(namespace, name, status)
            for line in lines:
                print(line)
            return EXIT_OK if ok else EXIT_FAILED
        if clock() >= deadline:
            raise CommandError(
                f"SecretSync {namespace}/{name}: request {value} not handled within "
                f"{timeout:g}s (is the operator running and watching {namespace}?); the "
                "annotation stays: the operator handles it when it gets to it",
                EXIT_TIMEOUT,
            )
        time.sleep(interval)


def environment_cluster_id() -> str | None:
    return os.environ.get("INFISICAL_SYNC_CLUSTER_ID") or None
