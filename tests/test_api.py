"""The demo API through ``protected``: CRUD, pagination, filters, idempotent creates, problem
responses and token checks that outlive the database, on real PostgreSQL and Redis."""

from __future__ import annotations

import pytest
from django.db import connection
from model_bakery import baker
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from crm_demo.crm.models import Agent, Contact, Conversation, Message
from resilience_crm import get_breaker
from resilience_crm.models import QueuedWrite
from resilience_crm.provider import probe, queue
from resilience_crm.provider.facade import protected
from tests.demo_api import PASSWORD, STALE_TTL, TTL, force_open, problem

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


def test_a_token_for_a_username_and_password(api):
    client = APIClient()
    response = client.post("/api/auth/token/", {"username": "ada", "password": PASSWORD})
    assert response.status_code == 200
    assert response.json()["token"] == Token.objects.get(user=api.user).key
    assert client.post("/api/auth/token/", {"username": "ada", "password": "no"}
                       ).status_code == 400


def test_the_api_needs_a_valid_token(api):
    assert APIClient().get("/api/contacts/").status_code == 401
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-token")
    assert client.get("/api/contacts/").status_code == 401


def test_lists_are_paginated_and_filtered(api):
    baker.make(Contact, _quantity=30, company="Acme")
    baker.make(Contact, name="Grace Hopper", email="grace@example.com", company="Navy")
    body = api.get("/api/contacts/").json()
    assert body["count"] == 31 and len(body["results"]) == 25 and body["next"]
    assert api.get("/api/contacts/?page=2").json()["results"]
    assert [c["name"] for c in api.get("/api/contacts/?search=hopper").json()["results"]] == [
        "Grace Hopper"]
    assert api.get("/api/contacts/?company=Navy").json()["count"] == 1
    baker.make(Agent, kind="ai", _quantity=2)
    baker.make(Agent, kind="human")
    assert api.get("/api/agents/?kind=ai").json()["count"] == 2
    assert api.get("/api/conversations/?contact=x").status_code == 400


def test_details_updates_and_deletes(api):
    contact = baker.make(Contact, name="Ada", email="ada@example.com")
    assert api.get(f"/api/contacts/{contact.pk}/").json()["name"] == "Ada"
    assert api.get("/api/contacts/999999/").status_code == 404
    response = api.patch(f"/api/contacts/{contact.pk}/", {"company": "Engines"}, format="json")
    assert response.status_code == 200 and response.json()["company"] == "Engines"
    assert api.get(f"/api/contacts/{contact.pk}/").json()["company"] == "Engines"  # not cached
    assert api.get("/api/contacts/").json()["results"][0]["company"] == "Engines"
    assert api.delete(f"/api/contacts/{contact.pk}/").status_code == 204
    assert not Contact.objects.exists()


def test_a_create_with_an_idempotency_key_applies_once(api):
    payload = {"name": "Ada", "email": "ada@example.com"}
    first = api.post("/api/contacts/", payload, format="json", HTTP_IDEMPOTENCY_KEY="abc")
    assert first.status_code == 201 and first.json()["name"] == "Ada"
    again = api.post("/api/contacts/", payload, format="json", HTTP_IDEMPOTENCY_KEY="abc")
    assert again.status_code == 201 and again.json() == first.json()
    assert "Idempotent-Replayed" not in first and again["Idempotent-Replayed"] == "true"
    assert Contact.objects.count() == 1
    other = api.post("/api/contacts/", {**payload, "name": "Eve"}, format="json",
                     HTTP_IDEMPOTENCY_KEY="abc")
    problem(other, 422, "IDEMPOTENCY_CONFLICT")
    assert api.post("/api/contacts/", {"name": "No email"}, format="json").status_code == 400


def test_a_create_whose_key_is_being_applied_is_a_409(api):
    payload = {"name": "Ada", "email": "ada@example.com"}
    QueuedWrite.objects.create(
        name="contacts.create", idempotency_key=f"{api.user.pk}:contacts.create:abc",
        payload=payload, payload_hash=queue.payload_hash(payload), state="applying")
    response = api.post("/api/contacts/", payload, format="json", HTTP_IDEMPOTENCY_KEY="abc")
    problem(response, 409, "IDEMPOTENCY_IN_FLIGHT")
    assert not Contact.objects.exists()


