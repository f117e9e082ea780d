"""Real network faults: a TCP proxy on a loopback port in front of a server (the database,
Redis), forwarding bytes both ways until told to fail as a real outage would.

- :meth:`FaultProxy.cut` closes every connection and refuses new ones (a crashed server, a
  broken network) until :meth:`FaultProxy.restore`;
- :meth:`FaultProxy.drop` closes every connection but lets new ones through (a restart);
- ``stalled = True`` stops forwarding and leaves new connections unanswered (a server
  that hangs: the worst kind, since only timeouts notice it);
- ``delay = seconds`` holds each reply that long before passing it on (a slow server or a
  congested link), until set back to 0.

The drill (``resilience_drill``) uses it to cut the demo's database; the test suite uses it
for Redis and PostgreSQL outages.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any

#: Seconds to wait for the real server to accept a connection the proxy forwards.
CONNECT_TIMEOUT = 5.0


class FaultProxy:
    """Listens on ``127.0.0.1`` at an ephemeral port; use it as a context manager."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.down = False
        self.stalled = False
        self.delay = 0.0  # seconds each reply waits before it is forwarded
        self.connections = 0  # accepted so far
        self.refused = 0  # accepted and closed at once while cut
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="fault-proxy", daemon=True)

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def cut(self) -> None:
        """Close every open connection; refuse new ones until :meth:`restore`."""
        with self._lock:
            self.down = True
        self.drop()

    def drop(self) -> None:
        """Close every open connection; new ones go through (unless cut or stalled)."""
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            _close(sock)

    def restore(self) -> None:
        """Let traffic through again, at full speed, after :meth:`cut`, a stall or a delay."""
        with self._lock:
            self.down = self.stalled = False
            self.delay = 0.0

    def relay(self, data: bytes, upstream: bool, number: int) -> None:
        """Called with each chunk before it is forwarded (``upstream``: client to server) on
        connection ``number`` (1 for the first accepted); subclasses watch or delay here."""

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                number, down = self.connections, self.down
                if down:
                    self.refused += 1
                else:
                    self._sockets.add(client)
            if down:
                _close(client)
                continue
            if self.stalled:
                continue  # accepted, never answered
            try:
                server = socket.create_connection(self.target, timeout=CONNECT_TIMEOUT)
            except OSError:
                _close(client)
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets.add(server)
            for source, sink, upstream in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pump, args=(source, sink, upstream, number),
                                 daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, upstream: bool,
              number: int) -> None:
        try:
            while data := source.recv(65536):
                if self.stalled:
                    return  # silent from now on, the connection left open
                self.relay(data, upstream, number)
                if self.delay and not upstream:
                    time.sleep(self.delay)  # the fault itself: a slow reply
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
        # shutdown first: close alone does not wake the accepting thread, which would hold on
        # to the listening socket (and its port) and take a later socket's connection.
        _close(self._listener)
        self._thread.join(timeout=5)
        self.cut()


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
