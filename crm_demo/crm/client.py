"""A small JSON client for the demo API over real HTTP: the drill drives its server with it,
and the tests drive gunicorn with it."""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass
from typing import Any

from resilience_crm.provider.labels import FALLBACK_HEADER


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # names in lower case
    body: Any  # decoded JSON, else the text, else None
    seconds: float

    @property
    def label(self) -> str:
        """``"fresh"``, or how stale a fallback read was."""
        fallback = self.headers.get(FALLBACK_HEADER.lower())
        return f"{fallback}, Age {self.headers.get('age', '?')}s" if fallback else "fresh"


def request(port: int, method: str, path: str, *, token: str = "", body: Any = None,
            headers: dict[str, str] | None = None, timeout: float = 30,
            source: str = "", raw: str | None = None) -> Reply:
    """One request to ``127.0.0.1:port`` on a connection of its own, from the local address
    ``source`` if one is given (any of 127.0.0.0/8 is a distinct loopback client). ``body``
    is sent as JSON; a ``raw`` body (a CSV, say: set its Content-Type) as it is."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout,
                                            source_address=(source, 0) if source else None)
    sent = {"Content-Type": "application/json", **(headers or {})}
    if token:
        sent["Authorization"] = f"Token {token}"
    started = time.monotonic()
    try:
        payload = raw.encode() if raw is not None else (
            json.dumps(body) if body is not None else None)
        connection.request(method, path, payload, sent)
        response = connection.getresponse()
        content = response.read()
        seconds = time.monotonic() - started
    finally:
        connection.close()
    try:
        data = json.loads(content) if content else None
    except ValueError:
        data = content.decode(errors="replace")
    return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data,
                 seconds)
