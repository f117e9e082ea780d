"""Failed authentications per client address (``AUTH_FAILURES``): a token-guessing flood
from one address costs one token lookup per failure it is allowed, then ``429`` before any
lookup; a busy office behind one address that authenticates correctly is never refused.
The demo API on real PostgreSQL and Redis."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import User
from django.core.checks import run_checks
from django.db import connection
from django.test import AsyncClient
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from resilience_crm.ratelimit import headers
from resilience_crm.ratelimit.stores.base import BaseLimiterStore
from resilience_crm.ratelimit.stores.memory import MemoryLimiterStore
from tests.demo_api import PASSWORD, problem
from tests.ratelimit_helpers import set_tier

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.django_db]


@pytest.fixture
def demo(settings: Any, redis_cache: Any, postgres: Any) -> Any:
    """The demo's limits on Redis; failures per hour, so nothing refills during a test."""
    settings.RESILIENCE_CRM = {"STORE": "redis", "CACHE_ALIAS": "redis",
                               "AUTH_FAILURES": "30/h"}
    return settings


def token_lookups(queries: CaptureQueriesContext) -> int:
    return sum('"authtoken_token"' in query["sql"] for query in queries.captured_queries)


def test_a_token_guessing_flood_is_refused_before_any_lookup(demo: Any) -> None:
    client = APIClient()
    with CaptureQueriesContext(connection) as queries:
        statuses = [client.get("/api/contacts/",
                               HTTP_AUTHORIZATION=f"Token {secrets.token_hex(20)}").status_code
                    for _ in range(150)]
    assert statuses == [401] * 30 + [429] * 120
    assert token_lookups(queries) == 30
    response = client.get("/api/contacts/", HTTP_AUTHORIZATION="Token another-guess")
    body = problem(response, 429, "RATE_LIMITED")
    assert body["violated_policies"] == ["auth_failures.3600s"]
    assert int(response["Retry-After"]) > 0
    # Another address is not refused.
    assert client.get("/api/contacts/", HTTP_AUTHORIZATION="Token guess",
                      REMOTE_ADDR="192.0.2.9").status_code == 401


def test_a_busy_office_that_authenticates_is_never_refused(demo: Any) -> None:
    tokens = [Token.objects.create(user=User.objects.create_user(f"clerk{n}")).key
              for n in range(5)]
    client = APIClient()
    for round_ in range(30):
        for token in tokens:
            response = client.get("/api/contacts/", HTTP_AUTHORIZATION=f"Token {token}")
            assert response.status_code == 200, (round_, response.content)
        if round_ < 29:  # a mistyped token now and then, short of the policy
            assert client.get("/api/contacts/", HTTP_AUTHORIZATION="Token typo"
                              ).status_code == 401
    # 150 successes counted for nothing: the 30th failure is still looked up.
    assert client.get("/api/contacts/", HTTP_AUTHORIZATION="Token typo").status_code == 401
    assert client.get("/api/contacts/", HTTP_AUTHORIZATION="Token typo").status_code == 429


def spend_failures(client: APIClient, n: int = 30) -> None:
    assert {client.get("/api/contacts/", HTTP_AUTHORIZATION=f"Token {secrets.token_hex(20)}"
                       ).status_code for _ in range(n)} == {401}


@pytest.mark.parametrize("store", ["redis", "memory", "database"])
def test_credentials_that_passed_before_are_refused_with_the_throttles_decision(
        demo: Any, store: str) -> None:
    """A token this process has seen pass is not refused before its lookup (that spares
    nothing): on Redis and in memory the throttle checks the address in its own decision's
    step (the refusal is the throttle's decision, left on the request); the database store
    cannot, so there the middleware checks first, before any view. Refused all the same,
    charging none of the user's own limits."""
    demo.RESILIENCE_CRM = {**demo.RESILIENCE_CRM, "RATELIMIT_STORE": store}
    set_tier("free", {"read": "1000/d"})  # nothing refills during the test
    token = Token.objects.create(user=User.objects.create_user("clerk")).key
    client = APIClient()
    first = client.get("/api/contacts/", HTTP_AUTHORIZATION=f"Token {token}")
    assert first.status_code == 200
    spend_failures(client)
    response = client.get("/api/contacts/", HTTP_AUTHORIZATION=f"Token {token}")
    assert problem(response, 429, "RATE_LIMITED")["violated_policies"] == [
        "auth_failures.3600s"]
    by_throttle = headers.decision_of(response.wsgi_request) is not None
    assert by_throttle is (store != "database")
    elsewhere = client.get("/api/contacts/", HTTP_AUTHORIZATION=f"Token {token}",
                           REMOTE_ADDR="192.0.2.9")
    assert elsewhere.status_code == 200
    assert int(elsewhere["X-RateLimit-Remaining"]) == int(first["X-RateLimit-Remaining"]) - 1


