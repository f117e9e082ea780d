"""Redis down: every decision is bounded by the socket timeout, ``FAIL_OPEN`` applies per op
class, the per-process fallback allows limit / ``EXPECTED_PROCESSES``, nothing turns into a
500, and it is all counted. Faults are real: a closed port, a proxy that stalls."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest

from resilience_crm import metrics
from resilience_crm.ratelimit import limiter
from resilience_crm.ratelimit.gcra import Limit
from resilience_crm.ratelimit.principals import Principal
from tests.ratelimit_helpers import set_tier

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.ratelimit_urls"), pytest.mark.slow]

#: Generous: the socket timeout is 0.25 s; the rest is a loaded machine's slack.
BOUND = 2.0


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def redis_down(settings: Any) -> None:
    settings.CACHES = {**settings.CACHES, "down": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": f"redis://127.0.0.1:{closed_port()}/0",
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.25, "SOCKET_TIMEOUT": 0.25},
    }}
    settings.RESILIENCE_CRM = {"CACHE_ALIAS": "down", "EXPECTED_PROCESSES": 2}
    set_tier("anonymous", {"read": "4/min", "auth": "10/min"})


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    started = time.monotonic()
    result = fn(*args, **kwargs)
    return result, time.monotonic() - started


def test_reads_fail_open_to_a_per_process_share_of_the_limit(client, redis_down) -> None:
    first, took = timed(client.get, "/things/")
    assert first.status_code == 200 and took < BOUND
    assert first["X-RateLimit-Limit"] == "2"  # 4/min across 2 expected processes
    second, took = timed(client.get, "/things/")
    assert second.status_code == 200 and took < BOUND
    third = client.get("/things/")
    assert third.status_code == 429
    assert json.loads(third.content)["code"] == "RATE_LIMITED"
    assert metrics.value("ratelimit_decisions", op_class="read",
                         decision="fallback_allowed") == 2
    assert metrics.value("ratelimit_decisions", op_class="read",
                         decision="fallback_rejected") == 1
    # Only the first request waited on Redis; the others skipped it for STORE_RETRY_INTERVAL.
    assert metrics.value("ratelimit_store_errors") == 1


def test_auth_fails_open_to_a_per_process_share_by_default(client, redis_down) -> None:
    statuses = [client.post("/login/").status_code for _ in range(6)]
    assert statuses == [201] * 5 + [429]  # 10/min across 2 expected processes
    assert metrics.value("ratelimit_decisions", op_class="auth",
                         decision="fallback_rejected") == 1


def test_auth_fails_closed_with_a_503_problem_when_set(client, settings, redis_down) -> None:
    settings.RESILIENCE_CRM = {**settings.RESILIENCE_CRM, "FAIL_OPEN": {"auth": False}}
    response, took = timed(client.post, "/login/")
    assert took < BOUND
    assert response.status_code == 503
    assert response["Content-Type"] == "application/problem+json"
    body = json.loads(response.content)
    assert body["code"] == "STORE_UNAVAILABLE" and body["status"] == 503
    assert int(response["Retry-After"]) == 5
    assert metrics.value("ratelimit_decisions", op_class="auth", decision="unavailable") == 1


def test_fail_open_is_configurable_per_op_class(client, settings, redis_down) -> None:
    settings.RESILIENCE_CRM = {**settings.RESILIENCE_CRM,
                               "FAIL_OPEN": {"auth": True, "read": False}}
    assert client.post("/login/").status_code == 201
    assert client.get("/things/").status_code == 503


def test_fail_open_keys_left_out_keep_their_defaults(client, settings, redis_down) -> None:
    settings.RESILIENCE_CRM = {**settings.RESILIENCE_CRM, "FAIL_OPEN": {"read": False}}
    assert client.post("/login/").status_code == 201  # auth still fails open
    assert client.post("/things/").status_code == 201  # write still fails open


@pytest.mark.redis
def test_a_stalled_redis_costs_one_socket_timeout_then_recovers(client, settings,
                                                                redis_proxy) -> None:
    settings.RESILIENCE_CRM = {"CACHE_ALIAS": "proxied", "STORE": "memory",
                               "STORE_RETRY_INTERVAL": 0}
    set_tier("anonymous", {"read": "100/min"})
    assert client.get("/things/")["X-RateLimit-Remaining"] == "99"  # through Redis
    redis_proxy.stalled = True
    redis_proxy.drop()
    response, took = timed(client.get, "/things/")
    assert response.status_code == 200 and took < BOUND
    assert metrics.value("ratelimit_decisions", op_class="read", decision="fallback_allowed") == 1
    redis_proxy.stalled = False
    response = client.get("/things/")
    assert response["X-RateLimit-Remaining"] == "98"  # back on Redis, its count intact


def test_an_addresss_failures_are_checked_on_this_processs_counts_while_down(
        redis_down) -> None:
    """A check the throttle makes in its decision's step (``AUTH_FAILURES`` for credentials
    that passed before) falls back with the decision: on this process's share."""

    def failures(store: Any, scale: float) -> tuple[Limit, ...]:
        return (Limit(store.key("ip:192.0.2.1", "authfail:60"), "auth_failures.60s",
                      max(1, int(4 * scale)), 60),)

    who = Principal(key="ip:192.0.2.1", tier="anonymous")
    check = limiter.Check(failures, "auth")
    first, took = timed(limiter.decide, who, "read", checking=check)
    assert first.allowed and first.source == "fallback" and took < BOUND
    for _ in range(2):  # 4/min across 2 expected processes
        limiter.decide_limits(failures, op_class="auth")
    refused = limiter.decide(who, "read", checking=check)
    assert not refused.allowed and refused.violated == ("auth_failures.60s",)
    assert refused.source == "fallback"
    assert limiter.decide(who, "read").allowed  # the refusal charged the read limit nothing
    assert not limiter.decide(who, "read").allowed
