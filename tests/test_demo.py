"""The demo project's front door: the demo admin, the pages it serves (seed_demo itself is
in tests/test_demo_seed.py)."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from rest_framework.authtoken.models import Token

pytestmark = pytest.mark.django_db


def test_seed_demo_admin_can_log_in(client):
    out = io.StringIO()
    call_command("seed_demo", "--admin", "--contacts", "10", "--conversations", "5",
                 "--no-progress", stdout=out)
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
    # The four circuits of protected, and the query guard's on the default database.
    assert set(ready["circuits"]) == {"crm.read", "crm.write", "crm.rpc", "crm.auth", "crm.db"}
