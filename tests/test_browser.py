"""The circuits admin in a real browser: Debian's chromium, headless, driven by Playwright."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from resilience_crm.breakers import machine as core
from resilience_crm.breakers import registry
from resilience_crm.breakers.control import steer
from resilience_crm.conf import settings as conf
from resilience_crm.models import Circuit, CircuitEvent, CircuitMetric

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_operator_forces_a_circuit_open_from_the_admin(live_server, page):
    user = User.objects.create_superuser("ops", "ops@example.com", "ops-password")

    page.goto(f"{live_server.url}/admin/login/?next=/admin/resilience_crm/circuit/")
    page.fill("#id_username", "ops")
    page.fill("#id_password", "ops-password")
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/resilience_crm/circuit/")

    row = page.locator("#result_list tbody tr", has_text="crm.write")
    assert row.locator(".resilience-state").inner_text().strip() == "closed"
    row.locator("input.action-select").check()
    page.select_option("select[name=action]", "force_open")
    page.fill("input[name=reason]", "primary database failover")
    page.click("button[name=index]")

    page.wait_for_selector(".messagelist .success")
    assert "Set to forced open: crm.write." in page.locator(".messagelist").inner_text()
    badge = page.locator("#result_list tbody tr", has_text="crm.write").locator(
        ".resilience-state")
    assert badge.inner_text().strip() == "forced open"
    closed = page.locator("#result_list .resilience-state-closed")
    assert closed.count() == len(conf.circuit_names()) - 1  # the guard's crm.db among them

    assert registry.get_breaker("crm.write").state == core.FORCED_OPEN
    event = CircuitEvent.objects.get(circuit__name="crm.write", to_state=core.FORCED_OPEN)
    assert (event.actor, event.source, event.reason) == (user, "admin",
                                                         "primary database failover")



#: Where the dashboard's screenshot is kept for people to look at (ignored by git).
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def test_the_dashboard_renders_its_charts_and_its_reset_button_works(live_server, page):
    User.objects.create_superuser("ops", "ops@example.com", "ops-password")
    now = timezone.now().replace(second=0, microsecond=0)
    read = Circuit.objects.get(name="crm.read")
    for minutes, calls, failures in ((50, 120, 3), (20, 80, 40), (5, 100, 90), (1, 60, 60)):
        CircuitMetric.objects.create(circuit=read, bucket=now - timedelta(minutes=minutes),
                                     calls=calls, failures=failures, successes=calls - failures,
                                     latency_sum_ms=calls * 12.5, latency_max_ms=80)
    steer("crm.read", core.FORCED_OPEN, reason="database failover drill", source="command")

    page.goto(f"{live_server.url}/admin/login/?next=/admin/resilience_crm/circuit/dashboard/")
    page.fill("#id_username", "ops")
    page.fill("#id_password", "ops-password")
    page.click("input[type=submit]")
    page.wait_for_url("**/circuit/dashboard/")

    panels = page.locator(".resilience-circuit")
    assert panels.count() == len(conf.circuit_names())  # protected's four and crm.db
    panel = page.locator('.resilience-circuit[data-circuit="crm.read"]')
    assert panel.locator(".resilience-state").inner_text().strip() == "forced open"
    assert panel.locator(".resilience-span.shown svg.resilience-chart").count() == 3
    assert panel.locator(".resilience-span.shown svg rect").count() == 12  # 4 minutes x 3
    assert "database failover drill" in page.locator("#recent-transitions").inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

    panel.locator("button[name=reset]").click()
    page.wait_for_selector(".messagelist .success")
    panel = page.locator('.resilience-circuit[data-circuit="crm.read"]')
    assert panel.locator(".resilience-state").inner_text().strip() == "closed"
    assert registry.get_breaker("crm.read").state == core.CLOSED
