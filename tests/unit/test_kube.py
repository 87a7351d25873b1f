"""The Kubernetes adapter against local listeners: timeouts, and which failures mean
"unavailable"."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import logging
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from infisical_sync.fence import Fence
from infisical_sync.kube import EventPoster, Kube, KubeFenced, KubeTimeouts, KubeUnavailable
from infisical_sync.kube_http import api_server_proxy

TIMEOUTS = KubeTimeouts(connect=0.5, read=0.5)


KubeAt = Callable[[int], Kube]


@pytest.fixture
async def kube_at() -> AsyncIterator[KubeAt]:
    """Kube adapters for a local port, closed after the test."""
    made: list[Kube] = []

    def make(port: int) -> Kube:
        configuration = client.Configuration()
        configuration.host = f"http://127.0.0.1:{port}"
        configuration.retries = 0
        made.append(Kube(client.ApiClient(configuration), TIMEOUTS))
        return made[-1]

    yield make
    for kube in made:
        await kube.aclose()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """Accepts connections and reads requests, never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    yield listener.getsockname()[1]
    listener.close()


@contextlib.contextmanager
def answering(status: int) -> Iterator[int]:
    """Answers every request with `status`."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"kind": "Status", "message": "canary-body-text"}')

        do_PATCH = do_GET

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


async def test_a_call_that_gets_no_answer_fails_within_its_timeout(
    silent_port: int, kube_at: KubeAt
) -> None:
    kube = kube_at(silent_port)
    with pytest.raises(KubeUnavailable) as raised:
        await kube.read_secret("ns", "app")
    assert str(raised.value) == (
        "the Kubernetes API server did not answer within 0.5 s (reading Secret ns/app)"
    )
    with pytest.raises(KubeUnavailable, match=r"did not answer within 0\.5 s"):
        await kube.patch_status("secretsyncs", "ns", "sync", {"syncStatus": "Running"})


async def test_a_refused_connection_is_unavailable(kube_at: KubeAt) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Through the synchronous client and over aiohttp alike.
    with pytest.raises(KubeUnavailable, match="refused the connection"):
        await kube_at(port).list_secrets("ns", "a=b")
    with pytest.raises(
        KubeUnavailable,
        match=r"refused the connection \(or cannot be resolved\) \(reading Secret ns/app\)",
    ):
        await kube_at(port).read_secret("ns", "app")


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_server_errors_are_unavailable_without_the_body(status: int, kube_at: KubeAt) -> None:
    with answering(status) as port:
        with pytest.raises(KubeUnavailable, match=f"answered {status}") as raised:
            await kube_at(port).read_secret("ns", "app")
        assert "canary" not in str(raised.value)
        # The same through the synchronous client (the calls on worker threads).
        with pytest.raises(KubeUnavailable, match=f"answered {status}") as raised:
            await kube_at(port).list_secrets("ns", "a=b")
        assert "canary" not in str(raised.value)


async def test_real_answers_stay_answers(kube_at: KubeAt) -> None:
    with answering(404) as port:
        assert await kube_at(port).read_secret("ns", "gone") is None
        assert await kube_at(port).patch_status("secretsyncs", "ns", "gone", {}) is False
    with answering(403) as port:
        with pytest.raises(ApiException) as raised:
            await kube_at(port).read_secret("ns", "app")
        assert raised.value.status == 403 and not isinstance(raised.value, KubeUnavailable)


async def test_kubernetes_calls_run_many_at_once() -> None:
    """A burst of syncs makes many Kubernetes calls at once; the synchronous client runs them on
    the adapter's own workers, not asyncio's default pool of cores + 4 threads. Twenty calls
    that each wait for all the others complete only if twenty run together."""
    together = threading.Barrier(20, timeout=10)  # a deadlock guard, not a timing assertion
    kube = Kube(client.ApiClient(client.Configuration()), concurrency=32)
    try:
        results = await asyncio.gather(
            *(kube._call("test", together.wait) for _ in range(20)), return_exceptions=True
        )
    finally:
        await kube.aclose()
    assert not [r for r in results if isinstance(r, BaseException)]


class Recording:
    """A fake API server: answers every GET with an object carrying a finalizer, and records
    (and accepts) every other request, which must never arrive when fenced."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, str]] = []
        self.reads = 0


