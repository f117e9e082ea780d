"""Logins survive a Redis outage: with Redis cut or stalled and PostgreSQL fine, the demo's
``POST /api/auth/token/`` answers with a token, limited by each process's share of the
``auth`` limit (``FAIL_OPEN``), and a guessing flood is still refused."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from tests.demo_api import PASSWORD
from tests.ratelimit_helpers import set_tier

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.django_db]


@pytest.fixture
def demo_on_proxied_redis(settings: Any, redis_proxy: Any, postgres: Any) -> Any:
    """The demo's breakers, cache and limits on Redis through the proxy; a user ``ada``."""
    settings.RESILIENCE_CRM = {"STORE": "redis", "CACHE_ALIAS": "proxied",
                               "EXPECTED_PROCESSES": 2}
    set_tier("anonymous", {"auth": "10/min"})
    User.objects.create_user("ada", password=PASSWORD)
    return redis_proxy


def logins(count: int, password: str = PASSWORD) -> list[int]:
    client = APIClient()
    return [client.post("/api/auth/token/", {"username": "ada", "password": password}
                        ).status_code for _ in range(count)]


@pytest.mark.parametrize("fault", ["cut", "stalled"])
def test_logins_answer_while_redis_is_down(demo_on_proxied_redis: Any, fault: str) -> None:
    proxy = demo_on_proxied_redis
    assert logins(1) == [200]
    if fault == "cut":
        proxy.cut()
    else:
        proxy.stalled = True
        proxy.drop()
    # 10/min across 2 expected processes: this process admits 5 logins, then refuses.
    assert logins(6) == [200] * 5 + [429]