def test_credentials_no_authenticator_took_are_not_remembered(demo: Any) -> None:
    """A guess sent where nothing authenticates it (the token endpoint answers 400 to an
    empty body) is not taken for a credential that passed: once the address is locked out,
    it is refused before any lookup."""
    client = APIClient()
    guess = f"Token {secrets.token_hex(20)}"
    assert client.post("/api/auth/token/", {}, HTTP_AUTHORIZATION=guess).status_code == 400
    spend_failures(client)
    with CaptureQueriesContext(connection) as queries:
        response = client.get("/api/contacts/", HTTP_AUTHORIZATION=guess)
    assert response.status_code == 429 and token_lookups(queries) == 0


def test_valid_credentials_not_seen_pass_here_are_refused_before_their_lookup(
        demo: Any) -> None:
    client = APIClient()
    spend_failures(client)
    token = Token.objects.create(user=User.objects.create_user("clerk")).key
    with CaptureQueriesContext(connection) as queries:
        response = client.get("/api/contacts/", HTTP_AUTHORIZATION=f"Token {token}")
    assert response.status_code == 429 and token_lookups(queries) == 0


def test_credentials_refused_since_they_passed_are_refused_before_their_lookup(
        demo: Any) -> None:
    """A ``401`` makes this process forget that the credentials passed."""
    found = Token.objects.create(user=User.objects.create_user("clerk"))
    client = APIClient()
    assert client.get("/api/contacts/", HTTP_AUTHORIZATION=f"Token {found.key}"
                      ).status_code == 200
    found.delete()  # revoked
    assert client.get("/api/contacts/", HTTP_AUTHORIZATION=f"Token {found.key}"
                      ).status_code == 401
    spend_failures(client, 29)
    with CaptureQueriesContext(connection) as queries:
        response = client.get("/api/contacts/", HTTP_AUTHORIZATION=f"Token {found.key}")
    assert response.status_code == 429 and token_lookups(queries) == 0


@pytest.mark.django_db(transaction=True)
def test_under_asgi_both_ways_refuse(demo: Any) -> None:
    """The middleware's check before the view and the throttle's in its step, under ASGI."""
    token = Token.objects.create(user=User.objects.create_user("clerk")).key

    async def requests() -> tuple[int, list[int], int]:
        client = AsyncClient()
        known = await client.get("/api/contacts/", headers={"Authorization": f"Token {token}"})
        guesses = [(await client.get(
            "/api/contacts/", headers={"Authorization": f"Token {secrets.token_hex(20)}"})
                    ).status_code for _ in range(31)]
        again = await client.get("/api/contacts/", headers={"Authorization": f"Token {token}"})
        return known.status_code, guesses, again.status_code

    assert async_to_sync(requests)() == (200, [401] * 30 + [429], 429)


def test_failed_password_logins_count_too(demo: Any) -> None:
    demo.RESILIENCE_CRM = {**demo.RESILIENCE_CRM, "AUTH_FAILURES": "3/h"}
    set_tier("anonymous", {"auth": "100/min"})
    User.objects.create_user("ada", password=PASSWORD)
    client = APIClient()

    def login(password: str) -> int:
        return client.post("/api/auth/token/", {"username": "ada", "password": password}
                           ).status_code

    assert [login("wrong") for _ in range(3)] == [400] * 3
    assert login(PASSWORD) == 429


def test_none_turns_it_off(demo: Any) -> None:
    demo.RESILIENCE_CRM = {**demo.RESILIENCE_CRM, "AUTH_FAILURES": None}
    client = APIClient()
    assert {client.get("/api/contacts/", HTTP_AUTHORIZATION=f"Token guess{n}").status_code
            for n in range(40)} == {401}



class BlindLimiterStore(MemoryLimiterStore):
    """A custom store that cannot peek, as a third-party one may be."""

    peek = BaseLimiterStore.peek


def test_a_store_that_cannot_peek_never_turns_credentials_into_a_500(demo: Any) -> None:
    demo.RESILIENCE_CRM = {**demo.RESILIENCE_CRM,
                           "RATELIMIT_STORE": "tests.test_auth_failures.BlindLimiterStore"}
    client = APIClient()
    assert {client.get("/api/contacts/", HTTP_AUTHORIZATION=f"Token guess{n}").status_code
            for n in range(5)} == {401}
    warnings = [m.id for m in run_checks() if m.id.startswith("resilience_crm.")]
    assert warnings == ["resilience_crm.W023"]
