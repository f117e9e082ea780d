"""An incident's audit trail outlives the workers that saw it.

The demo under gunicorn (two workers) loses PostgreSQL (cut, then stalled), its read circuit
opens, goes half-open and closes; the server is stopped right after recovery, as a deploy
would, while the workers' flushers may still be backing off. Every transition and every
minute of call metrics must still reach the database: kept in the shared store while it was
down, written by whichever process finds it back, and tried once at exit."""

from __future__ import annotations

import itertools
import json
import time
from types import SimpleNamespace

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.cache import caches
from django.db import connection
from django.db.models import Sum
from django.test import override_settings
from rest_framework.authtoken.models import Token

from crm_demo.crm.models import Contact
from resilience_crm import buckets, flusher, get_breaker, spool
from resilience_crm.breakers import events as events_module
from resilience_crm.breakers import machine as core
from resilience_crm.models import Circuit, CircuitEvent, CircuitMetric
from tests.databases import database_url
from tests.demo_server import serving
from tests.proxy import Proxy
from tests.waiting import wait_until

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]

KEY_PREFIX = "rcrm-audit"
CIRCUITS = ("crm.auth", "crm.read", "crm.write", "crm.rpc")
#: Open after two failures, half-open two seconds later: the whole incident in seconds.
BREAKER = {"failure_threshold": 2, "reset_timeout": 2, "max_reset_timeout": 2,
           "call_timeout": 2, "slow_call_duration": 2}
#: Seconds the database stays away: long enough for the workers' flushers to back off for
#: several seconds, so that when the server stops they have not tried again.
OUTAGE = 20.0
#: Reads of contacts never read before, after recovery: each a call that succeeds.
FRESH_READS = 5


def resilience(alias):
    return {"STORE": "redis", "CACHE_ALIAS": alias, "SNAPSHOT_TTL": 0.1,
            "FALLBACK_TTL": 1, "CIRCUIT_DEFAULTS": BREAKER,
            "EXEMPT_STAFF": True}  # the client is staff: rate limits are not under test here


@pytest.fixture
def incident(django_db_setup, postgres, redis_url, transactional_db):
    """The demo under gunicorn, two workers, the test database behind the proxy; a staff
    token and contacts, committed."""
    db = connection.settings_dict
    redis = {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": redis_url,
             "KEY_PREFIX": KEY_PREFIX}
    overrides = override_settings(CACHES={**settings.CACHES, "audit": redis},
                                  RESILIENCE_CRM=resilience("audit"))
    contacts = [Contact.objects.create(name=f"Contact {n:02}", email=f"c{n}@example.com")
                for n in range(40)]
    user = User.objects.create_user("audit", password="secret", is_staff=True)
    token = Token.objects.create(user=user).key
    with Proxy(db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432)) as proxy, overrides:
        caches["audit"].delete_pattern("*")
        env = {
            "DATABASE_URL": database_url(db, HOST="127.0.0.1", PORT=proxy.port),
            "REDIS_URL": redis_url, "CACHE_KEY_PREFIX": KEY_PREFIX,
            "DATABASE_POOL_TIMEOUT": "0.5", "DATABASE_CONNECT_TIMEOUT": "2",
            "RESILIENCE_CRM_JSON": json.dumps(resilience("default")),
        }
        try:
            yield SimpleNamespace(env=env, proxy=proxy, token=token,
                                  contacts=itertools.cycle(contacts[FRESH_READS:]),
                                  unread=contacts[:FRESH_READS])
        finally:
            caches["audit"].delete_pattern("*")


def test_the_audit_trail_reaches_the_database_after_the_workers_stop(incident):
    rejected = served = 0
    with serving(incident.env, workers=2) as server:

        def read_one(contact=None):
            contact = contact or next(incident.contacts)
            return server.get(f"/api/contacts/{contact.pk}/", token=incident.token)

        def read_circuit(state):
            nonlocal rejected
            reply = read_one()
            rejected += reply.status == 503 and reply.body.get("code") == "CIRCUIT_OPEN"
            return get_breaker("crm.read").state == state

        # The token is checked, and cached, while the database answers.
        wait_until(lambda: read_one().status == 200, "the demo serving from the database",
                   timeout=60)
        incident.proxy.cut()  # every connection reset, new ones refused
        outage_ends = time.monotonic() + OUTAGE
        wait_until(lambda: read_circuit(core.OPEN), "the read circuit opening", timeout=60,
                   interval=0.1)
        incident.proxy.stalled = True  # and now new connections hang
        wait_until(lambda: read_circuit(core.OPEN) and time.monotonic() > outage_ends,
                   "the outage's end", timeout=OUTAGE + 60, interval=0.2)
        incident.proxy.restore()
        wait_until(lambda: read_circuit(core.CLOSED), "the read circuit closing", timeout=60,
                   interval=0.1)
        for contact in incident.unread:  # (a worker's pool may take a moment to refill)
            wait_until(lambda contact=contact: read_one(contact).status == 200,
                       "a read from the database", timeout=60, interval=0.1)
            served += 1
    # Stopped right after recovery. Another process finding the database back writes what
    # the workers could not: this one, for a start (also the events of the transitions its
    # own looks at the circuits made, such as an open circuit's lapse to half-open).
    snapshots = {name: get_breaker(name).snapshot() for name in CIRCUITS}
    flusher.run_tasks()

    in_redis = {name: snapshot["generation"] for name, snapshot in snapshots.items()}
    in_rows = dict(Circuit.objects.filter(name__in=CIRCUITS)
                   .values_list("name", "generation"))
    counted = CircuitMetric.objects.filter(circuit__name="crm.read").aggregate(
        successes=Sum("successes"), failures=Sum("failures"), rejected=Sum("rejected"))
    figures = (f"generations in Redis {in_redis}, in rows {in_rows}; "
               f"{CircuitEvent.objects.count()} events, crm.read metrics {counted}; "
               f"{rejected} rejected and {served} fresh reads seen")
    assert in_redis["crm.read"] >= 3, figures  # opened, half-open, closed (at least)
    assert in_rows == in_redis, figures
    for name, generation in in_redis.items():
        events = set(CircuitEvent.objects.filter(circuit__name=name)
                     .exclude(source="local").values_list("generation", flat=True))
        assert events == set(range(1, generation + 1)), (name, figures)
    transitions = list(CircuitEvent.objects.filter(circuit__name="crm.read")
                       .order_by("generation").values_list("from_state", "to_state"))
    assert transitions[0] == (core.CLOSED, core.OPEN), transitions
    assert (core.HALF_OPEN, core.CLOSED) in transitions, transitions
    assert transitions[-1][1] == snapshots["crm.read"]["state"], transitions

    assert (counted["failures"] or 0) >= BREAKER["failure_threshold"], figures
    assert (counted["rejected"] or 0) >= rejected, figures
    assert (counted["successes"] or 0) >= served, figures
    assert spool.length(events_module.KIND) == spool.length(buckets.KIND) == 0
