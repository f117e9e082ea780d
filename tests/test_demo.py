"""The demo project's front door: seeded data, the demo admin, the pages it serves."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from rest_framework.authtoken.models import Token

from crm_demo.crm.models import Agent, Contact, Conversation

pytestmark = pytest.mark.django_db


def counts():
    return Contact.objects.count(), Agent.objects.count(), Conversation.objects.count()


def test_seed_demo_is_idempotent():
    call_command("seed_demo", stdout=io.StringIO())
    first = counts()
    assert all(first)
    assert set(Agent.objects.values_list("kind", flat=True)) == {"ai", "human"}
    call_command("seed_demo", stdout=io.StringIO())
    assert counts() == first


def test_seed_demo_admin_can_log_in(client):
    out = io.StringIO()
    call_command("seed_demo", "--admin", stdout=out)
    assert "Demo admin: admin / admin" in out.getvalue()
    assert f"API token: {Token.objects.get(user__username='admin').key}" in out.getvalue()
    assert client.login(username="admin", password="admin")
    assert client.get("/admin/").status_code == 200
    for page in ("circuit", "circuitevent", "circuitmetric", "tier", "tierassignment",
                 "queuedwrite"):
        assert client.get(f"/admin/resilience_crm/{page}/").status_code == 200, page


def test_health_endpoints_are_served(client):
    assert client.get("/resilience/health/live").json() == {"status": "ok"}
    ready = client.get("/resilience/health/ready").json()
    assert set(ready["circuits"]) == {"crm.read", "crm.write", "crm.rpc", "crm.auth"}
