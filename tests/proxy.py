"""A TCP proxy for tests: forwards to a real server, counts what passes, and can cut or stall
every connection, so an outage in a test is a real network fault."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any

#: django-redis's connect and read timeouts on the ``redis_proxy`` fixture's alias, in seconds.
PROXY_SOCKET_TIMEOUT = 0.25


class Proxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.bytes_up = 0  # client -> server
        self.upstream = bytearray()  # everything clients sent, for tests that read it
        self.connections = 0
        self.stalled = False
        #: Replies on connections numbered up to this wait in the proxy, and arrive late, all
        #: at once, when it goes back to 0 (see hold_replies).
        self.held_up_to = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def url(self, scheme: str = "redis", path: str = "/1") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def cut(self) -> None:
        """Close every open connection, as a dying server or network would."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._sockets.append(client)
            if self.stalled:
                continue  # accepted, never answered
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.append(server)
            number = self.connections
            threading.Thread(target=self._pump, args=(client, server, True, number),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False, number),
                             daemon=True).start()

    def hold_replies(self, held: bool = True) -> None:
        """Hold the replies of every connection open now (commands still reach the server);
        connections opened later are not held. ``hold_replies(False)`` lets them through."""
        self.held_up_to = self.connections if held else 0

    def _pump(self, source: socket.socket, sink: socket.socket, upstream: bool,
              number: int = 0) -> None:
        try:
            while True:
                if self.stalled:
                    return
                data = source.recv(65536)
                if not data:
                    break
                if upstream:
                    with self._lock:
                        self.bytes_up += len(data)
                        self.upstream += data
                while not upstream and number <= self.held_up_to and not self._closed:
                    time.sleep(0.005)
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def __enter__(self) -> Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._closed = True
        self._listener.close()
        self.cut()
