"""The metadata-only Secret watch against a scripted API server (httpx MockTransport)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from infisical_sync.secret_watch import (
    ACCEPT_LIST,
    ACCEPT_WATCH,
    SecretMeta,
    SecretWatch,
    WatchTimeouts,
    differences,
)


def item(name: str, version: str, namespace: str = "ns", **labels: str) -> dict[str, Any]:
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "resourceVersion": version,
            "labels": labels,
        },
    }


def event(change: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": change, "object": obj}).encode() + b"\n"


GONE = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410}


@dataclass
class ScriptedServer:
    """Answers lists from `pages` (in order, the last one repeats) and watches from `streams`
    (in order: a list of lines, or an exception to raise); records every request."""

    pages: list[httpx.Response]
    streams: list[list[bytes | Exception] | Exception]  # an exception in a stream: it breaks
    requests: list[httpx.Request] = field(default_factory=list)
    exhausted: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.params.get("watch") != "true":
            return self.pages.pop(0) if len(self.pages) > 1 else self.pages[0]
        if not self.streams:
            self.exhausted.set()
            await asyncio.Event().wait()  # a quiet stream: until cancelled
        script = self.streams.pop(0)
        if isinstance(script, Exception):
            raise script

        async def lines() -> AsyncIterator[bytes]:
            for line in script:
                if isinstance(line, Exception):
                    raise line
                yield line

        return httpx.Response(200, content=lines())

    def watches(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.params.get("watch") == "true"]

    def lists(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.params.get("watch") != "true"]


def listing(*items: dict[str, Any], version: str = "100", cont: str = "") -> httpx.Response:
    metadata = {"resourceVersion": version, **({"continue": cont} if cont else {})}
    return httpx.Response(
        200, json={"kind": "PartialObjectMetadataList", "metadata": metadata, "items": list(items)}
    )


async def no_sleep(_: float) -> None:
    await asyncio.sleep(0)


async def run_until_quiet(
    server: ScriptedServer,
    namespace: str | None = "ns",
    sleep: Callable[[float], Awaitable[None]] = no_sleep,
) -> list[tuple[str, SecretMeta]]:
    """Run a watch until the server has nothing more to say; the events it delivered."""
    seen: list[tuple[str, SecretMeta]] = []
    http = httpx.AsyncClient(transport=httpx.MockTransport(server), base_url="https://api")
    watch = SecretWatch(
        http,
        lambda change, secret: seen.append((change, secret)),
        namespace,
        WatchTimeouts(server=5),
        page_size=2,
        sleep=sleep,
    )
    task = asyncio.create_task(watch.run())
    await asyncio.wait_for(server.exhausted.wait(), timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await http.aclose()
    return seen


def changes(seen: list[tuple[str, SecretMeta]]) -> list[tuple[str, str]]:
    return [(change, secret.name) for change, secret in seen]


async def test_lists_and_watches_metadata_only_and_the_first_list_announces_nothing() -> None:
    server = ScriptedServer(
        pages=[listing(item("a", "1"), item("b", "2"), version="10")],
        streams=[
            [event("MODIFIED", item("a", "11", push="true")), event("DELETED", item("b", "12"))]
        ],
    )
    seen = await run_until_quiet(server)
    assert changes(seen) == [("MODIFIED", "a"), ("DELETED", "b")]
    assert seen[0][1] == SecretMeta("ns", "a", {"push": "true"}, "11")
    assert [r.headers["accept"] for r in server.lists()] == [ACCEPT_LIST]
    assert {r.headers["accept"] for r in server.watches()} == {ACCEPT_WATCH}
    first = server.watches()[0]
    assert first.url.path == "/api/v1/namespaces/ns/secrets"
    assert first.url.params["resourceVersion"] == "10"
    assert first.url.params["allowWatchBookmarks"] == "true"
    # The stream ended: the next watch resumes after the last event, without a list.
    assert server.watches()[1].url.params["resourceVersion"] == "12"


async def test_all_namespaces_and_pages() -> None:
    server = ScriptedServer(
        pages=[
            listing(item("a", "1"), item("b", "2", namespace="other"), cont="next"),
            listing(item("c", "3"), version="20"),
        ],
        streams=[[event("ADDED", item("d", "21"))]],
    )
    seen = await run_until_quiet(server, namespace=None)
    assert changes(seen) == [("ADDED", "d")]
    lists = server.lists()
    assert [r.url.path for r in lists] == ["/api/v1/secrets", "/api/v1/secrets"]
    assert lists[1].url.params["continue"] == "next"
    assert server.watches()[0].url.params["resourceVersion"] == "20"


async def test_bookmarks_move_the_resume_point_and_deliver_nothing() -> None:
    server = ScriptedServer(
        pages=[listing(version="10")],
        streams=[[event("BOOKMARK", item("", "50"))]],
    )
    seen = await run_until_quiet(server)
    assert seen == []
    assert server.watches()[1].url.params["resourceVersion"] == "50"


async def test_gone_lists_again_and_announces_what_was_missed() -> None:
    server = ScriptedServer(
        pages=[
            listing(item("same", "1"), item("edited", "2"), item("removed", "3"), version="10"),
            listing(item("same", "1"), item("edited", "7"), item("new", "8"), version="30"),
        ],
        streams=[[event("ERROR", GONE)]],
    )
    seen = await run_until_quiet(server)
    assert sorted(changes(seen)) == [
        ("ADDED", "new"),
        ("DELETED", "removed"),
        ("MODIFIED", "edited"),
    ]
    assert len(server.lists()) == 2
    assert server.watches()[-1].url.params["resourceVersion"] == "30"


async def test_a_410_answer_to_the_watch_request_lists_again() -> None:
    server = ScriptedServer(pages=[listing(version="10")], streams=[])
    answered: list[int] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("watch") == "true" and not answered:
            answered.append(410)
            server.requests.append(request)
            return httpx.Response(410, json=GONE)
        return await server(request)

    seen: list[tuple[str, SecretMeta]] = []
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="https://api")
    watch = SecretWatch(http, lambda c, s: seen.append((c, s)), "ns", sleep=no_sleep)
    task = asyncio.create_task(watch.run())
    await asyncio.wait_for(server.exhausted.wait(), timeout=5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert len(server.lists()) == 2


async def test_a_broken_connection_resumes_from_the_last_version_without_a_list() -> None:
    server = ScriptedServer(
        pages=[listing(version="10")],
        streams=[
            [event("ADDED", item("a", "11"))],
            httpx.ConnectError("refused"),
            httpx.ReadTimeout("silent"),
            [event("MODIFIED", item("a", "12"))],
        ],
    )
    seen = await run_until_quiet(server)
    assert changes(seen) == [("ADDED", "a"), ("MODIFIED", "a")]
    assert len(server.lists()) == 1
    assert [r.url.params["resourceVersion"] for r in server.watches()] == [
        "10",
        "11",
        "11",
        "11",
        "12",
    ]


async def test_a_stream_that_breaks_midway_resumes_after_what_it_delivered() -> None:
    server = ScriptedServer(
        pages=[listing(version="10")],
        streams=[
            [event("ADDED", item("a", "11")), httpx.ReadError("reset")],
            [event("MODIFIED", item("a", "12"))],
        ],
    )
    seen = await run_until_quiet(server)
    assert changes(seen) == [("ADDED", "a"), ("MODIFIED", "a")]  # nothing delivered twice
    assert [r.url.params["resourceVersion"] for r in server.watches()] == ["10", "11", "12"]


async def test_a_failing_list_is_retried(caplog: pytest.LogCaptureFixture) -> None:
    server = ScriptedServer(
        pages=[httpx.Response(503), httpx.Response(403), listing(version="10")],
        streams=[],
    )
    await run_until_quiet(server)
    assert len(server.lists()) == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["cannot watch Secrets in ns: the API server answered 403"]


async def test_a_first_list_after_failures_announces_every_secret() -> None:
    """Changes made while the first list kept failing were never seen: all count as changed."""
    server = ScriptedServer(
        pages=[httpx.Response(503), listing(item("a", "5"), item("b", "6"), version="10")],
        streams=[],
    )
    seen = await run_until_quiet(server)
    assert changes(seen) == [("MODIFIED", "a"), ("MODIFIED", "b")]


async def test_streams_cut_at_once_are_reopened_with_a_back_off() -> None:
    """A proxy that closes every watch at once must not turn the watch into a tight loop."""
    waits: list[float] = []

    async def recorded(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(0)

    server = ScriptedServer(
        pages=[listing(version="10")],
        streams=[[], [], [event("ADDED", item("a", "11"))]],
    )
    seen = await run_until_quiet(server, sleep=recorded)
    assert waits == [0.5, 1.0]
    assert changes(seen) == [("ADDED", "a")]


async def test_a_failing_reader_does_not_stop_the_watch() -> None:
    server = ScriptedServer(
        pages=[listing(version="10")],
        streams=[[event("ADDED", item("a", "11")), event("ADDED", item("b", "12"))]],
    )
    delivered: list[str] = []

    def reader(change: str, secret: SecretMeta) -> None:
        delivered.append(secret.name)
        if secret.name == "a":
            raise RuntimeError("bug")

    http = httpx.AsyncClient(transport=httpx.MockTransport(server), base_url="https://api")
    task = asyncio.create_task(SecretWatch(http, reader, "ns", sleep=no_sleep).run())
    await asyncio.wait_for(server.exhausted.wait(), timeout=5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert delivered == ["a", "b"]


def test_differences() -> None:
    known = {("ns", "a"): "1", ("ns", "b"): "2"}
    listed = [SecretMeta("ns", "a", {}, "1"), SecretMeta("ns", "c", {}, "3")]
    found = [(c, s.name) for c, s in differences(known, listed)]
    assert found == [("ADDED", "c"), ("DELETED", "b")]


# --- TLS as the kubeconfig says -------------------------------------------------------------------


@pytest.fixture
async def mtls_server(tmp_path: Any) -> AsyncIterator[tuple[str, Any]]:
    """An HTTPS server on loopback that requires a client certificate from its CA and presents
    a certificate for the name `kube.test` only (not for 127.0.0.1)."""
    import ssl

    from aiohttp import web

    from infisical_sync.testing.certs import CertificateAuthority

    authority = CertificateAuthority()
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(authority.cert_pem)
    server_cert, server_key = authority.issue_server(["kube.test"]).write(tmp_path, "server")
    client_cert, client_key = authority.issue_client("operator").write(tmp_path, "client")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca_file))
    context.load_cert_chain(server_cert, server_key)
    context.verify_mode = ssl.CERT_REQUIRED

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"kind": "Status", "status": "Success"})

    app = web.Application()
    app.router.add_get("/version", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    files = {"ca": str(ca_file), "cert": str(client_cert), "key": str(client_key)}
    try:
        yield f"https://127.0.0.1:{port}", files
    finally:
        await runner.cleanup()


def _configuration(host: str, **settings: Any) -> Any:
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = host
    for name, value in settings.items():
        setattr(configuration, name, value)
    return configuration


async def _status(configuration: Any) -> int:
    from infisical_sync.secret_watch import http_client_for

    async with http_client_for(configuration, WatchTimeouts(request=5, connect=5)) as http:
        return (await http.get("/version")).status_code


async def test_client_certificate_is_sent_with_insecure_skip_tls_verify(
    mtls_server: tuple[str, Any],
) -> None:
    host, files = mtls_server
    configuration = _configuration(
        host, verify_ssl=False, cert_file=files["cert"], key_file=files["key"]
    )
    assert await _status(configuration) == 200


async def test_tls_server_name_is_the_name_checked(mtls_server: tuple[str, Any]) -> None:
    host, files = mtls_server
    checked = _configuration(
        host,
        ssl_ca_cert=files["ca"],
        cert_file=files["cert"],
        key_file=files["key"],
        tls_server_name="kube.test",
    )
    assert await _status(checked) == 200
    # Without it the certificate does not name 127.0.0.1: refused, as the kubernetes client would.
    unnamed = _configuration(
        host, ssl_ca_cert=files["ca"], cert_file=files["cert"], key_file=files["key"]
    )
    with pytest.raises(httpx.ConnectError):
        await _status(unnamed)


def watch_of(server: ScriptedServer, sleep: Callable[[float], Awaitable[None]]) -> SecretWatch:
    http = httpx.AsyncClient(transport=httpx.MockTransport(server), base_url="https://api")
    return SecretWatch(
        http, lambda change, secret: None, "ns", WatchTimeouts(server=5), sleep=sleep
    )


async def stopped(task: asyncio.Task[None], watch: SecretWatch) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await watch.http.aclose()


async def test_an_open_stream_vouches_for_the_versions_it_delivered() -> None:
    server = ScriptedServer(
        pages=[listing(item("a", "1"), item("b", "2"), version="10")],
        streams=[[event("MODIFIED", item("a", "11")), event("DELETED", item("b", "12"))]],
    )
    watch = watch_of(server, no_sleep)
    assert watch.version("ns", "a") is None  # not listed yet
    task = asyncio.create_task(watch.run())
    await asyncio.wait_for(server.exhausted.wait(), timeout=5)  # the next stream is open
    assert watch.version("ns", "a") == "11"
    assert watch.version("ns", "b") is None  # deleted: nothing to vouch for
    assert watch.version("ns", "unknown") is None
    await stopped(task, watch)


async def test_a_failing_watch_vouches_for_nothing_until_a_stream_is_open_again() -> None:
    backing_off, resume = asyncio.Event(), asyncio.Event()

    async def sleep(_: float) -> None:
        backing_off.set()
        await resume.wait()

    server = ScriptedServer(
        pages=[listing(item("a", "1"), version="10")],
        streams=[
            [event("MODIFIED", item("a", "11"))],
            httpx.ConnectError("down"),
            [event("BOOKMARK", item("", "40"))],  # open again
        ],
    )
    watch = watch_of(server, sleep)
    task = asyncio.create_task(watch.run())
    await asyncio.wait_for(backing_off.wait(), timeout=5)
    # Changes made now would not be announced until it reconnects: versions are not current.
    assert watch.version("ns", "a") is None
    resume.set()
    await asyncio.wait_for(server.exhausted.wait(), timeout=5)
    assert watch.version("ns", "a") == "11"
    await stopped(task, watch)


async def test_an_expired_history_vouches_for_nothing_until_listed_again() -> None:
    relisting, answer = asyncio.Event(), asyncio.Event()
    pages = [listing(item("a", "1"), version="10"), listing(item("a", "30"), version="30")]

    async def scripted(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("watch") != "true" and len(server.lists()) == 1:
            relisting.set()
            await answer.wait()
        return await server(request)

    server = ScriptedServer(
        pages=pages, streams=[[event("ERROR", GONE)], [event("BOOKMARK", item("", "40"))]]
    )
    http = httpx.AsyncClient(transport=httpx.MockTransport(scripted), base_url="https://api")
    watch = SecretWatch(http, lambda change, secret: None, "ns", WatchTimeouts(server=5))
    task = asyncio.create_task(watch.run())
    await asyncio.wait_for(relisting.wait(), timeout=5)
    assert watch.version("ns", "a") is None  # the list that follows the 410 is not in yet
    answer.set()
    await asyncio.wait_for(server.exhausted.wait(), timeout=5)
    assert watch.version("ns", "a") == "30"
    await stopped(task, watch)