@contextlib.contextmanager
def recording() -> Iterator[tuple[int, Recording]]:
    seen = Recording()

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self, body: dict[str, object]) -> None:
            raw = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:
            seen.reads += 1
            self._answer(
                {"metadata": {"name": "app", "finalizers": ["a/b"], "resourceVersion": "7"}}
            )

        def _write(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.writes.append((self.command, self.path))
            self._answer({"metadata": {"name": "app", "resourceVersion": "8"}})

        do_PATCH = do_POST = do_PUT = _write

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()


LEDGER = {"metadata": {"name": "app-ledger", "namespace": "ns"}, "data": {}}
FENCED_WRITES: dict[str, Callable[[Kube], Awaitable[object]]] = {
    "ledger ConfigMap create": lambda kube: kube.write_configmap("ns", LEDGER, None),
    # Also how our finalizer goes on and off the ledger ConfigMap: a replace of the version read.
    "ledger ConfigMap replace": lambda kube: kube.write_configmap("ns", LEDGER, "7"),
    "finalizer removal": lambda kube: kube.remove_finalizers(
        "secretsyncs", "ns", "app", lambda found: found
    ),
}


@pytest.mark.parametrize("which", sorted(FENCED_WRITES))
async def test_ledger_and_finalizer_writes_are_fenced(which: str, kube_at: KubeAt) -> None:
    """README (High availability): every Kubernetes write of the operator is refused once the
    fence closed. The finalizer removal still reads the object (reads are not fenced); the
    PATCH it would send is refused."""
    with recording() as (port, seen):
        kube = kube_at(port)
        kube.fence = Fence(closed=True)
        with pytest.raises(KubeFenced, match="not the leader"):
            await FENCED_WRITES[which](kube)
        # The same call with the fence open is sent: the refusal was the fence's.
        kube.fence = Fence()
        await FENCED_WRITES[which](kube)
    assert len(seen.writes) == 1, seen.writes


async def test_events_are_fenced_quietly(caplog: pytest.LogCaptureFixture, kube_at: KubeAt) -> None:
    """An Event from a replica that lost the Lease would tell of a sync another replica now
    runs: not posted, and no WARNING for it (the stop is logged once, by the elector)."""
    body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"namespace": "ns", "name": "app"}}
    with recording() as (port, seen):
        kube = kube_at(port)
        kube.fence = Fence(closed=True)
        events = EventPoster(kube)
        events(body, "Normal", "Synced", "synced")
        await events.settle()
        assert seen.writes == []
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        kube.fence = Fence()
        events(body, "Normal", "Synced", "synced")
        await events.settle()
    assert [method for method, _ in seen.writes] == ["POST"]


