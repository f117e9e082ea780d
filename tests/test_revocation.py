"""A revoked token is refused, never served from the stale cache: after ``token.delete()``,
the user's deactivation or the user's deletion, requests from forked processes (each with
threads, and each with the token still in its per-process layer) on the real PostgreSQL
and Redis get no 200, also while another process holds the refresh lease, while
``crm.auth`` is open and while the database refuses connections."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from django.contrib.auth import get_user_model
from django.db import connections
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from crm_demo.crm.authentication import cache_key
from resilience_crm.provider import cache as fallback
from resilience_crm.provider.facade import protected
from tests.clock import Clock
from tests.databases import CLOSED_PORT
from tests.demo_api import force_open
from tests.processes import ctx, run_processes
from tests.ratelimit_helpers import set_tier

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]

PROCESSES, THREADS, REQUESTS = 4, 4, 10
#: Seconds the lease of a refresh that never ends is held (it then expires in Redis).
DEAD_LEASE = 2
UNLIMITED = {op: "100000/min" for op in ("read", "write", "rpc", "auth")}


def delete_token(token: Token) -> None:
    Token.objects.get(pk=token.pk).delete()


def deactivate_user(token: Token) -> None:
    user = get_user_model().objects.get(pk=token.user_id)
    user.is_active = False
    user.save()


def delete_user(token: Token) -> None:
    get_user_model().objects.get(pk=token.user_id).delete()


def requests_after_revocation(index, barrier, revoke, token, local_clock, database_down,
                              results):
    """In a worker process that checked the token before: process 0 revokes it through the
    ORM; then each process, once its per-process layer's ``LOCAL_TTL`` has passed, sends
    ``THREADS`` x ``REQUESTS`` requests with it and reports their statuses."""
    barrier.wait()
    if index == 0:
        revoke(token)
    barrier.wait()
    local_clock.now += fallback.LOCAL_TTL  # the other processes' window in docs/provider.md
    if database_down:
        connections.close_all()
        connections["default"].settings_dict.update(HOST="127.0.0.1", PORT=CLOSED_PORT)
    statuses: Counter = Counter()
    lock = threading.Lock()

    def send():
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
        try:
            for _ in range(REQUESTS):
                status = client.get("/api/contacts/").status_code
                with lock:
                    statuses[status] += 1
        finally:
            connections.close_all()

    threads = [threading.Thread(target=send) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put(dict(statuses))


@pytest.mark.parametrize("revoke", [delete_token, deactivate_user, delete_user])
@pytest.mark.parametrize(("while_", "expected"), [
    ("nothing else", {401}),
    ("a refresh lease is held", {401, 504}),  # 504: waited for a leader that never answered
    ("crm.auth is open", {503}),
    ("the database refuses connections", {503}),
])
def test_no_request_with_a_revoked_token_gets_200(api, settings, monkeypatch, revoke, while_,
                                                  expected):
    # AUTH_FAILURES off: its 429s for the 401s below are not what this test is about.
    settings.RESILIENCE_CRM = {**settings.RESILIENCE_CRM, "AUTH_FAILURES": None,
                               "CIRCUITS": {"crm.auth": {"call_timeout": DEAD_LEASE}}}
    set_tier("free", UNLIMITED)
    local_clock = Clock()  # of the per-process layers
    monkeypatch.setattr(protected, "cache", fallback.ReadCache(api.clock, local_clock))
    token = Token.objects.get(user=api.user)
    assert api.get("/api/contacts/").status_code == 200  # cached in every worker forked below
    if while_ == "a refresh lease is held":
        assert protected.cache.take_lease(cache_key(token.key), "a dead worker", DEAD_LEASE)
    if while_ == "crm.auth is open":
        force_open("crm.auth")
    connections.close_all()
    results = ctx.SimpleQueue()  # see tests/processes.py
    run_processes(requests_after_revocation, ctx.Barrier(PROCESSES), revoke, token,
                  local_clock, while_ == "the database refuses connections", results,
                  count=PROCESSES, timeout=120)
    statuses: Counter = Counter()
    for _ in range(PROCESSES):
        statuses.update(results.get())
    total = PROCESSES * THREADS * REQUESTS
    assert sum(statuses.values()) == total
    assert statuses[200] == 0, f"{statuses[200]} of {total} got 200: {dict(statuses)}"
    assert set(statuses) <= expected, dict(statuses)
