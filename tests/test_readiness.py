"""Readiness is cheap and safe to probe: it reads circuit state without stepping it, answers
within its deadline with the database blackholed (also under ATOMIC_REQUESTS), and shows its
details only to staff or to the monitoring token."""

from __future__ import annotations

import re
import time
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from django.utils import timezone

from resilience_crm.breakers import machine as core
from resilience_crm.breakers import registry
from resilience_crm.models import Circuit, QueuedWrite
from resilience_crm.observability.health import PENALTIES
from resilience_crm.ratelimit import limiter
from resilience_crm.ratelimit.principals import Principal
from tests.databases import default_database_through
from tests.proxy import Proxy

READY = reverse("resilience:health-ready")
LIVE = reverse("resilience:health-live")
TOKEN = "s3cret-monitoring-token"
#: Seconds libpq gives a blackholed database to answer in these tests: what a readiness
#: request that waited on its database probe would take (the deadline's own figure, 0.7 s
#: and a few milliseconds, is bench/live_blackholed.py's to measure).
CONNECT_TIMEOUT = 20


@pytest.mark.django_db
@pytest.mark.redis
def test_ready_reads_redis_without_stepping_a_circuit(client, settings, redis_proxy):
    settings.RESILIENCE_CRM = {"STORE": "redis", "CACHE_ALIAS": "proxied", "SNAPSHOT_TTL": 0}
    registry.get_breaker("crm.write").force(core.FORCED_OPEN, reason="drill")
    redis_proxy.upstream.clear()

    for _ in range(3):
        body = client.get(READY).json()

    assert body["circuits"]["crm.write"] == {"state": core.FORCED_OPEN}
    commands = set(re.findall(rb"\*\d+\r\n\$\d+\r\n(\w+)\r\n", bytes(redis_proxy.upstream)))
    assert b"GET" in commands
    assert not commands & {b"EVALSHA", b"EVAL", b"SET", b"DEL"}, commands


@pytest.mark.django_db(transaction=True)  # the probes connect from their own threads
def test_ready_reads_the_database_store_without_writing(client, settings):
    settings.RESILIENCE_CRM = {"STORE": "database", "SNAPSHOT_TTL": 0}
    registry.get_breaker("crm.read").force(core.FORCED_OPEN, reason="drill")
    before = dict(Circuit.objects.values_list("name", "version"))

    body = client.get(READY).json()

    assert body["circuits"]["crm.read"] == {"state": core.FORCED_OPEN}
    assert dict(Circuit.objects.values_list("name", "version")) == before


