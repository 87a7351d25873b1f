"""The bridges between the machine's loopback and the node's namespace, here against this
process's own namespace: the egress proxy dials only inside its subnet, the forwarder pipes."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from infisical_sync.testing.netbridge import NetBridge

pytestmark = pytest.mark.node


def echo_server(host: str) -> tuple[socket.socket, list[int]]:
    """A loopback echo server; the list counts the connections it accepted."""
    server = socket.create_server((host, 0))
    accepted: list[int] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(1)
            with conn:
                while data := conn.recv(1024):
                    conn.sendall(b"echo:" + data)

    threading.Thread(target=serve, daemon=True).start()
    return server, accepted


@pytest.fixture
def echo_port() -> Iterator[int]:
    server, _ = echo_server("127.0.0.1")
    yield server.getsockname()[1]
    server.close()


@pytest.fixture
def forbidden() -> Iterator[tuple[int, list[int]]]:
    """A live listener outside the bridge's subnet (127.1.0.1 is still loopback)."""
    server, accepted = echo_server("127.1.0.1")
    yield server.getsockname()[1], accepted
    server.close()


@pytest.fixture
def bridge() -> Iterator[NetBridge]:
    if os.geteuid() != 0:
        pytest.skip("setns needs root")
    bridge = NetBridge(
        Path(f"/proc/{os.getpid()}/task/{threading.get_native_id()}/ns/net"), ["127.0.0.0/16"]
    )
    yield bridge
    bridge.close()


def connect_via(socket_path: Path, request: bytes) -> tuple[bytes, socket.socket]:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(10)
    client.connect(str(socket_path))
    client.sendall(request)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = client.recv(1)
        if not chunk:
            break
        head += chunk
    return head, client


def test_egress_proxy_connects_inside_its_subnet(
    bridge: NetBridge, echo_port: int, tmp_path: Path
) -> None:
    path = tmp_path / "egress.sock"
    bridge.serve_egress(path)
    head, client = connect_via(path, f"CONNECT 127.0.0.1:{echo_port} HTTP/1.1\r\n\r\n".encode())
    with client:
        assert head.startswith(b"HTTP/1.1 200"), head
        client.sendall(b"ping")
        assert client.recv(1024) == b"echo:ping"


@pytest.mark.parametrize(
    "request_line",
    [
        "CONNECT 127.1.0.1:{port} HTTP/1.1",  # a live listener, but outside the subnet
        "CONNECT [::1]:{port} HTTP/1.1",
        "GET http://127.1.0.1:{port}/ HTTP/1.1",  # only CONNECT
        "CONNECT nonsense HTTP/1.1",
    ],
)
def test_egress_proxy_refuses_everything_else(
    bridge: NetBridge, tmp_path: Path, forbidden: tuple[int, list[int]], request_line: str
) -> None:
    port, accepted = forbidden
    path = tmp_path / "egress.sock"
    bridge.serve_egress(path)
    head, client = connect_via(path, f"{request_line.format(port=port)}\r\n\r\n".encode())
    with client:
        assert head.startswith(b"HTTP/1.1 502"), head
        assert client.recv(1024) == b""  # and the connection is closed
    assert accepted == [], "the proxy dialed a target outside its subnets"


def test_forwarder_pipes_to_a_loopback_port(bridge: NetBridge, echo_port: int) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        listen_port = probe.getsockname()[1]
    bridge.forward("127.0.0.1", listen_port, echo_port)
    with socket.create_connection(("127.0.0.1", listen_port), timeout=10) as client:
        client.sendall(b"hello")
        assert client.recv(1024) == b"echo:hello"
