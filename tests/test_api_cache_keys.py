"""The demo API's cached list pages: keyed by the parameters a list declares and nothing
else, refusing the rest before any read, and holding no link built from one reader's host,
on real PostgreSQL and Redis."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from model_bakery import baker
from rest_framework.pagination import PageNumberPagination
from rest_framework.test import APIClient

from crm_demo.crm.models import Contact
from resilience_crm.provider.cache import PREFIX
from resilience_crm.provider.facade import protected
from tests.demo_api import problem

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


def cached_reads(cache) -> set[str]:
    return set(cache.keys(f"{PREFIX}*"))


def test_unknown_query_parameters_are_a_400_before_any_read(api, redis_cache):
    baker.make(Contact, _quantity=3)
    assert api.get("/api/contacts/").status_code == 200  # the token's check is cached now
    keys = cached_reads(redis_cache)
    with CaptureQueriesContext(connection) as queries:
        for _ in range(50):
            body = problem(api.get(f"/api/contacts/?junk={uuid.uuid4().hex}"), 400,
                           "UNKNOWN_PARAMETER")
            assert "junk" in body["detail"]
    assert len(queries) == 0, [query["sql"] for query in queries]
    assert cached_reads(redis_cache) == keys


def test_declared_parameters_in_any_order_share_one_key(api, redis_cache):
    baker.make(Contact, _quantity=30, company="Acme", name="Ada")
    first = api.get("/api/contacts/?search=ada&company=Acme&page=2")
    assert first.status_code == 200 and len(first.json()["results"]) == 5
    keys = cached_reads(redis_cache)
    protected.cache.forget_local()  # as another process would see it
    with CaptureQueriesContext(connection) as queries:
        for query in ("page=2&company=Acme&search=ada", "format=json&company=Acme&page=2"
                                                        "&search=ada"):
            again = api.get(f"/api/contacts/?{query}")
            assert again.status_code == 200
            assert again.json()["results"] == first.json()["results"]
    assert len(queries) == 0, [query["sql"] for query in queries]
    assert cached_reads(redis_cache) == keys
    assert api.get("/api/contacts/?format=api&page=2").status_code == 200  # browsable


def test_a_parameter_the_paginator_declares_is_taken_and_keyed(api, redis_cache, monkeypatch):
    baker.make(Contact, _quantity=12)
    problem(api.get("/api/contacts/?page_size=5"), 400, "UNKNOWN_PARAMETER")
    monkeypatch.setattr(PageNumberPagination, "page_size_query_param", "page_size")
    assert len(api.get("/api/contacts/?page_size=5").json()["results"]) == 5
    assert len(api.get("/api/contacts/?page_size=10").json()["results"]) == 10


def test_a_cached_page_never_shows_another_readers_host(api, redis_cache, settings):
    settings.ALLOWED_HOSTS = ["attacker.example", "crm.example"]
    baker.make(Contact, _quantity=60)
    for page in ("", "?page=2"):
        api.get(f"/api/contacts/{page}", HTTP_HOST="attacker.example")
    protected.cache.forget_local()  # as another process would see it
    with CaptureQueriesContext(connection) as queries:
        first = api.get("/api/contacts/?format=json", HTTP_HOST="crm.example", secure=True)
        second = api.get("/api/contacts/?page=2", HTTP_HOST="crm.example")
    assert len(queries) == 0  # both served from what the first reader cached
    assert b"attacker.example" not in first.content + second.content
    assert first.json()["next"] == "https://crm.example/api/contacts/?format=json&page=2"
    assert second.json()["previous"] == "http://crm.example/api/contacts/"
    assert second.json()["next"] == "http://crm.example/api/contacts/?page=3"


def test_the_schema_documents_the_refusal_on_every_list(api):
    document = APIClient().get("/api/schema/?format=json").json()
    lists = [path for path, item in document["paths"].items()
             if any(p["name"] == "page" for p in item.get("get", {}).get("parameters", []))]
    assert sorted(lists) == ["/api/agents/", "/api/contacts/", "/api/conversations/",
                             "/api/platforms/"]
    for path in lists:
        answer = document["paths"][path]["get"]["responses"]["400"]
        kind, name = answer["$ref"].split("/")[-2:]
        content = document["components"][kind][name]["content"]
        assert content["application/problem+json"]["schema"] == {
            "$ref": "#/components/schemas/Problem"}, path
        problem(api.get(f"{path}?junk=1"), 400, "UNKNOWN_PARAMETER")
