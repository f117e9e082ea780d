"""``seed_demo``: thousands of rows fast, a user in each tier, and nothing twice."""

from __future__ import annotations

import io
import re

import pytest
from django.core.management import CommandError, call_command
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from crm_demo.crm.models import Agent, Contact, Conversation, Message, Platform
from resilience_crm.models import TierAssignment
from resilience_crm.ratelimit import principals as clients

pytestmark = [pytest.mark.postgres]


def seed(*args):
    out = io.StringIO()
    call_command("seed_demo", "--no-progress", *args, stdout=out)
    return out.getvalue()


def counts():
    return {model.__name__: model.objects.count()
            for model in (Contact, Agent, Platform, Conversation, Message)}


@pytest.mark.django_db
def test_seeding_twice_creates_nothing_more_and_a_larger_run_adds_the_difference(postgres):
    seed("--contacts", "300", "--conversations", "400", "--messages", "3")
    first = counts()
    assert first["Contact"] == 300 and first["Conversation"] == 400
    assert first["Message"] == 1200 and first["Platform"] >= 4
    assert set(Platform.objects.values_list("kind", flat=True)) == {
        "email", "whatsapp", "slack", "webhook"}
    assert set(Agent.objects.values_list("kind", flat=True)) == {"ai", "human"}
    assert set(Conversation.objects.values_list("status", flat=True)) == {"open", "closed"}
    assert Contact.objects.filter(email="ada@example.com").exists()
    seed("--contacts", "300", "--conversations", "400", "--messages", "3")
    assert counts() == first
    seed("--contacts", "350", "--conversations", "450", "--messages", "3")
    grown = counts()
    assert grown["Contact"] == 350 and grown["Conversation"] == 450
    assert grown["Message"] == 1200 + 50 * 3


@pytest.mark.django_db
def test_the_default_seed_is_a_few_thousand_rows(postgres):
    output = seed()
    assert Contact.objects.count() == 2000 and Conversation.objects.count() == 3000
    assert "2000 contacts" in output
    assert Contact.objects.values("email").distinct().count() == 2000


@pytest.mark.django_db(transaction=True)
def test_a_user_in_each_tier_with_a_token_that_works(postgres, settings):
    settings.RESILIENCE_CRM = {"RATELIMIT_STORE": "memory"}
    output = seed("--contacts", "10", "--conversations", "5", "--password", "s3cret")
    for tier in ("free", "pro", "enterprise"):
        username = f"demo-{tier}"
        assert TierAssignment.objects.get(user__username=username).tier.name == tier
        token = Token.objects.get(user__username=username).key
        assert re.search(rf"Tier {tier}: {username} / s3cret +token {token}", output)
        client = APIClient()
        assert client.post("/api/auth/token/", {"username": username, "password": "s3cret"}
                           ).json() == {"token": token}
        client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
        response = client.get("/api/contacts/")
        assert response.status_code == 200 and response.json()["count"] == 10
        request = response.wsgi_request
        assert clients.principal(request).tier == tier
    seed("--contacts", "10", "--conversations", "5", "--password", "s3cret")
    assert TierAssignment.objects.count() == 3


@pytest.mark.django_db
def test_a_negative_count_is_refused(postgres):
    with pytest.raises(CommandError, match="--contacts"):
        seed("--contacts", "-1")
