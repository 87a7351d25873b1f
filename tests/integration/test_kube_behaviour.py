"""How the operator behaves towards Kubernetes: Events, stopping, timeouts, API server outages."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client
from tests.conftest import OperatorProcess, operator_process, wait_for
from tests.kube_helpers import (
    GROUP,
    VERSION,
    condition,
    create,
    delete,
    get,
    patch,
    put_secret,
    status,
)
from tests.own_plane import own_plane, scratch_namespace, seeded_fake
from tests.tcp_proxy import TcpProxy

from infisical_sync.testing.controlplane import (
    OPERATOR_USER,
    ControlPlane,
    api_client,
)
from infisical_sync.testing.fake_infisical import FakeInfisical

pytestmark = pytest.mark.controlplane
CONNECTIONS, SYNCS = "infisicalconnections", "secretsyncs"
CLIENT_ID = "55555555-5555-4555-8555-555555555555"
CLIENT_SECRET = "canary-kube-client-secret-1f3870be"
PROJECT = "p-kube"


@pytest.fixture
def fake() -> Iterator[FakeInfisical]:
    with seeded_fake("kube", PROJECT, CLIENT_ID, CLIENT_SECRET) as server:
        yield server


def connection_spec(fake: FakeInfisical, **overrides: Any) -> dict[str, Any]:
    return {
        "instanceUrl": fake.url,
        "allowInsecureHttp": True,
        "credentials": {"secretRef": {"name": "identity"}},
        "validationInterval": "1h",
        **overrides,
    }


def sync_spec(**overrides: Any) -> dict[str, Any]:
    return {
        "source": {"kubernetes": {"secrets": [{"name": "app"}]}},
        "destination": {
            "connectionRef": {"name": "dest"},
            "projectId": PROJECT,
            "environment": "prod",
            "secretPath": "/apps",
        },
        "syncInterval": "1h",
        **overrides,
    }


def ready_connection_and_sync(
    kube: Any, namespace: str, fake: FakeInfisical, connection: Any = None, **sync: Any
) -> None:
    put_secret(kube, namespace, "identity", {"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET})
    put_secret(kube, namespace, "app", {"A": "1"})
    spec = connection_spec(fake, **(connection or {}))
    create(kube, namespace, CONNECTIONS, "InfisicalConnection", "dest", spec)
    wait_for(
        lambda: condition(kube, namespace, CONNECTIONS, "dest", "Ready") == ("True", "Validated")
    )
    create(kube, namespace, SYNCS, "SecretSync", "sync", sync_spec(**sync))
    wait_for(lambda: status(kube, namespace, SYNCS, "sync").get("syncStatus") == "Succeeded")


def events_of(kube: Any, namespace: str, name: str) -> list[tuple[str, str]]:
    items = client.CoreV1Api(kube).list_namespaced_event(namespace).items
    return [(e.reason, e.message) for e in items if e.involved_object.name == name]


def handled(process: OperatorProcess, namespace: str, name: str, handler: str) -> bool:
    line = f"Handler '{handler}' succeeded."
    return any(r["message"] == line for r in about(process, namespace, name))


def test_only_the_operators_own_transition_events_are_posted(
    operator: OperatorProcess, kube: Any, namespace: str, fake: FakeInfisical
) -> None:
    ready_connection_and_sync(kube, namespace, fake, deletionPolicy="Delete")
    # An update and a deletion run kopf handlers (connection_spec_changed, secretsync_deleted).
    patch(kube, namespace, CONNECTIONS, "dest", {"spec": {"validationInterval": "2h"}})
    wait_for(
        lambda: handled(operator, namespace, "dest", "connection_spec_changed/spec"),
        message="the update handler ran",
    )
    delete(kube, namespace, SYNCS, "sync")
    wait_for(lambda: get(kube, namespace, SYNCS, "sync") is None)
    assert handled(operator, namespace, "sync", "secretsync_deleted")
    # Our own events are posted asynchronously: a later one proves the earlier ones are in.
    put_secret(kube, namespace, "identity", {"clientId": CLIENT_ID, "clientSecret": "wrong"})
    wait_for(lambda: any(r == "InvalidCredentials" for r, _ in events_of(kube, namespace, "dest")))
    connection_events = events_of(kube, namespace, "dest")
    sync_events = events_of(kube, namespace, "sync")
    assert sorted(reason for reason, _ in connection_events) == ["InvalidCredentials", "Ready"]
    assert [reason for reason, _ in sync_events] == ["Synced"]
    assert not [m for _, m in connection_events + sync_events if "Handler" in m]


# --- the operator's log ---------------------------------------------------------------------------


def records(process: OperatorProcess) -> list[dict[str, Any]]:
    found = []
    for line in process.log().splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


def about(process: OperatorProcess, namespace: str, name: str) -> list[dict[str, Any]]:
    """kopf's lines on the object and the operator's own lines naming it."""

    def matches(record: dict[str, Any]) -> bool:
        ref = record.get("object") or {}
        return (ref.get("namespace"), ref.get("name")) == (namespace, name) or (
            f"{namespace}/{name}" in record["message"]
        )

    return [record for record in records(process) if matches(record)]


STOPPING_BY_FORCE = ("is cancelled", "Will escalate", "exit by force", "did not exit in time")


def stopped_by_force(process: OperatorProcess, namespace: str, name: str) -> list[str]:
    return [
        r["message"]
        for r in about(process, namespace, name)
        if any(text in r["message"] for text in STOPPING_BY_FORCE)
    ]


# --- 14: daemons and SecretSyncs stop when asked --------------------------------------------------


def test_deleted_objects_stop_without_cancellation(
    operator: OperatorProcess, kube: Any, namespace: str, fake: FakeInfisical
) -> None:
    ready_connection_and_sync(kube, namespace, fake)
    delete(kube, namespace, SYNCS, "sync")
    wait_for(lambda: get(kube, namespace, SYNCS, "sync") is None)
    delete(kube, namespace, CONNECTIONS, "dest")
    wait_for(lambda: get(kube, namespace, CONNECTIONS, "dest") is None)
    messages = [r["message"] for r in about(operator, namespace, "dest")]
    assert any("has exited on request" in m for m in messages), messages
    # Gone at once: kopf did not have to wait for the daemon and come back later.
    assert not [m for m in messages if "signalled to exit gracefully" in m]
    # A SecretSync has no daemon (the scheduler's timetable): its deletion handler ran once.
    messages = [r["message"] for r in about(operator, namespace, "sync")]
    assert sum("Handler 'secretsync_deleted' succeeded" in m for m in messages) == 1, messages
    for name in ("sync", "dest"):
        assert stopped_by_force(operator, namespace, name) == []


# --- an operator of its own, on a control plane of its own ------------------------------------


@pytest.fixture(scope="module")
def plane(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    """Operators started here must not share objects with the session's operator."""
    with own_plane() as own:
        yield own


