"""The demo's Redis cache holds signed JSON: what the app and the demo cache survives it, and
what someone else wrote to Redis is never unpickled, run or served."""

from __future__ import annotations

import importlib
import json
import pickle
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import caches
from django.db import connection
from django_redis import get_redis_connection
from model_bakery import baker
from rest_framework.test import APIClient

import crm_demo.settings
from crm_demo.crm.authentication import cache_key
from crm_demo.crm.models import Agent, Contact
from resilience_crm.provider import cache as fallback
from resilience_crm.provider.facade import protected
from resilience_crm.ratelimit import tiers
from tests.demo_api import TTL, force_open

pytestmark = [pytest.mark.redis]


@pytest.fixture
def demo_cache(settings, monkeypatch, redis_cache, redis_url):
    """The ``redis`` alias configured as the demo configures its cache for ``REDIS_URL``
    (under the suite's key prefix, which ``redis_cache`` empties)."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    try:
        demo = importlib.reload(crm_demo.settings).CACHES["default"]
    finally:
        monkeypatch.undo()
        importlib.reload(crm_demo.settings)
    settings.CACHES = {**settings.CACHES, "redis": {**demo, "KEY_PREFIX": "rcrm-test"}}
    settings.RESILIENCE_CRM = {"STORE": "redis", "CACHE_ALIAS": "redis"}
    return caches["redis"]


def plant(key: str, payload: bytes) -> None:
    """Write ``payload`` straight into Redis under the read cache's entry for ``key``."""
    get_redis_connection("redis").set(caches["redis"].make_key(fallback.PREFIX + key), payload)


class OpensAFile:
    """Unpickling this creates the file at ``path``: code chosen by whoever wrote to Redis."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def test_a_pickled_payload_planted_in_redis_is_never_unpickled(demo_cache, db, tmp_path):
    ran = tmp_path / "ran"
    plant("contacts:detail:1", pickle.dumps({"v": OpensAFile(ran), "t": 2e9, "s": 0}))
    assert protected.read("contacts:detail:1", lambda: {"name": "Ada"}) == {"name": "Ada"}
    assert not ran.exists()


@pytest.mark.postgres
@pytest.mark.parametrize("encode", [pickle.dumps, lambda value: json.dumps(value).encode()],
                         ids=["pickle", "json"])
def test_a_superuser_planted_in_redis_is_never_served(demo_cache, api, encode):
    token = "f" * 40  # no such token in the database
    forged = {"pk": api.user.pk, "username": "mallory", "is_active": True, "is_staff": True,
              "is_superuser": True}
    plant(cache_key(token), encode({"v": forged, "t": api.clock(), "s": 0}))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert client.get("/api/contacts/").status_code == 401


def fail_on_query(execute, sql, params, many, context):
    raise AssertionError(f"the database was queried: {sql}")


@pytest.mark.postgres
def test_what_the_demo_caches_is_served_the_same_from_redis(demo_cache, api):
    contact = baker.make(Contact, name="Ada", email="ada@example.com")
    baker.make(Agent, kind="ai")
    paths = ["/api/contacts/", f"/api/contacts/{contact.pk}/", "/api/agents/?kind=ai",
             "/api/analytics/summary/"]
    fresh = {path: api.get(path).json() for path in paths}
    api.clock.now += TTL + 1
    force_open("crm.auth", "crm.read")
    protected.cache.forget_local()  # as another process would see it
    with connection.execute_wrapper(fail_on_query):
        for path in paths:
            response = api.get(path)
            assert response.status_code == 200, path
            assert response["X-Resilience-Fallback"] == "stale"
            assert response.json() == fresh[path]


def test_the_app_own_entries_survive_the_serializer(demo_cache, db):
    tiers.changed()
    assert len(demo_cache.get(tiers.VERSION_KEY)) == 32
    key, cache = "contacts:list:", protected.cache
    cache.publish_error(key, "CIRCUIT_OPEN", "open", 2.5)
    error = cache.get_error(key, since=0)
    assert error is not None and (error["code"], error["retry_after"]) == ("CIRCUIT_OPEN", 2.5)
    assert cache.take_lease(key, "me", 5) and cache.lease_held(key)
    cache.release_lease(key, "me")
    assert not cache.lease_held(key)
    cache.invalidate("contacts")
    cache.invalidate("contacts")
    assert cache.get_many([key], "contacts")[1] == 2
