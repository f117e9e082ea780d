"""The real services the suite runs against, and the gate on tests that need them.

``DATABASE_URL`` and ``REDIS_URL`` name them. Where one is not set, the suite looks for the
service on its default local port (PostgreSQL on 5432 as user ``postgres``, Redis on 6379)
and uses it when it answers, so a newcomer with both running gets the whole suite; the
report header says what was used and why anything is missing. Tests that need a missing
service skip with the reason, or fail when ``RESILIENCE_CRM_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import pytest

#: Where the suite looks when the variables are not set. Redis database 15, which the suite
#: may flush, is one a developer is least likely to keep anything in.
LOCAL_POSTGRES = "postgres://postgres@127.0.0.1:5432/resilience_crm"
LOCAL_REDIS = "redis://127.0.0.1:6379/15"


@dataclass(frozen=True)
class Service:
    name: str
    url: str  # "" when there is none
    why: str  # how it was found, or why it was not


def services_required() -> bool:
    return os.environ.get("RESILIENCE_CRM_REQUIRE_SERVICES", "") not in ("", "0")


def require_service(name: str, ok: bool, reason: str) -> None:
    """Carry on if ``ok``; otherwise skip, or fail when RESILIENCE_CRM_REQUIRE_SERVICES=1."""
    if ok:
        return
    message = f"{name} unavailable: {reason}"
    if services_required():
        pytest.fail(f"{message} (RESILIENCE_CRM_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(message)


def _answers(port: int, hello: bytes = b"", expect: bytes = b"") -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3) as sock:
            if not hello:
                return True
            sock.sendall(hello)
            return sock.recv(64).startswith(expect)
    except OSError:
        return False


def _postgres_answers() -> bool:
    if not _answers(5432):
        return False
    try:
        import psycopg

        psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres",
                        connect_timeout=2).close()
    except Exception:
        return False
    return True


def find(variable: str, name: str, local_url: str) -> Service:
    """The service ``variable`` names, or the local one on its default port."""
    url = os.environ.get(variable, "")
    if url:
        return Service(name, url, f"from {variable}")
    found = (_postgres_answers() if name == "PostgreSQL"
             else _answers(6379, b"PING\r\n", b"+PONG"))
    if found:
        return Service(name, local_url, f"{variable} is not set; found on the default port")
    return Service(name, "", f"{variable} is not set and nothing answers on the default port")


def header(services: list[Service]) -> str:
    lines = []
    for service in services:
        where = service.url or "not used"
        lines.append(f"resilience_crm services: {service.name}: {where} ({service.why})")
    return "\n".join(lines)