@pytest.fixture
def plane_kube(plane: ControlPlane) -> Any:
    return api_client(plane.kubeconfig)


@pytest.fixture
def plane_namespace(plane_kube: Any) -> Iterator[str]:
    with scratch_namespace(plane_kube) as name:
        yield name


@pytest.fixture
def proxy(plane: ControlPlane) -> Iterator[TcpProxy]:
    proxy = TcpProxy(plane.port).start()
    yield proxy
    proxy.stop()


KUBE_TIMEOUTS = {
    "INFISICAL_SYNC_KUBE_REQUEST_TIMEOUT": "3",
    "INFISICAL_SYNC_KUBE_CONNECT_TIMEOUT": "2",
}


@pytest.fixture
def proxied_operator(
    plane: ControlPlane, proxy: TcpProxy, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """The operator reaching the API server only through `proxy`."""
    config = yaml.safe_load(plane.kubeconfig_for_user(OPERATOR_USER).read_text())
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    with operator_process(kubeconfig, tmp_path / "operator.log", KUBE_TIMEOUTS) as process:
        yield process


def test_operator_shutdown_stops_without_cancellation(
    plane: ControlPlane, plane_kube: Any, plane_namespace: str, fake: FakeInfisical, tmp_path: Path
) -> None:
    kube, namespace = plane_kube, plane_namespace
    kubeconfig = plane.kubeconfig_for_user(OPERATOR_USER)
    with operator_process(kubeconfig, tmp_path / "operator.log") as process:
        ready_connection_and_sync(kube, namespace, fake)
        process.logged.process.terminate()
        process.logged.process.wait(timeout=30)
        log = process.log()
        assert "Activity 'cleanup' succeeded" in log
        stopped = [line for line in log.splitlines() if "stopped 1 SecretSyncs:" in line]
        assert len(stopped) == 1 and ", 0 cancelled" in stopped[0], stopped
        messages = [r["message"] for r in about(process, namespace, "dest")]
        assert any("has exited gracefully" in m for m in messages), messages
        for name in ("sync", "dest"):
            assert stopped_by_force(process, namespace, name) == []


def last_success(process: OperatorProcess, kind: str, namespace: str, name: str) -> float:
    """When the object's last successful cycle ended (its liveness metric); 0 before any."""
    labels = {"kind": kind, "namespace": namespace, "name": name}
    return process.metric("infisical_sync_last_success_timestamp_seconds", **labels) or 0.0


# --- 12: a hung API server call times out ---------------------------------------------------------


def test_a_hung_api_call_times_out_and_the_next_cycle_works(
    proxied_operator: OperatorProcess,
    proxy: TcpProxy,
    plane_kube: Any,
    plane_namespace: str,
    fake: FakeInfisical,
) -> None:
    kube, namespace = plane_kube, plane_namespace
    ready_connection_and_sync(kube, namespace, fake, syncInterval="10s")
    proxy.hold()
    # The next timer cycle's first call is sent and never answered.
    wait_for(lambda: proxy.held_chunks > 0, timeout=30, message="a request hangs")
    before = last_success(proxied_operator, "SecretSync", namespace, "sync")
    proxy.forward()  # new connections work again; the hung one stays hung
    wait_for(
        lambda: last_success(proxied_operator, "SecretSync", namespace, "sync") > before,
        timeout=60,
        message="a later cycle completes",
    )
    assert status(kube, namespace, SYNCS, "sync")["syncStatus"] == "Succeeded"
    warnings = [
        r["message"] for r in about(proxied_operator, namespace, "sync") if r["severity"] == "warn"
    ]
    assert any("did not answer within 3 s" in warning for warning in warnings), warnings


# --- 13: an API server outage -------------------------------------------------------------------


def failed_attempts(process: OperatorProcess, namespace: str, name: str) -> int:
    """The operator's own lines about a failed cycle of this object (whatever their level)."""
    return sum(
        1
        for r in about(process, namespace, name)
        if "object" not in r and ("unavailable" in r["message"] or "failed" in r["message"])
    )


def test_an_api_server_outage_logs_one_warning_per_object_and_the_recovery(
    proxied_operator: OperatorProcess,
    proxy: TcpProxy,
    plane_kube: Any,
    plane_namespace: str,
    fake: FakeInfisical,
) -> None:
    kube, namespace = plane_kube, plane_namespace
    ready_connection_and_sync(
        kube, namespace, fake, connection={"validationInterval": "30s"}, syncInterval="10s"
    )
    proxy.refuse()
    wait_for(
        lambda: min(failed_attempts(proxied_operator, namespace, n) for n in ("sync", "dest")) >= 2,
        timeout=90,
        message="two failed cycles of each object during the outage",
    )
    validated = last_success(proxied_operator, "InfisicalConnection", namespace, "dest")
    synced = last_success(proxied_operator, "SecretSync", namespace, "sync")
    proxy.forward()
    wait_for(
        lambda: (
            last_success(proxied_operator, "InfisicalConnection", namespace, "dest") > validated
            and last_success(proxied_operator, "SecretSync", namespace, "sync") > synced
        ),
        timeout=60,
        message="both recover",
    )
    for name in ("sync", "dest"):
        ours = [r for r in about(proxied_operator, namespace, name) if "object" not in r]
        levels = [r["severity"] for r in ours if r["severity"] != "debug"]
        assert [level for level in levels if level != "info"] == ["warn"], ours
        assert any("reachable again" in r["message"] for r in ours if r["severity"] == "info")
    # Nothing else complains: no tracebacks, no third-party retry notes. kopf's own watch
    # requests log their failed attempts ("Request attempt #2/9 failed; will retry: GET ...").
    assert [r["message"] for r in records(proxied_operator) if "exc_info" in r] == []
    loud = [
        r["message"]
        for r in records(proxied_operator)
        if r["severity"] not in ("debug", "info") and not r["message"].startswith("Request attempt")
    ]
    assert len(loud) == 2, loud


async def test_events_into_a_terminating_namespace_are_dropped_quietly(
    control_plane: ControlPlane, kube: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Deleting a namespace makes the API server refuse new Events there (403): while its
    objects are torn down that is expected, not an error (kopf's poster logged ERRORs)."""
    from infisical_sync.kube import EventPoster, Kube

    core = client.CoreV1Api(kube)
    name = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace({"metadata": {"name": name}})
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SecretSync",
        "metadata": {"name": "sync", "namespace": name, "uid": str(uuid.uuid4())},
    }
    poster = EventPoster(Kube(api_client(control_plane.kubeconfig)))
    poster(body, "Normal", "Synced", "before")
    await poster.settle()
    assert [e.reason for e in core.list_namespaced_event(name).items] == ["Synced"]
    core.delete_namespace(name)  # no namespace controller here: it stays Terminating
    caplog.set_level("DEBUG", logger="infisical_sync")
    poster(body, "Warning", "SyncFailed", "after")
    await poster.settle()
    assert [e.reason for e in core.list_namespaced_event(name).items] == ["Synced"]
    assert not [r for r in caplog.records if r.levelno >= 30], caplog.text
    assert "SyncFailed" in caplog.text  # said at DEBUG


# --- Secrets are watched by metadata only; the log says what happened, not every event ---------


class RecordingTransport(httpx.AsyncBaseTransport):
    """Passes requests on, keeps them and every byte of the answers (uncompressed)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.requests: list[httpx.Request] = []
        self.received = bytearray()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.headers["Accept-Encoding"] = "identity"
        self.requests.append(request)
        response = await self.inner.handle_async_request(request)
        received, raw = self.received, response.stream
        assert isinstance(raw, httpx.AsyncByteStream)

        class Recorded(httpx.AsyncByteStream):
            async def __aiter__(self) -> AsyncIterator[bytes]:
                async for chunk in raw:
                    received.extend(chunk)
                    yield chunk

            async def aclose(self) -> None:
                await raw.aclose()

        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=Recorded(),
            extensions=response.extensions,
        )


async def test_the_secret_watch_never_receives_secret_data(
    plane: ControlPlane, plane_kube: Any, plane_namespace: str
) -> None:
    """As the operator's user: the list and watch ask for PartialObjectMetadata, and no byte of
    a Secret's value (plain or base64) comes back, while its name and labels do."""
    from kubernetes import config

    from infisical_sync.secret_watch import (
        ACCEPT_LIST,
        ACCEPT_WATCH,
        SecretMeta,
        SecretWatch,
        WatchTimeouts,
        http_client_for,
        transport_for,
    )

    kube, namespace = plane_kube, plane_namespace
    canary = f"canary-watched-{uuid.uuid4().hex}"
    encoded = base64.b64encode(canary.encode()).decode()
    put_secret(kube, namespace, "before", {"VALUE": canary})
    configuration = client.Configuration()
    config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=str(plane.kubeconfig_for_user(OPERATOR_USER)),
        client_configuration=configuration,
    )
    timeouts = WatchTimeouts(server=5)
    recording = RecordingTransport(transport_for(configuration))
    http = http_client_for(configuration, timeouts, transport=recording)
    seen: list[tuple[str, SecretMeta]] = []
    watch = SecretWatch(http, lambda change, secret: seen.append((change, secret)), None, timeouts)
    task = asyncio.create_task(watch.run())
    try:
        await asyncio.wait_for(watch.listed.wait(), timeout=10)
        put_secret(kube, namespace, "after", {"VALUE": canary}, labels={"push": "true"})
        put_secret(kube, namespace, "before", {"VALUE": canary + "-edited"})

        async def names() -> list[tuple[str, str]]:
            while True:
                found = [(c, s.name) for c, s in seen if s.namespace == namespace]
                if len(found) >= 2:
                    return found
                await asyncio.sleep(0.1)

        assert await asyncio.wait_for(names(), timeout=10) == [
            ("ADDED", "after"),
            ("MODIFIED", "before"),
        ]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await http.aclose()
    assert [s.labels for _, s in seen if s.name == "after"] == [{"push": "true"}]
    lists = [r for r in recording.requests if "watch" not in r.url.params]
    watches = [r for r in recording.requests if "watch" in r.url.params]
    assert lists and {r.headers["accept"] for r in lists} == {ACCEPT_LIST}
    assert watches and {r.headers["accept"] for r in watches} == {ACCEPT_WATCH}
    received = bytes(recording.received)
    assert b'"name":"before"' in received and b'"name":"after"' in received
    assert canary.encode() not in received and encoded.encode() not in received
    assert b'"data"' not in received


def kopf_watches(process: OperatorProcess) -> list[str]:
    return [r["message"] for r in records(process) if "Starting the watch-stream" in r["message"]]


def test_the_operator_does_not_let_kopf_watch_secrets(
    plane: ControlPlane, plane_kube: Any, plane_namespace: str, fake: FakeInfisical, tmp_path: Path
) -> None:
    kube, namespace = plane_kube, plane_namespace
    for index in range(5):
        put_secret(kube, namespace, f"unrelated-{index}", {"VALUE": f"canary-{index}"})
    kubeconfig = plane.kubeconfig_for_user(OPERATOR_USER)
    with operator_process(kubeconfig, tmp_path / "operator.log") as process:
        # The connection reads its credentials Secret: the operator is past its start.
        ready_connection_and_sync(kube, namespace, fake)
        put_secret(kube, namespace, "app", {"A": "2"})
        wait_for(lambda: remote_value(fake) == "2", message="a Secret edit is noticed")
        started = kopf_watches(process)
        assert started and not [m for m in started if " secrets.v1 " in m], started
        messages = [r["message"] for r in records(process)]
        assert "watching Secrets in all namespaces (metadata only)" in messages
        assert not [
            r
            for index in range(5)
            for r in about(process, namespace, f"unrelated-{index}")
            if r["severity"] != "debug"
        ]


def remote_value(fake: FakeInfisical) -> str | None:
    return fake.state.get_secrets(PROJECT, "prod", "/apps").get("A")


QUIET_WHEN_SUCCEEDED = re.compile(r"^(Handler '\w+_event'|Indexer '\w+') succeeded\.$")


def test_events_handled_without_news_log_nothing_at_info(
    operator: OperatorProcess, kube: Any, namespace: str, fake: FakeInfisical
) -> None:
    """Per-event handlers and indexers succeeding is no news: DEBUG. Changes that make no
    sync write add no INFO line at all."""
    ready_connection_and_sync(kube, namespace, fake)
    for index in range(1, 4):
        create(kube, namespace, SYNCS, "SecretSync", f"sync-{index}", sync_spec())
    for index in range(1, 4):
        wait_for(
            lambda index=index: (
                status(kube, namespace, SYNCS, f"sync-{index}").get("syncStatus") == "Succeeded"
            )
        )
    mark = len(records(operator))
    names = ["sync"] + [f"sync-{index}" for index in range(1, 4)]
    for name in names:  # an event for each, that changes nothing to sync
        patch(kube, namespace, SYNCS, name, {"metadata": {"annotations": {"note": "idle"}}})
    put_secret(kube, namespace, "unrelated", {"B": "1"})

    def handled_since_mark() -> list[dict[str, Any]]:
        return [
            r
            for r in records(operator)[mark:]
            if r["message"] == "Handler 'secretsync_event' succeeded."
            and (r.get("object") or {}).get("namespace") == namespace
            and (r.get("object") or {}).get("name") in names
        ]

    wait_for(lambda: len(handled_since_mark()) >= len(names), message="the events were handled")
    noisy = [
        r["message"]
        for r in records(operator)[mark:]
        if r["severity"] == "info" and QUIET_WHEN_SUCCEEDED.match(r["message"])
    ]
    assert noisy == []
    news = [
        r["message"]
        for r in records(operator)[mark:]
        if r["severity"] != "debug" and namespace in json.dumps(r)
    ]
    assert news == [], news
