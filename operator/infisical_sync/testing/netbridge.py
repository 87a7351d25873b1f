"""TCP bridges between the machine's loopback and the test node's network namespace.

The test node lives in a network namespace of its own: no address outside loopback is ever added
to the machine's namespace and no packet leaves it. Two kinds of bridge connect the two sides,
both plain byte pipes in this process, whose sockets are created in whichever namespace they
belong to (a socket stays in the namespace of the thread that created it):

- ``forward``: a listener on an address inside the namespace that pipes to a loopback port of
  the machine (pods and the kubelet reach the API server and the fake Infisical this way);
- ``serve_egress``: an HTTP CONNECT proxy on a Unix socket that the API server uses as its
  ``cluster`` egress (``kubectl logs``, exec, port-forward reach the kubelet this way). It only
  connects to addresses inside the namespace.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import ipaddress
import os
import socket
import threading
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

CLONE_NEWNET = 0x40000000
_T = TypeVar("_T")


class NetnsError(RuntimeError):
    pass


def _setns(fd: int) -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise NetnsError(f"setns failed: {os.strerror(errno)}")


class NetnsExecutor:
    """One worker thread that lives in the namespace: sockets made there belong to it."""

    def __init__(self, netns_path: Path) -> None:
        self._fd = os.open(netns_path, os.O_RDONLY)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="netns", initializer=_setns, initargs=(self._fd,)
        )

    def call(self, fn: Callable[..., _T], *args: Any) -> concurrent.futures.Future[_T]:
        return self._pool.submit(fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with contextlib.suppress(OSError):
            os.close(self._fd)


def _listening_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _stream_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    return sock


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()


async def _splice(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    b: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    """Pipe both ways until both directions end; an error in one closes both sockets."""
    directions = [
        asyncio.ensure_future(_pipe(a[0], b[1])),
        asyncio.ensure_future(_pipe(b[0], a[1])),
    ]
    try:
        await asyncio.gather(*directions)
    finally:
        for direction in directions:
            direction.cancel()
        for writer in (a[1], b[1]):
            writer.close()


class NetBridge:
    """An event loop in a background thread that runs every bridge for one namespace."""

    def __init__(self, netns_path: Path, subnets: Sequence[str]) -> None:
        self._netns = NetnsExecutor(netns_path)
        self._subnets = [ipaddress.ip_network(subnet) for subnet in subnets]
        self._loop = asyncio.new_event_loop()
        self._servers: list[asyncio.AbstractServer] = []
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="netbridge", daemon=True
        )
        self._thread.start()

    def _run(self, coro: Coroutine[Any, Any, _T], timeout: float = 10) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def forward(self, listen_host: str, listen_port: int, target_port: int) -> None:
        """Listen on listen_host:listen_port inside the namespace, pipe to 127.0.0.1:target_port."""
        sock = self._netns.call(_listening_socket, listen_host, listen_port).result(10)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                upstream = await asyncio.open_connection("127.0.0.1", target_port)
            except OSError:
                writer.close()
                return
            await _splice((reader, writer), upstream)

        async def start() -> None:
            self._servers.append(await asyncio.start_server(handle, sock=sock))

        try:
            self._run(start())
        except BaseException:
            sock.close()  # an open socket would keep the namespace alive
            raise

    def serve_egress(self, socket_path: Path) -> None:
        """An HTTP CONNECT proxy on a Unix socket, dialing only inside the bridge's subnets."""

        async def start() -> None:
            self._servers.append(await asyncio.start_unix_server(self._connect, str(socket_path)))

        self._run(start())

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        sock: socket.socket | None = None
        try:
            address, port = await self._connect_target(reader)
            sock = await asyncio.wrap_future(self._netns.call(_stream_socket))
            await asyncio.wait_for(self._loop.sock_connect(sock, (str(address), port)), timeout=10)
            upstream = await asyncio.open_connection(sock=sock)
            sock = None  # owned by the stream now
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            with contextlib.suppress(Exception):
                writer.write(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
                await writer.drain()
        finally:
            if sock is not None:
                sock.close()
            if upstream is None:
                writer.close()
        if upstream is not None:
            await _splice((reader, writer), upstream)

    async def _connect_target(
        self, reader: asyncio.StreamReader
    ) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
        """The address of `CONNECT host:port HTTP/1.1`, if it is inside one of our subnets."""
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        method, authority, _ = head.split(b"\r\n", 1)[0].decode("ascii").split(" ", 2)
        host, _, port = authority.rpartition(":")
        address = ipaddress.ip_address(host.strip("[]"))
        if method != "CONNECT" or not any(address in subnet for subnet in self._subnets):
            raise ValueError(f"refused {method} {authority}")
        return address, int(port)

    def close(self) -> None:
        async def stop() -> None:
            for server in self._servers:
                server.close()
            # Open pipes are cancelled until none is left (a cancelled pipe closes its sockets).
            for _ in range(5):
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                if not tasks:
                    return
                for task in tasks:
                    task.cancel()
                await asyncio.wait(tasks, timeout=2)

        with contextlib.suppress(Exception):
            self._run(stop(), timeout=20)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        self._netns.close()
