"""resilience_crm.health_check.Circuits inside django-health-check's own view."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from django.test import RequestFactory
from health_check.views import HealthCheckView

from resilience_crm.breakers import machine as core
from resilience_crm.breakers import registry
from resilience_crm.health_check import Circuits

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _memory_store(settings):
    settings.RESILIENCE_CRM = {"STORE": "memory"}


def run(**options):
    view = HealthCheckView.as_view(checks=[(Circuits, options)])
    response = async_to_sync(view)(RequestFactory().get("/ht/?format=json"))
    return response.status_code, response.content.decode()


def test_all_closed_is_healthy():
    status, body = run()
    assert status == 200
    assert "Circuits" in body and "OK" in body


def test_an_open_critical_circuit_is_unavailable():
    registry.get_breaker("crm.write").force(core.FORCED_OPEN, reason="drill")
    status, body = run(critical=("crm.write",))
    assert status == 500
    assert "circuit crm.write is forced open" in body


def test_a_rejecting_circuit_that_is_not_critical_is_a_warning():
    registry.get_breaker("crm.rpc").force(core.FORCED_OPEN, reason="vendor down")
    status, body = run(critical=("crm.write",))
    assert status == 500  # django-health-check reports warnings as errors too
    assert "Warning: crm.rpc: forced_open" in body
