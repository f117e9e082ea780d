"""The demo API under gunicorn (several worker processes) through a PostgreSQL outage: a TCP
proxy in front of the database first resets every connection, then stalls every new one.

Cached lists and details keep being served, labelled stale, and no request waits much
longer than ``call_timeout``; writes sent during the outage (some twice) are queued and
applied exactly once after it; all of it also with ``ATOMIC_REQUESTS`` on, where Django
would open each request's transaction, and so connect, before the view runs. Strict latency
figures are in bench/provider.py."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.cache import caches
from django.db import connection
from django.test import override_settings
from rest_framework.authtoken.models import Token

from crm_demo.crm.models import Agent, Contact, Conversation
from resilience_crm import get_breaker
from resilience_crm.breakers import machine as core
from tests.databases import database_url
from tests.demo_server import SETTINGS, serving
from tests.gunicorn_server import ROOT
from tests.proxy import Proxy
from tests.waiting import wait_until

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]

CALL_TIMEOUT = 3.0
#: What a request may take beyond call_timeout on a loaded machine (asserted generously).
MARGIN = 2.0
FALLBACK_TTL = 1
KEY_PREFIX = "rcrm-outage"
#: Circuits stay open through each test: no half-open trials in the measured requests.
BREAKER = {"failure_threshold": 3, "reset_timeout": 60, "max_reset_timeout": 60,
           "call_timeout": CALL_TIMEOUT, "slow_call_duration": CALL_TIMEOUT}


#: The query guard's circuit on the demo's database: statements outside ``protected`` (the
#: flusher's rounds, ``resilience_replay``'s own) are refused while it is open, and only they
#: try it again, so it tries again soon: with the defaults' 60 s, a trial that failed just
#: before the database came back kept the replay out for most of the test's wait.
GUARD_BREAKER = {"reset_timeout": 2, "max_reset_timeout": 2}


def resilience(alias):
    return {"STORE": "redis", "CACHE_ALIAS": alias, "SNAPSHOT_TTL": 0.1,
            "FALLBACK_TTL": FALLBACK_TTL, "FALLBACK_STALE_TTL": 300,
            "CIRCUIT_DEFAULTS": BREAKER, "CIRCUITS": {"crm.db": GUARD_BREAKER},
            "EXEMPT_STAFF": True}  # the client is staff: rate limits are not under test here


@pytest.fixture(params=[False, True], ids=["autocommit", "atomic_requests"])
def served(request, transactional_db, postgres, redis_url):
    """The demo under gunicorn, its database (the test database) behind the proxy, with
    ``ATOMIC_REQUESTS`` off and on. Stopped before the test database is flushed: a worker
    still writing its metrics would deadlock with the flush's TRUNCATE."""
    db = connection.settings_dict
    redis = {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": redis_url,
             "KEY_PREFIX": KEY_PREFIX}
    overrides = override_settings(CACHES={**settings.CACHES, "outage": redis},
                                  RESILIENCE_CRM=resilience("outage"))
    with Proxy(db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432)) as proxy, overrides:
        env = {
            "DJANGO_SETTINGS_MODULE": SETTINGS,  # for manage.py too
            "DATABASE_URL": database_url(db, HOST="127.0.0.1", PORT=proxy.port),
            "REDIS_URL": redis_url, "CACHE_KEY_PREFIX": KEY_PREFIX,
            "DATABASE_POOL_TIMEOUT": "0.5", "DATABASE_CONNECT_TIMEOUT": "2",
            "RESILIENCE_CRM_JSON": json.dumps(resilience("default")),
            "ATOMIC_REQUESTS": "1" if request.param else "0",
        }
        try:
            with serving(env) as server:
                yield SimpleNamespace(server=server, proxy=proxy, env=env)
        finally:
            caches["outage"].delete_pattern("*")