def test_conversations_and_their_messages(api):
    contact, agent = baker.make(Contact), baker.make(Agent, kind="ai")
    response = api.post("/api/conversations/", {"contact": contact.pk, "agent": agent.pk,
                                                "subject": "Invoice"}, format="json")
    assert response.status_code == 201, response.content
    pk = response.json()["id"]
    message = api.post(f"/api/conversations/{pk}/messages/", {"sender": "contact",
                                                              "body": "Hello"}, format="json")
    assert message.status_code == 201, message.content
    assert [m["body"] for m in api.get(f"/api/conversations/{pk}/messages/").json()] == [
        "Hello"]
    assert Message.objects.get().conversation_id == pk
    missing = api.post("/api/conversations/", {"contact": 999999, "subject": "x"},
                       format="json")
    assert missing.status_code == 400 and "contact" in missing.json()["errors"]
    assert not Conversation.objects.filter(subject="x").exists()


def test_an_open_circuit_serves_cached_lists_labelled_stale(api):
    baker.make(Contact, _quantity=3)
    assert api.get("/api/contacts/").json()["count"] == 3
    api.clock.now += TTL + 5
    force_open("crm.read")
    response = api.get("/api/contacts/")
    assert response.status_code == 200 and response.json()["count"] == 3
    assert response["X-Resilience-Fallback"] == "stale"
    assert response["Age"] == str(TTL + 5)


def fail_on_query(execute, sql, params, many, context):
    raise AssertionError(f"the database was queried: {sql}")


def test_nothing_cached_and_an_open_circuit_is_a_503_problem(api):
    contact = baker.make(Contact)
    force_open("crm.read")
    body = problem(api.get(f"/api/contacts/{contact.pk}/"), 503, "CIRCUIT_OPEN")
    assert body["circuit"] == "crm.read"


def test_past_the_stale_bound_the_client_gets_503_circuit_open(api):
    baker.make(Contact)
    api.get("/api/contacts/")
    api.clock.now += TTL + STALE_TTL - 1
    force_open("crm.read")
    assert api.get("/api/contacts/")["X-Resilience-Fallback"] == "stale"
    api.clock.now += 2
    response = api.get("/api/contacts/")
    problem(response, 503, "CIRCUIT_OPEN")
    assert int(response["Retry-After"]) >= 1
    assert "X-Resilience-Fallback" not in response


def test_a_create_during_an_outage_is_queued_and_applied_after_it(api):
    force_open("crm.write")
    response = api.post("/api/contacts/", {"name": "Ada", "email": "ada@example.com"},
                        format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert response.status_code == 202
    assert response.json() == {"status": "queued", "idempotency_key": "k-1"}
    assert "Idempotent-Replayed" not in response
    repeat = api.post("/api/contacts/", {"name": "Ada", "email": "ada@example.com"},
                      format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert repeat.status_code == 202 and repeat["Idempotent-Replayed"] == "true"
    assert not Contact.objects.exists()
    get_breaker("crm.write").force("forced_closed", reason="database back")
    assert queue.replay().applied == 1
    assert Contact.objects.get().name == "Ada"
    again = api.post("/api/contacts/", {"name": "Ada", "email": "ada@example.com"},
                     format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert again.status_code == 201 and Contact.objects.count() == 1
    assert again["Idempotent-Replayed"] == "true" and again.json()["name"] == "Ada"


@pytest.mark.parametrize("database", ["up", "down"])
def test_a_message_the_database_could_not_store_is_a_400_up_or_down(api, database):
    if database == "down":
        force_open("crm.write")
    response = api.post(f"/api/conversations/{'9' * 250}/messages/",
                        {"sender": "contact", "body": "Hello"}, format="json",
                        HTTP_IDEMPOTENCY_KEY="m1")
    body = problem(response, 400, "INVALID_WRITE")  # never a 202 replay cannot apply
    assert "entity" in body["detail"] and "conversation_id" in body["detail"]
    assert probe.stream_length() == 0 and not QueuedWrite.objects.exists()


def test_an_authenticated_client_keeps_reading_while_the_database_is_down(api):
    api.get("/api/contacts/")
    api.clock.now += TTL + 1
    force_open("crm.auth", "crm.read")
    with connection.execute_wrapper(fail_on_query):
        response = api.get("/api/contacts/")
    assert response.status_code == 200
    assert response["X-Resilience-Fallback"] == "stale"


def test_a_revoked_token_stops_working_within_the_cache_ttl(api):
    assert api.get("/api/contacts/").status_code == 200
    with connection.cursor() as cursor:  # revoked behind the app's back: no signal
        cursor.execute("DELETE FROM authtoken_token")
    assert api.get("/api/contacts/").status_code == 200  # cached, fresh
    api.clock.now += TTL + 1
    assert api.get("/api/contacts/").status_code == 401


def test_a_token_deleted_through_the_orm_stops_working_at_once(api):
    assert api.get("/api/contacts/").status_code == 200
    Token.objects.all().delete()
    protected.cache.forget_local()  # as another process would see it
    assert api.get("/api/contacts/").status_code == 401