@pytest.mark.django_db(transaction=True)
def test_details_are_for_staff_and_the_monitoring_token_only(client, settings):
    settings.RESILIENCE_CRM = {"MONITORING_TOKEN": TOKEN}
    anonymous = client.get(READY).json()
    wrong = client.get(READY, HTTP_AUTHORIZATION="Bearer not-the-token").json()
    with_token = client.get(READY, HTTP_AUTHORIZATION=f"Bearer {TOKEN}").json()
    User.objects.create_user("clerk", password="pw")
    client.login(username="clerk", password="pw")
    not_staff = client.get(READY).json()
    User.objects.create_user("ops", password="pw", is_staff=True)
    client.login(username="ops", password="pw")
    staff = client.get(READY).json()

    for body in (anonymous, wrong, not_staff):
        assert set(body) == {"status", "score", "circuits"}
    for body in (with_token, staff):
        assert set(body) == {"status", "score", "circuits", "queue", "checks"}
        assert body["queue"] == {"pending": 0, "dead": 0, "oldest_pending_s": 0, "in_redis": 0}
        assert body["checks"]["database"]["ok"] is True


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("atomic_requests", [False, True])
def test_a_blackholed_database_gets_a_503_within_the_deadline(client, settings, postgres,
                                                               atomic_requests):
    settings.RESILIENCE_CRM = {"STORE": "memory", "MONITORING_TOKEN": TOKEN}
    target = client.get(READY)  # warm: every circuit built, its row read
    assert target.status_code == 200
    default = settings.DATABASES["default"]
    proxy = Proxy(default.get("HOST") or "127.0.0.1", int(default.get("PORT") or 5432))
    with proxy, default_database_through(proxy, ATOMIC_REQUESTS=atomic_requests,
                                         OPTIONS={"connect_timeout": CONNECT_TIMEOUT}):
        proxy.stalled = True  # accepted, never answered: a blackhole, not a refusal
        started = time.monotonic()
        response = client.get(READY, HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
        elapsed = time.monotonic() - started

        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "unavailable"
        # "timeout": the deadline answered, not the database probe, which is still waiting.
        assert body["checks"]["database"] == {"ok": False, "error": "timeout",
                                              "ms": body["checks"]["database"]["ms"]}
        assert elapsed < CONNECT_TIMEOUT
        assert client.get(LIVE).status_code == 200
        proxy.drop()


# The score weighs what the traffic looks like, not only what is down -----------------------


def _score(client) -> dict:
    return client.get(READY, HTTP_AUTHORIZATION=f"Bearer {TOKEN}").json()


def _failing():
    raise ConnectionError("refused")


@pytest.mark.django_db(transaction=True)
def test_a_failing_circuit_that_has_not_tripped_yet_costs_points(client, settings):
    settings.RESILIENCE_CRM = {"STORE": "memory", "MONITORING_TOKEN": TOKEN,
                               "CIRCUITS": {"crm.rpc": {"failure_threshold": 0,
                                                        "minimum_calls": 1000}}}
    assert _score(client)["score"] == 100
    breaker = registry.get_breaker("crm.rpc")
    for _ in range(10):
        breaker.call(lambda: "ok")
        with pytest.raises(ConnectionError):
            breaker.call(_failing)

    body = _score(client)

    assert body["checks"]["traffic"]["failure_rate"] == {"crm.rpc": 0.5}
    assert body["score"] == 100 - PENALTIES["failure_rate"]
    assert body["status"] == "degraded"
    assert _score(client)["score"] == 100  # no calls since: the rate is of the last interval


@pytest.mark.django_db(transaction=True)
def test_rate_limit_rejections_cost_points(client, settings):
    settings.RESILIENCE_CRM = {"MONITORING_TOKEN": TOKEN, "RATELIMIT_STORE": "memory"}
    who = Principal(key="u:1", tier="free", overrides={"read": "4/hour"})
    decisions = [limiter.decide(who, "read").allowed for _ in range(8)]
    assert decisions == [True] * 4 + [False] * 4

    body = _score(client)

    assert body["checks"]["traffic"]["rate_limited"] == 0.5
    assert body["score"] == 100 - PENALTIES["rate_limited"]


@pytest.mark.django_db(transaction=True)
def test_writes_waiting_long_and_dead_letters_cost_points(client, settings):
    settings.RESILIENCE_CRM = {"MONITORING_TOKEN": TOKEN}
    writes = [QueuedWrite(name="contact.create", idempotency_key=f"k{i}", payload={},
                          payload_hash="x") for i in range(50)]
    QueuedWrite.objects.bulk_create(writes)
    QueuedWrite.objects.filter(idempotency_key="k0").update(
        created_at=timezone.now() - timedelta(minutes=10))
    QueuedWrite.objects.create(name="contact.create", idempotency_key="dead", payload={},
                               payload_hash="x", state=QueuedWrite.State.DEAD)

    body = _score(client)

    assert body["queue"]["pending"] == 50 and body["queue"]["dead"] == 1
    assert body["queue"]["oldest_pending_s"] >= 600
    expected = 100 - PENALTIES["queue_depth"] / 2 - PENALTIES["queue_age"] - PENALTIES[
        "dead_letters"]
    assert body["score"] == round(expected)
