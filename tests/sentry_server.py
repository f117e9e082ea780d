"""A local HTTP server standing in for Sentry's ingest endpoint.

Point ``sentry_sdk.init(dsn=server.dsn)`` at it; it decodes each envelope the SDK posts
(gzip or brotli as the Content-Encoding says) and keeps the event payloads.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def parse_envelope(body: bytes) -> list[tuple[dict[str, Any], bytes]]:
    """The (item header, payload) pairs of a Sentry envelope."""
    items = []
    _, _, rest = body.partition(b"\n")  # the envelope header
    while rest.strip():
        line, _, rest = rest.partition(b"\n")
        if not line.strip():
            continue
        header = json.loads(line)
        length = header.get("length")
        if length is None:
            payload, _, rest = rest.partition(b"\n")
        else:
            payload, rest = rest[:length], rest[length + 1:]
        items.append((header, payload))
    return items


class SentryServer:
    def __init__(self) -> None:
        self._events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                elif encoding == "br":
                    import brotli

                    body = brotli.decompress(body)
                for header, payload in parse_envelope(body):
                    if header.get("type") == "event":
                        with server._lock:
                            server._events.append(json.loads(payload))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def dsn(self) -> str:
        return f"http://public@127.0.0.1:{self._httpd.server_address[1]}/1"

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._events)

    def __enter__(self) -> SentryServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@contextlib.contextmanager
def sentry_sending_to(dsn: str) -> Iterator[None]:
    """sentry-sdk initialised as a project would (with its logging integration), sending to
    ``dsn``; torn down after, leaving it uninitialised."""
    import sentry_sdk
    from sentry_sdk.integrations.logging import LoggingIntegration

    sentry_sdk.init(dsn=dsn, default_integrations=False, integrations=[LoggingIntegration()])
    try:
        yield
    finally:
        sentry_sdk.get_client().close(timeout=5)
        sentry_sdk.get_global_scope().set_client(None)  # back to "not initialised"


def received(server: SentryServer, at_least: int = 0,
             patience: float = 10.0) -> list[dict[str, Any]]:
    """The events the server has, once sentry-sdk's background sender has flushed; with
    ``at_least``, once that many have arrived (or ``patience`` seconds have passed)."""
    import sentry_sdk

    deadline = time.monotonic() + patience
    sentry_sdk.flush(timeout=5)
    while len(server.events()) < at_least and time.monotonic() < deadline:
        sentry_sdk.flush(timeout=1)
        time.sleep(0.05)
    return server.events()
