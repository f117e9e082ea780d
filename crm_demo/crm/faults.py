"""A real network fault for the drill: a TCP proxy on a loopback port in front of a server
(the database), forwarding bytes both ways until :meth:`FaultProxy.cut` closes every
connection and refuses new ones, as a crashed server or a broken network would, and
:meth:`FaultProxy.restore` lets traffic through again."""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any

#: Seconds to wait for the real server to accept a connection the proxy forwards.
CONNECT_TIMEOUT = 5.0


class FaultProxy:
    """Listens on ``127.0.0.1`` at an ephemeral port; use it as a context manager."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.down = False
        self.connections = 0  # accepted so far
        self.refused = 0  # accepted and closed at once while cut
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="drill-proxy", daemon=True)

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def cut(self) -> None:
        """Close every open connection; refuse new ones until :meth:`restore`."""
        with self._lock:
            self.down = True
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            _close(sock)

    def restore(self) -> None:
        with self._lock:
            self.down = False

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                down = self.down
                if down:
                    self.refused += 1
            if down:
                _close(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=CONNECT_TIMEOUT)
            except OSError:
                _close(client)
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets.update((client, server))
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._closed = True
        self._listener.close()
        self.cut()


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
