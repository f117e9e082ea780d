"""Connected platforms, the analytics summary and the views' op classes in the demo API, on
real PostgreSQL and Redis."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.utils import timezone
from model_bakery import baker
from rest_framework.test import APIClient

from crm_demo.crm.models import Agent, Contact, Conversation, Message, Platform
from tests.databases import CLOSED_PORT, default_database_through
from tests.demo_api import PASSWORD, TTL, force_open, problem
from tests.ratelimit_helpers import set_tier

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


def test_platforms_are_listed_created_and_filtered(api):
    created = api.post("/api/platforms/", {"name": "Support inbox", "kind": "email"},
                       format="json", HTTP_IDEMPOTENCY_KEY="p-1")
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["status"] == "connected" and body["connected_at"]
    baker.make(Platform, name="WhatsApp", kind="whatsapp", status="paused")
    assert api.get("/api/platforms/").json()["count"] == 2
    assert [p["name"] for p in api.get("/api/platforms/?kind=whatsapp").json()["results"]] == [
        "WhatsApp"]
    assert api.get("/api/platforms/?status=paused").json()["count"] == 1
    assert api.post("/api/platforms/", {"name": "x", "kind": "fax"},
                    format="json").status_code == 400


def test_a_platform_name_is_taken_once(api):
    baker.make(Platform, name="Support inbox", kind="email")
    again = api.post("/api/platforms/", {"name": "Support inbox", "kind": "email"},
                     format="json")
    assert again.status_code == 400 and "name" in again.json()["errors"]
    other = baker.make(Platform, name="Sales", kind="email")
    renamed = api.patch(f"/api/platforms/{other.pk}/", {"name": "Support inbox"},
                        format="json")
    assert renamed.status_code == 400 and "name" in renamed.json()["errors"]
    assert api.patch(f"/api/platforms/{other.pk}/", {"status": "error"},
                     format="json").json()["status"] == "error"


def test_a_platform_created_while_the_database_is_down_is_queued(api):
    force_open("crm.write")
    response = api.post("/api/platforms/", {"name": "Hooks", "kind": "webhook"},
                        format="json", HTTP_IDEMPOTENCY_KEY="p-2")
    assert response.status_code == 202 and response.json()["status"] == "queued"
    assert not Platform.objects.exists()


def make_crm():
    contacts = baker.make(Contact, _quantity=3)
    ai, human = baker.make(Agent, kind="ai"), baker.make(Agent, kind="human")
    baker.make(Conversation, contact=contacts[0], agent=ai, status="open", _quantity=2)
    closed = baker.make(Conversation, contact=contacts[1], agent=human, status="closed")
    now = timezone.now()
    for age in (0, 0, 3, 8):
        message = baker.make(Message, conversation=closed, sender="contact")
        Message.objects.filter(pk=message.pk).update(created_at=now - timedelta(days=age))
    return now.date()


def test_the_summary_counts_the_crm(api):
    today = make_crm()
    response = api.get("/api/analytics/summary/")
    assert response.status_code == 200
    body = response.json()
    assert body["contacts"] == 3
    assert body["conversations_by_status"] == {"open": 2, "closed": 1}
    assert body["agents_by_kind"] == {"ai": 1, "human": 1}
    per_day = body["messages_per_day"]
    assert [day["date"] for day in per_day] == [
        (today - timedelta(days=n)).isoformat() for n in range(6, -1, -1)]
    assert [day["messages"] for day in per_day] == [0, 0, 0, 1, 0, 0, 2]  # 8 days ago: out
    assert "X-Resilience-Fallback" not in response
    assert APIClient().get("/api/analytics/summary/").status_code == 401


def test_the_summary_is_served_stale_and_labelled_when_the_database_is_down(api):
    make_crm()
    assert api.get("/api/analytics/summary/").json()["contacts"] == 3
    baker.make(Contact)  # not in the cached figures
    api.clock.now += TTL + 5
    with default_database_through(SimpleNamespace(port=CLOSED_PORT)):  # refused: a real fault
        response = api.get("/api/analytics/summary/")
    assert response.status_code == 200, response.content
    assert response.json()["contacts"] == 3
    assert response["X-Resilience-Fallback"] == "stale"
    assert response["Age"] == str(TTL + 5)
    assert api.get("/api/analytics/summary/").json()["contacts"] == 4  # back: fresh again


def test_no_summary_cached_and_the_circuit_open_is_a_503(api):
    force_open("crm.read")
    body = problem(api.get("/api/analytics/summary/"), 503, "CIRCUIT_OPEN")
    assert body["circuit"] == "crm.read"


def test_the_token_view_spends_the_auth_budget(api):
    set_tier("anonymous", {"auth": "2/hour"})  # no write limit: only "auth" can refuse
    client = APIClient()
    for _ in range(2):
        assert client.post("/api/auth/token/", {"username": "ada", "password": PASSWORD}
                           ).status_code == 200
    refused = client.post("/api/auth/token/", {"username": "ada", "password": PASSWORD})
    assert refused.status_code == 429
    assert int(refused["Retry-After"]) > 60