@pytest.fixture
def outage(served):
    """Demo data and a token, committed, with the database reachable."""
    contacts = [Contact.objects.create(name=f"Contact {n:02}", email=f"c{n}@example.com")
                for n in range(30)]
    agent = Agent.objects.create(name="Helper Bot", kind="ai")
    Conversation.objects.create(contact=contacts[0], agent=agent, subject="Invoice")
    user = User.objects.create_user("outage", password="secret", is_staff=True)
    token = Token.objects.create(user=user).key
    made = SimpleNamespace(server=served.server, proxy=served.proxy, env=served.env,
                           token=token, contacts=contacts)
    warm(made)
    yield made
    served.proxy.stalled = False


def warm(outage):
    """Fill the cache, and make every worker build its breakers (from the database) and a
    pooled connection: requests in parallel, so that every worker gets some."""

    def all_served():
        with ThreadPoolExecutor(6) as pool:
            replies = list(pool.map(lambda path: outage.server.get(path, token=outage.token),
                                    paths(outage) * 12))
        return all(reply.status == 200 and "x-resilience-fallback" not in reply.headers
                   for reply in replies)

    wait_until(all_served, "every worker serving from the database", timeout=60)


def paths(outage):
    first = outage.contacts[0].pk
    return ["/api/contacts/", "/api/contacts/?page=2", f"/api/contacts/{first}/",
            "/api/agents/?kind=ai", "/api/conversations/"]


def test_the_api_through_a_database_outage(outage):
    """Cached reads are served stale and fast; writes are queued and applied once after."""
    server, token = outage.server, outage.token
    outage.proxy.stalled = True
    outage.proxy.drop()  # reset every open connection; new ones are never answered

    during = []

    def circuit_open():
        during.extend(server.get(path, token=token) for path in paths(outage))
        return get_breaker("crm.read").state == core.OPEN

    wait_until(circuit_open, "the read circuit opening", timeout=60)
    assert all(reply.status == 200 for reply in during), [(r.status, r.body) for r in during
                                                           if r.status != 200]
    assert max(reply.seconds for reply in during) < CALL_TIMEOUT + MARGIN

    after = [server.get(path, token=token) for _ in range(10) for path in paths(outage)]
    assert all(reply.status == 200 for reply in after)
    assert all(reply.headers.get("x-resilience-fallback") == "stale" for reply in after)
    assert all(int(reply.headers["age"]) >= FALLBACK_TTL - 1 for reply in after)
    assert max(reply.seconds for reply in after) < CALL_TIMEOUT + MARGIN
    assert statistics.median(reply.seconds for reply in after) < 0.25  # ~ms; see benchmarks

    never_cached = server.get(f"/api/contacts/{outage.contacts[-1].pk}/", token=token)
    assert never_cached.status == 503, never_cached.body
    assert never_cached.headers["content-type"] == "application/problem+json"
    assert never_cached.body["code"] == "CIRCUIT_OPEN"
    assert int(never_cached.headers["retry-after"]) >= 1

    # Writes during the same outage: queued, then applied exactly once after it.
    for n in range(20):
        payload = {"name": f"Queued {n}", "email": f"queued{n}@example.com"}
        for _ in range(2 if n % 4 == 0 else 1):  # some clients send theirs twice
            reply = server.request("POST", "/api/contacts/", token=token, body=payload,
                                   headers={"Idempotency-Key": f"outage-{n}"})
            assert reply.status == 202, reply.body
            assert reply.body == {"status": "queued", "idempotency_key": f"outage-{n}"}
            assert reply.seconds < CALL_TIMEOUT + MARGIN

    outage.proxy.stalled = False  # the database is back: an operator replays the queue

    def replay():
        return subprocess.run(
            [sys.executable, "manage.py", "resilience_replay"], cwd=ROOT, timeout=60,
            env={**os.environ, **outage.env}, capture_output=True, text=True, check=False)

    wait_until(lambda: replay().returncode == 0, "a complete replay",  # 1: stopped early
               timeout=60)
    assert "applied 0," in replay().stdout  # nothing is left to apply twice
    emails = list(Contact.objects.filter(email__startswith="queued")
                  .values_list("email", flat=True))
    assert sorted(emails) == sorted(f"queued{n}@example.com" for n in range(20))
