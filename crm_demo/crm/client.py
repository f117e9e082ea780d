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
            source: str = "") -> Reply:
    """One request to ``127.0.0.1:port`` on a connection of its own, from the local address
    ``source`` if one is given (any of 127.0.0.0/8 is a distinct loopback client)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout,
                                            source_address=(source, 0) if source else None)
    sent = {"Content-Type": "application/json", **(headers or {})}
    if token:
        sent["Authorization"] = f"Token {token}"
    started = time.monotonic()
    try:
        connection.request(method, path, json.dumps(body) if body is not None else None, sent)
        response = connection.getresponse()
        raw = response.read()
        seconds = time.monotonic() - started
    finally:
        connection.close()
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        data = raw.decode(errors="replace")
    return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data,
                 seconds)
