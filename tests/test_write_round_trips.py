"""What a protected write costs on the wire when everything is healthy, counted by proxies in
front of the real PostgreSQL and Redis (each burst a client sends after the server last
answered is one round trip): a create is two database round trips (``BEGIN`` and the
statement timeout with the insert; the idempotency row, in its final state, with the
``COMMIT``) and two Redis round trips (the limiter's decision, which also checks the address's
``AUTH_FAILURES`` for a token that passed before; the cache invalidation, which also reads the
write queue's length)."""

from __future__ import annotations

from urllib.parse import urlparse

import pytest
from django.db import connections
from model_bakery import baker

import resilience_crm.provider.stream as stream
from crm_demo.crm.models import Contact
from resilience_crm.models import QueuedWrite
from resilience_crm.provider.facade import protected
from resilience_crm.provider.queue import payload_hash
from tests.clock import Clock
from tests.databases import default_database_through
from tests.proxy import RoundTrips


@pytest.fixture
def wire(api, settings, redis_url, postgres, monkeypatch):
    """``(database, redis)``: the round-trip counting proxies the ``api`` client's requests go
    through, with every per-process view (breakers, tiers, cached token checks, the write
    queue's emptiness) on clocks that stand still, so none of them expires mid-test."""
    target = urlparse(redis_url)
    default = connections["default"].settings_dict
    with RoundTrips(target.hostname or "127.0.0.1", target.port or 6379) as redis, \
            RoundTrips(default["HOST"] or "127.0.0.1", int(default["PORT"] or 5432)) as db:
        settings.CACHES = {**settings.CACHES, "proxied": {
            **settings.CACHES["redis"], "LOCATION": redis.url(path=target.path or "/0")}}
        settings.RESILIENCE_CRM = {**settings.RESILIENCE_CRM, "CACHE_ALIAS": "proxied",
                                   "SNAPSHOT_TTL": 3600, "TIER_CACHE_TTL": 3600}
        monkeypatch.setattr(protected.cache, "_monotonic", Clock())
        monkeypatch.setattr(stream.emptiness, "monotonic", Clock())
        with default_database_through(db):
            yield db, redis


def measured(proxies, request):
    """The response to ``request()`` after a warm-up create, and the round trips it took."""
    for proxy in proxies:
        proxy.reset()
    response = request()
    return response, [proxy.round_trips for proxy in proxies]


def create(api, key, name="Ada"):
    return api.post("/api/contacts/", {"name": name, "email": "ada@example.com"},
                    format="json", HTTP_IDEMPOTENCY_KEY=key)


def test_a_create_costs_two_database_and_two_redis_round_trips(api, wire):
    db, redis = wire
    assert create(api, "warm-up").status_code == 201
    response, (db_trips, redis_trips) = measured(wire, lambda: create(api, "k1"))
    assert response.status_code == 201, response.content
    assert (db_trips, redis_trips) == (2, 2), (bytes(db.upstream), bytes(redis.upstream))
    sent = bytes(db.upstream)
    assert b"BEGIN; SET LOCAL statement_timeout" in sent and sent.endswith(b"; COMMIT\x00")
    assert b"EVAL\r\n" not in bytes(redis.upstream)  # scripts go by their SHA only
    row = QueuedWrite.objects.get(idempotency_key=f"{api.user.pk}:contacts.create:k1")
    assert row.state == QueuedWrite.State.APPLIED and row.result == response.json()
    assert row.attempts == 1 and row.applied_at is not None


def test_an_update_costs_two_database_and_two_redis_round_trips(api, wire):
    contact = baker.make(Contact, name="Ada", email="ada@example.com")
    assert create(api, "warm-up").status_code == 201
    response, trips = measured(
        wire, lambda: api.patch(f"/api/contacts/{contact.pk}/", {"company": "Engines"},
                                format="json"))
    assert response.status_code == 200 and response.json()["company"] == "Engines"
    assert trips == [2, 2]  # BEGIN, timeout and SELECT ... FOR UPDATE; UPDATE and COMMIT
    assert Contact.objects.get(pk=contact.pk).company == "Engines"


def test_the_queue_is_asked_about_a_key_once_its_emptiness_is_old(api, wire):
    """Seen empty more than ``EMPTY_TRUSTED`` ago: the key's marker is read first (with the
    stream's length, one round trip), and a write queued under the key is not applied."""
    assert create(api, "warm-up").status_code == 201
    stream.emptiness.monotonic.now += stream.EMPTY_TRUSTED
    response, trips = measured(wire, lambda: create(api, "k2"))
    assert response.status_code == 201 and trips == [2, 3]

    stream.emptiness.monotonic.now += stream.EMPTY_TRUSTED
    payload = {"name": "Queued", "email": "ada@example.com"}
    key = f"{api.user.pk}:contacts.create:k3"
    stream.append("contacts.create", '{"name": "Queued", "email": "ada@example.com"}',
                  idempotency_key=key, entity="", digest=payload_hash(payload))
    response = api.post("/api/contacts/", payload, format="json", HTTP_IDEMPOTENCY_KEY="k3")
    assert response.status_code == 202 and not Contact.objects.filter(name="Queued").exists()


def test_with_server_side_binding_the_same_statements_go_one_by_one(api, wire):
    """A cursor that sends one statement per message (``server_side_binding``) gets the
    timeout in a statement of its own, and psycopg's and Django's own ``BEGIN`` and
    ``COMMIT``: the same transaction, five round trips."""
    db, _ = wire
    connections["default"].close()
    options = connections["default"].settings_dict.setdefault("OPTIONS", {})
    options["server_side_binding"] = True
    try:
        assert create(api, "warm-up").status_code == 201
        response, trips = measured(wire, lambda: create(api, "k4"))
    finally:
        connections["default"].close()
        del options["server_side_binding"]
    assert response.status_code == 201 and trips[0] == 5
    assert b"SET LOCAL statement_timeout" in bytes(db.upstream)
    assert b"; COMMIT" not in bytes(db.upstream)
    row = QueuedWrite.objects.get(idempotency_key=f"{api.user.pk}:contacts.create:k4")
    assert row.result == response.json() and Contact.objects.filter(name="Ada").count() == 2
