"""The demo under gunicorn listening on ``[::]``, so IPv4 clients reach it as
``::ffff:a.b.c.d``: each IPv4 client keeps a login budget of its own. Loopback addresses
127.0.0.2 and 127.0.0.3 stand for two clients."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.core.cache import caches
from django.db import connection
from django.test import override_settings

from tests.databases import database_url
from tests.demo_server import SETTINGS, Server, serving
from tests.ratelimit_helpers import set_tier

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]

KEY_PREFIX = "rcrm-dual-stack"


@pytest.fixture(scope="module")
def server(django_db_setup: Any, postgres: Any, redis_url: str) -> Iterator[Server]:
    redis = {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": redis_url,
             "KEY_PREFIX": KEY_PREFIX}
    env = {"DJANGO_SETTINGS_MODULE": SETTINGS, "REDIS_URL": redis_url,
           "DATABASE_URL": database_url(connection.settings_dict),
           "CACHE_KEY_PREFIX": KEY_PREFIX, "RESILIENCE_CRM_JSON": json.dumps({})}
    with override_settings(CACHES={**django_settings.CACHES, "dual_stack": redis}):
        caches["dual_stack"].delete_pattern("*")
        try:
            with serving(env, workers=2, dual_stack=True) as served:
                yield served
        finally:
            caches["dual_stack"].delete_pattern("*")


def login(server: Server, source: str, password: str) -> int:
    return server.request("POST", "/api/auth/token/", source=source,
                          body={"username": "ada", "password": password}).status


def test_ipv4_clients_keep_their_own_login_budget(server: Server, transactional_db: Any,
                                                  settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]  # the demo's
    User.objects.create_user("ada", password="right")
    set_tier("anonymous", {"auth": "10/h"})  # nothing refills while the test runs
    assert [login(server, "127.0.0.2", "wrong") for _ in range(10)] == [400] * 10
    assert login(server, "127.0.0.2", "wrong") == 429
    # Another IPv4 client is not in the guesser's bucket, though both arrive as ::ffff:...
    assert login(server, "127.0.0.3", "right") == 200
