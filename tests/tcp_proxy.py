"""A loopback TCP proxy in front of the API server that a test can make hang or refuse.

- ``hold()``: every open connection stops forwarding and new ones are accepted but never
  forwarded: requests go out and no answer ever comes (a hung API server or a black hole).
  Connections held once stay held for good, even after ``forward()``, like a lost TCP flow.
- ``refuse()``: the listener closes (connections are refused) and open ones are reset.
- ``forward()``: new connections are forwarded again.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from dataclasses import dataclass, field


@dataclass
class _Pipe:
    client: socket.socket
    upstream: socket.socket | None
    held: bool = False
    closed: bool = False

    def close(self, *, reset: bool = False) -> None:
        self.closed = True
        for sock in (self.client, self.upstream):
            if sock is None:
                continue
            with contextlib.suppress(OSError):
                if reset:  # RST instead of FIN, as a crashed server would look
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                # Wakes the pump blocked in recv(): close() alone would not, and the
                # connection would stay open for as long as that recv() holds the socket.
                sock.shutdown(socket.SHUT_RD)
            with contextlib.suppress(OSError):
                sock.close()


@dataclass
class TcpProxy:
    target_port: int
    port: int = 0
    mode: str = "forward"
    held_chunks: int = 0  # client data that reached a held connection: a request left hanging
    _listener: socket.socket | None = None
    _pipes: list[_Pipe] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> TcpProxy:
        self._listen()
        return self

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by refuse() or stop()
            with self._lock:
                if self.mode == "hold":
                    pipe = _Pipe(client, None, held=True)
                else:
                    try:
                        upstream = socket.create_connection(("127.0.0.1", self.target_port))
                    except OSError:
                        client.close()
                        continue
                    pipe = _Pipe(client, upstream)
                self._pipes.append(pipe)
            threading.Thread(target=self._pump, args=(pipe, True), daemon=True).start()
            if pipe.upstream is not None:
                threading.Thread(target=self._pump, args=(pipe, False), daemon=True).start()

    def _pump(self, pipe: _Pipe, from_client: bool) -> None:
        source = pipe.client if from_client else pipe.upstream
        sink = pipe.upstream if from_client else pipe.client
        assert source is not None
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if pipe.held:
                    if from_client:
                        with self._lock:
                            self.held_chunks += 1
                    continue  # swallowed: the other side waits forever
                assert sink is not None
                sink.sendall(data)
        except OSError:
            pass
        if not pipe.held:
            pipe.close()

    def _close_listener(self) -> None:
        if self._listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would leave the
            # socket listening, with connections piling up unanswered in its backlog.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None

    def hold(self) -> None:
        with self._lock:
            self.mode = "hold"
            for pipe in self._pipes:
                pipe.held = True

    def refuse(self) -> None:
        with self._lock:
            self.mode = "refuse"
            self._close_listener()
            for pipe in self._pipes:
                pipe.close(reset=True)
            self._pipes.clear()

    def forward(self) -> None:
        with self._lock:
            self.mode = "forward"
            if self._listener is None:
                self._listen()

    def stop(self) -> None:
        with self._lock:
            self._close_listener()
            for pipe in self._pipes:
                pipe.close()
            self._pipes.clear()