async def test_the_calls_on_the_event_loop_send_what_the_client_would() -> None:
    """Reading a Secret, patching a status and posting an Event go over aiohttp: with the
    configuration's token, a merge patch of the status subresource, and the decoded data back.
    A 401 (an expired token) asks the configuration for its token anew (the kubernetes client
    refreshes an in-cluster token behind it) and sends the request once more."""
    seen: list[tuple[str, str, str | None, str | None, object]] = []
    secret = {"metadata": {"name": "app", "resourceVersion": "5"}, "data": {"A": "dmFsdWU="}}

    class Handler(http.server.BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            sent = json.loads(self.rfile.read(length)) if length else None
            token = self.headers.get("Authorization")
            seen.append((self.command, self.path, token, self.headers.get("Content-Type"), sent))
            status = 401 if token == "Bearer expired" else 201 if self.command == "POST" else 200
            raw = json.dumps(secret if self.command == "GET" else {}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_PATCH = do_POST = _record

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    tokens = iter(["expired", "fresh"])
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{server.server_address[1]}"
    configuration.api_key = {"authorization": "unset"}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    configuration.refresh_api_key_hook = lambda c: c.api_key.update(authorization=next(tokens))
    kube = Kube(client.ApiClient(configuration), TIMEOUTS)
    try:
        found = await kube.read_secret("ns", "app")
        assert await kube.patch_status("secretsyncs", "ns", "app", {"keys": 1}) is True
        events = EventPoster(kube)
        synced = {"kind": "SecretSync", "metadata": {"namespace": "ns", "name": "app"}}
        events(synced, "Normal", "Synced", "done")
        await events.settle()
    finally:
        await kube.aclose()
        server.shutdown()
        server.server_close()
    assert found is not None and found.data == {"A": b"value"} and found.resource_version == "5"
    refused, get, patch, post = seen
    assert refused[:3] == ("GET", "/api/v1/namespaces/ns/secrets/app", "Bearer expired")
    assert get[:3] == ("GET", "/api/v1/namespaces/ns/secrets/app", "Bearer fresh")
    assert patch == (
        "PATCH",
        "/apis/infisical-sync.dev/v1alpha1/namespaces/ns/secretsyncs/app/status",
        "Bearer fresh",
        "application/merge-patch+json",
        {"status": {"keys": 1}},
    )
    assert post[:4] == ("POST", "/api/v1/namespaces/ns/events", "Bearer fresh", "application/json")
    assert isinstance(post[4], dict) and post[4]["reason"] == "Synced"


def configured(**settings: object) -> client.Configuration:
    configuration = client.Configuration()
    for name, value in settings.items():
        setattr(configuration, name, value)
    return configuration


def test_the_api_server_proxy_is_picked_as_the_kubernetes_client_picks_it() -> None:
    server = "https://10.96.0.1:443"
    assert api_server_proxy(configured(host=server)) is None
    proxy = "http://proxy.internal:3128"
    assert api_server_proxy(configured(host=server, proxy=proxy)) == proxy
    assert api_server_proxy(configured(host=server, proxy=proxy, no_proxy="10.0.0.0/8")) is None
    assert api_server_proxy(configured(host=server, proxy=proxy, no_proxy="example.com")) == proxy
    with pytest.raises(ValueError, match="SOCKS proxy"):
        api_server_proxy(configured(host=server, proxy="socks5://bastion:1080"))


async def test_a_write_waiting_for_a_connection_asks_the_fence_once_it_has_one(
    silent_port: int,
) -> None:
    """With every connection busy a write waits; the fence is asked when it has one, right
    before it goes, not before the wait (a write let through before the Lease was lost could
    otherwise go out after another replica took over)."""
    configuration = configured(host=f"http://127.0.0.1:{silent_port}", retries=0)
    fence = Fence()
    kube = Kube(client.ApiClient(configuration), TIMEOUTS, concurrency=1, fence=fence)
    try:
        first = asyncio.create_task(kube.patch_status("secretsyncs", "ns", "a", {}))
        await until(lambda: fence.writes_under_way == 1)
        second = asyncio.create_task(kube.patch_status("secretsyncs", "ns", "b", {}))
        await asyncio.sleep(0.05)  # waiting for the one connection
        fence.close()
        with pytest.raises(KubeUnavailable, match="did not answer"):
            await first
        with pytest.raises(KubeFenced, match="not the leader"):
            await second
    finally:
        await kube.aclose()


async def test_a_write_under_way_still_counts_when_its_caller_is_cancelled(
    silent_port: int,
) -> None:
    """The leader stepping down waits for the writes under way: a cancelled cycle's status
    patch already on the wire is one of them until it has finished."""
    configuration = configured(host=f"http://127.0.0.1:{silent_port}", retries=0)
    fence = Fence()
    kube = Kube(client.ApiClient(configuration), TIMEOUTS, fence=fence)
    try:
        write = asyncio.create_task(kube.patch_status("secretsyncs", "ns", "a", {}))
        await until(lambda: fence.writes_under_way == 1)
        write.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await write
        assert fence.writes_under_way == 1
        await until(lambda: fence.writes_under_way == 0)  # its read timeout ended it
    finally:
        await kube.aclose()


async def test_calls_after_the_close_are_unavailable(kube_at: KubeAt) -> None:
    kube = kube_at(1)
    await kube.aclose()
    with pytest.raises(KubeUnavailable, match="no longer called: the operator is stopping"):
        await kube.read_secret("ns", "app")


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):  # a deadlock guard, not a timing
        if condition():
            return
        await asyncio.sleep(0.01)
    pytest.fail("the condition never held")
