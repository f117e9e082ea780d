"""Invariant 3 under real concurrency: 640 simultaneous requests of one user through gunicorn
(4 workers x 8 threads) at 100/day admit exactly 100; after an admin tier change, the same
with a ``pro`` user at the pro limit, on every worker within one second. Daily rates: a
storm refills one request in 14 minutes or more, longer than it takes on any machine, so
only the limit decides what is admitted. The same storm, with Redis absent from the
settings, on the database limiter store."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.db import connection
from rest_framework.authtoken.models import Token

from resilience_crm.models import Tier
from resilience_crm.ratelimit.stores.database import DatabaseLimiterStore
from tests.gunicorn_server import get, gunicorn

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]

REQUESTS = 640
CLIENTS = 64


@pytest.fixture
def server(postgres, redis_cache, transactional_db):
    Tier.objects.update_or_create(name="free", defaults={"limits": {
        "read": "100/day", "rpc": "10000/day"}})
    Tier.objects.update_or_create(name="pro", defaults={"limits": {"read": "1000/day"}})
    name = connection.settings_dict["NAME"]
    with gunicorn("tests.gunicorn_settings", env={"RCRM_TEST_DATABASE": name}) as port:
        yield port


def storm(port: int, token: str, path: str = "/things/", count: int = REQUESTS) -> Counter[int]:
    """``count`` requests from ``CLIENTS`` threads released together; statuses counted."""
    barrier = threading.Barrier(CLIENTS)
    headers = {"Authorization": f"Token {token}"}

    def client(share: int) -> list[int]:
        barrier.wait(timeout=60)
        return [get(port, path, headers) for _ in range(share)]

    shares = [count // CLIENTS + (1 if i < count % CLIENTS else 0) for i in range(CLIENTS)]
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(client, shares))
    return Counter(status for statuses in results for status in statuses)


def user_token(django_user_model: Any, name: str, **extra: Any) -> tuple[Any, str]:
    user = django_user_model.objects.create_user(name, password="pw", **extra)
    return user, Token.objects.create(user=user).key


def test_exactly_the_limit_is_admitted_then_the_pro_limit_after_an_admin_change(
        server, django_user_model, client, settings) -> None:
    settings.RESILIENCE_CRM = {"CACHE_ALIAS": "redis"}  # as the workers: one shared cache
    for trial in range(2):
        _, free_token = user_token(django_user_model, f"free-user-{trial}")
        assert storm(server, free_token) == Counter({200: 100, 429: 540}), f"trial {trial}"

    # A second user makes every worker cache them as "free" first.
    pro_user, pro_token = user_token(django_user_model, "soon-pro")
    assert storm(server, pro_token, path="/rpc/", count=CLIENTS) == Counter({200: CLIENTS})

    # The operator sets pro to 150/day and moves the user to pro, in the admin.
    admin, _ = user_token(django_user_model, "operator", is_staff=True, is_superuser=True)
    client.force_login(admin)
    pro = Tier.objects.get(name="pro")
    response = client.post(f"/admin/resilience_crm/tier/{pro.pk}/change/", {
        "name": "pro", "limits": json.dumps({"read": "150/day"}), "description": ""})
    assert response.status_code == 302, response.content
    response = client.post("/admin/resilience_crm/tierassignment/add/", {
        "user": pro_user.pk, "tier": pro.pk, "limits": "{}"})
    assert response.status_code == 302, response.content
    changed = time.monotonic()

    # The promise under test: within one second every worker applies the change.
    time.sleep(max(0.0, 1.0 - (time.monotonic() - changed)))
    assert storm(server, pro_token) == Counter({200: 150, 429: 490})


@pytest.fixture
def server_without_redis(postgres, transactional_db):
    """Gunicorn whose settings have no Redis at all: ``auto`` keeps the limits in PostgreSQL
    (the database limiter store)."""
    Tier.objects.update_or_create(name="free", defaults={"limits": {"read": "100/day"}})
    DatabaseLimiterStore().clear()
    name = connection.settings_dict["NAME"]
    with gunicorn("tests.gunicorn_settings_database", env={"RCRM_TEST_DATABASE": name}) as port:
        yield port
    DatabaseLimiterStore().clear()


def test_exactly_the_limit_is_admitted_with_the_limits_in_postgresql(
        server_without_redis, django_user_model) -> None:
    for trial in range(2):
        _, token = user_token(django_user_model, f"pg-user-{trial}")
        assert storm(server_without_redis, token) == Counter({200: 100, 429: 540}), (
            f"trial {trial}")
