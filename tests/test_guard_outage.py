"""The query guard under gunicorn, PostgreSQL behind a fault proxy that blackholes it: views
that know nothing of the app (DRF's stock token authentication, the admin's changelist)
answer 503 at once once the circuit has opened, instead of each waiting out the pool; after
the proxy passes traffic again, 200 within ``reset_timeout`` and a few seconds.

Timings are compared against generous bounds only (half the pool's wait); the figures are in
bench/guard.py."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from rest_framework.authtoken.models import Token

from crm_demo.crm import client
from tests.gunicorn_server import gunicorn
from tests.proxy import Proxy
from tests.waiting import wait_until

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]

#: psycopg's pool waits this long for a connection: what every request paid before the guard.
POOL_TIMEOUT = 4.0
#: An answer refused by the guard comes well within the pool's wait (generous, for a loaded
#: machine: the refusal itself takes milliseconds).
FAST = POOL_TIMEOUT / 2
#: Long enough that no half-open trial (which goes to the database, and waits out the pool)
#: falls among the answers timed after the circuit opened, however long the workers took to
#: see it open on a loaded machine (at 5 s one did: a refusal took 4.1 s).
RESET_TIMEOUT = 20
RESILIENCE = {
    "STORE": "redis", "CACHE_ALIAS": "redis", "SNAPSHOT_TTL": 0.1,
    "PROTECT_QUERIES": {"default": "crm.db"},
    "CIRCUITS": {"crm.db": {"failure_threshold": 2, "failure_rate_threshold": 1.0,
                            "reset_timeout": RESET_TIMEOUT, "max_reset_timeout": RESET_TIMEOUT}},
}
API = "/api/users/"
CHANGELIST = "/admin/auth/user/"


@pytest.fixture
def served(transactional_db, postgres, redis_cache):
    """The guard's views under gunicorn on the test database behind a proxy; yields the
    proxy, the port and the credentials (a token, an admin session cookie)."""
    admin = User.objects.create_superuser("root", password="x")  # noqa: S106
    token = Token.objects.create(user=admin).key
    browser = Client()
    browser.force_login(admin)
    cookie = f"sessionid={browser.cookies['sessionid'].value}"
    db = connection.settings_dict
    with Proxy(db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432)) as proxy:
        env = {"RCRM_TEST_DATABASE": db["NAME"], "RCRM_DATABASE_PORT": str(proxy.port),
               "RCRM_POOL_TIMEOUT": str(POOL_TIMEOUT),
               "RESILIENCE_CRM_JSON": json.dumps(RESILIENCE)}
        try:
            with gunicorn("tests.guard_settings", workers=2, threads=1, env=env) as port:
                yield proxy, port, token, cookie
        finally:
            redis_cache.delete_pattern("*")


def ask(port: int, path: str, token: str, cookie: str) -> client.Reply:
    if path == API:
        return client.request(port, "GET", path, token=token)
    return client.request(port, "GET", path, headers={"Cookie": cookie})


def test_every_answer_is_a_quick_503_while_the_circuit_is_open(served):
    proxy, port, token, cookie = served
    for path in (API, CHANGELIST):
        assert ask(port, path, token, cookie).status == 200

    proxy.stalled = True  # blackholed: nothing forwarded, new connections unanswered
    proxy.drop()

    def refused() -> bool:
        return all(ask(port, path, token, cookie).status == 503 for path in (API, CHANGELIST))

    wait_until(refused, "the circuit open, both views refused", timeout=90, interval=0.1)

    replies = {path: [ask(port, path, token, cookie) for _ in range(5)]
               for path in (API, CHANGELIST)}
    for path, answers in replies.items():
        assert [reply.status for reply in answers] == [503] * 5, path
        slowest = max(reply.seconds for reply in answers)
        assert slowest < FAST, f"{path}: a refusal took {slowest:.2f}s"
        assert all(int(reply.headers["retry-after"]) >= 1 for reply in answers)
    api = replies[API][0]
    assert api.headers["content-type"] == "application/problem+json"
    assert (api.body["code"], api.body["circuit"]) == ("CIRCUIT_OPEN", "crm.db")
    page = replies[CHANGELIST][0]
    assert page.headers["content-type"].startswith("text/html")
    assert "crm.db" in page.body

    proxy.restore()

    def served_again() -> bool:
        return all(ask(port, path, token, cookie).status == 200 for path in (API, CHANGELIST))

    # The next trial comes within reset_timeout; one that began just before the restore may
    # wait out the pool and reopen the circuit first. Plus a loaded machine's few seconds.
    wait_until(served_again, "200 again", timeout=RESET_TIMEOUT + POOL_TIMEOUT + 15,
               interval=0.2)
