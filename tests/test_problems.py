"""One problem builder for every error answer: an upstream's 429 comes out in the shape of
our own limiter's, through the DRF handler with or without the middleware, and every
``Retry-After`` has the same floor."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.db import connections

from resilience_crm.drf import exception_handler
from resilience_crm.exceptions import ResilienceError
from resilience_crm.models import Tier
from resilience_crm.problems import retry_after_header
from tests.ratelimit_helpers import set_tier, structured

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.ratelimit_urls"),
              pytest.mark.redis]

#: What the upstream asks us to wait: beyond any call_timeout, so it is not retried.
UPSTREAM_RETRY_AFTER = 30


class TooManyRequests(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(429)
        self.send_header("Retry-After", str(UPSTREAM_RETRY_AFTER))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def upstream(settings: Any) -> Iterator[str]:
    """A real HTTP upstream that answers every request 429, at ``settings.UPSTREAM_URL``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), TooManyRequests)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings.UPSTREAM_URL = f"http://127.0.0.1:{server.server_address[1]}/"
    yield settings.UPSTREAM_URL
    server.shutdown()
    server.server_close()


@pytest.fixture
def limited(settings: Any, redis_cache: Any, django_user_model: Any, client: Any) -> Any:
    """A logged-in client of the free tier, three reads a minute, on the real Redis."""
    settings.RESILIENCE_CRM = {"CACHE_ALIAS": "redis"}
    set_tier("free", {"read": "3/min"})
    client.force_login(django_user_model.objects.create_user("ana", password="pw"))
    return client


def problem(response: Any) -> dict[str, Any]:
    assert response["Content-Type"] == "application/problem+json"
    return json.loads(response.content)


def test_an_upstream_429_has_the_shape_of_our_own(limited, upstream) -> None:
    theirs = limited.get("/upstream/")
    assert theirs.status_code == 429
    limited.get("/things/")
    limited.get("/things/")
    ours = limited.get("/things/")
    assert ours.status_code == 429

    upstream_body, own_body = problem(theirs), problem(ours)
    assert set(upstream_body) == {*own_body, "circuit"}  # and which circuit it went through
    assert upstream_body["circuit"] == "crm.rpc"
    for member in ("type", "title", "status", "code"):
        assert upstream_body[member] == own_body[member], member
    assert upstream_body["violated_policies"] == []  # the upstream's policies are unknown
    assert own_body["violated_policies"] == ["free.read.60s"]
    assert theirs["Retry-After"] == str(UPSTREAM_RETRY_AFTER)
    # The client's own budget, as of the request that met the upstream's limit.
    assert structured(theirs["RateLimit"])["free.read.60s"]["r"] == 2
    assert structured(theirs["RateLimit-Policy"]) == {"free.read.60s": {"q": 3, "w": 60}}


def test_the_handler_answers_a_refusal_without_the_middleware(limited, settings) -> None:
    settings.MIDDLEWARE = [name for name in settings.MIDDLEWARE
                           if name != "resilience_crm.middleware.ResilienceMiddleware"]
    for _ in range(3):
        assert limited.get("/things/").status_code == 200
    refused = limited.get("/things/")
    assert refused.status_code == 429
    body = problem(refused)
    assert body["code"] == "RATE_LIMITED" and body["title"] == "Too many requests"
    assert body["violated_policies"] == ["free.read.60s"]
    assert abs(int(refused["Retry-After"]) - 20) <= 1  # 3/min: one more every 20 s
    assert structured(refused["RateLimit"])["free.read.60s"]["r"] == 0


@pytest.mark.parametrize(("seconds", "header"), [
    (0, 1), (0.2, 1), (1.0, 1), (36.0, 36), (36.000001, 37),
])
def test_retry_after_rounds_up_and_is_at_least_a_second(seconds, header) -> None:
    assert retry_after_header(seconds) == header


class TooLarge(ResilienceError):
    """A subclass that names no title of its own."""

    code = "TOO_LARGE"
    status = 413


def test_a_problem_without_a_title_of_its_own_has_the_status_phrase() -> None:
    response = exception_handler(TooLarge("At most 1 MB."), {})
    body = problem(response)
    assert response.status_code == 413
    assert body == {"type": "urn:resilience-crm:problem:too-large",
                    "title": "Request Entity Too Large", "status": 413,
                    "detail": "At most 1 MB.", "code": "TOO_LARGE"}


@pytest.fixture
def atomic_requests() -> Iterator[None]:
    connections.settings["default"]["ATOMIC_REQUESTS"] = True
    try:
        yield
    finally:
        connections.settings["default"]["ATOMIC_REQUESTS"] = False


@pytest.mark.urls("tests.atomic_urls")
def test_a_problem_answer_rolls_the_requests_transaction_back(client, atomic_requests) -> None:
    assert client.post("/refuses/").status_code == 422
    assert not Tier.objects.filter(name="half-done").exists()
