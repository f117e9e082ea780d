"""The circuits admin in a real browser: Debian's chromium, headless, driven by Playwright."""

from __future__ import annotations

import contextlib
import functools
import urllib.parse
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from crm_demo.crm.faults import FaultProxy
from resilience_crm import get_breaker, protected
from resilience_crm.breakers import machine as core
from resilience_crm.breakers import registry
from resilience_crm.breakers.control import steer
from resilience_crm.conf import settings as conf
from resilience_crm.models import Circuit, CircuitEvent, CircuitMetric
from resilience_crm.testutils import write_now
from tests.waiting import wait_until

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
    assert panel.locator(".resilience-span.shown svg rect.bar").count() == 12  # 4 minutes x 3
    assert "database failover drill" in page.locator("#recent-transitions").inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

    release(panel, "database back")
    page.wait_for_selector(".messagelist .success")
    panel = page.locator('.resilience-circuit[data-circuit="crm.read"]')
    assert panel.locator(".resilience-state").inner_text().strip() == "closed"
    assert registry.get_breaker("crm.read").state == core.CLOSED



def release(panel, reason: str) -> None:
    """The confirmation flow of a forced card's Release button."""
    action = panel.locator('.resilience-action[data-action="reset"]')
    action.locator("summary").click()
    action.locator("input[name=reason]").fill(reason)
    action.locator("button[name=confirm]").click()


def log_in(page, live_server, next_url: str) -> None:
    page.goto(f"{live_server.url}/admin/login/?next={next_url}")
    page.fill("#id_username", "ops")
    page.fill("#id_password", "ops-password")
    page.click("input[type=submit]")
    page.wait_for_url(f"**{next_url}")


@protected.write_handler("browser.note")
def write_note(payload):
    return {"ok": True}


def fails_through(proxy: FaultProxy, live_server) -> None:
    """A real call to the live server through the proxy (refused once it is cut)."""
    url = f"http://127.0.0.1:{proxy.port}/resilience/health/live"
    with urllib.request.urlopen(url, timeout=2) as reply:  # noqa: S310  (a loopback URL)
        reply.read()


def test_the_dashboard_shows_a_real_outage_and_its_confirmed_release(live_server, page,
                                                                       redis_settings):
    User.objects.create_superuser("ops", "ops@example.com", "ops-password")
    target = urllib.parse.urlsplit(live_server.url)
    with FaultProxy(target.hostname, target.port) as proxy:
        call = functools.partial(fails_through, proxy, live_server)
        for _ in range(3):
            get_breaker("crm.rpc").call(call)
        write_now()
        log_in(page, live_server, "/admin/resilience_crm/circuit/dashboard/")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard-before-light.png"), full_page=True)
        proxy.cut()
        for name in ("crm.rpc", "crm.write"):  # each opens after its failures
            wait_until(lambda name=name: _fails(name, call), f"{name} open", timeout=30)
        receipt = protected.submit("browser.note", {"n": 1}, idempotency_key="browser-1")
        assert receipt.queued
        write_now()  # this process's events and call metrics, as its flusher would

        page.reload()
        rpc = page.locator('.resilience-circuit[data-circuit="crm.rpc"]')
        assert rpc.get_attribute("data-state") == core.OPEN
        assert rpc.locator(".resilience-state").inner_text().strip() == "open"
        hour = rpc.locator('.resilience-span.shown')
        assert hour.locator("rect.open-period").count() == 3  # shaded on each chart
        rate = hour.locator(".span-failure-rate").inner_text().strip()
        assert rate.endswith("%") and int(rate[:-1]) > 0, rate
        assert page.locator("#queue-in-redis").inner_text().strip() == "1"
        assert int(page.locator("#queue-pending").inner_text()) >= 1
        page.screenshot(path=str(ARTIFACTS / "dashboard-outage-light.png"), full_page=True)

        # The admin's dark theme: the charts' text follows it.
        light = _chart_text_colour(page)
        page.emulate_media(color_scheme="dark")
        page.reload()
        dark = _chart_text_colour(page)
        assert light != dark, (light, dark)
        page.screenshot(path=str(ARTIFACTS / "dashboard-outage-dark.png"), full_page=True)
        page.emulate_media(color_scheme="light")

        # States update in place, without a reload: another operator forces crm.auth.
        page.evaluate("window.notReloaded = true")
        steer("crm.auth", core.FORCED_OPEN, reason="login storm", source="command")
        auth = page.locator('.resilience-circuit[data-circuit="crm.auth"]')
        page.wait_for_function(
            "document.querySelector('.resilience-circuit[data-circuit=\"crm.auth\"]')"
            ".dataset.state === 'forced_open'", timeout=15_000)
        assert auth.locator("h2 .resilience-state").inner_text().strip() == "forced open"
        assert page.evaluate("window.notReloaded === true")

        # Reset asks for a reason first, and acts only on Confirm.
        proxy.restore()
        page.reload()
        rpc = page.locator('.resilience-circuit[data-circuit="crm.rpc"]')
        action = rpc.locator('.resilience-action[data-action="reset"]')
        action.locator("summary").click()
        action.locator("button[name=confirm]").click()  # no reason: the browser refuses
        assert get_breaker("crm.rpc").state == core.OPEN
        action.locator("input[name=reason]").fill("vendor back")
        action.locator("button[name=confirm]").click()
        page.wait_for_selector(".messagelist .success")
        assert get_breaker("crm.rpc").state == core.CLOSED
        rpc = page.locator('.resilience-circuit[data-circuit="crm.rpc"]')
        assert rpc.locator(".resilience-state").inner_text().strip() == "closed"
        page.screenshot(path=str(ARTIFACTS / "dashboard-after-light.png"), full_page=True)


def test_no_admin_column_is_clipped_at_1400_pixels(live_server, page):
    User.objects.create_superuser("ops", "ops@example.com", "ops-password")
    Circuit.objects.filter(name="crm.rpc").update(config={"window": 30, "call_timeout": 2})
    steer("crm.write", core.FORCED_OPEN, reason="a long reason " * 8, source="command")
    page.set_viewport_size({"width": 1400, "height": 900})
    for url in ("/admin/resilience_crm/circuit/", "/admin/resilience_crm/queuedwrite/",
                "/admin/resilience_crm/circuitevent/"):
        if url.endswith("/circuit/"):
            log_in(page, live_server, url)
        else:
            page.goto(f"{live_server.url}{url}")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 1400, (url, width)
    page.goto(f"{live_server.url}/admin/")
    assert page.locator("#resilience-dashboard-link a").inner_text() == "Dashboard"


def _fails(name: str, call) -> bool:
    with contextlib.suppress(Exception):  # refused by the cut proxy, or the open circuit
        get_breaker(name).call(call)
    return get_breaker(name).state == core.OPEN


def _chart_text_colour(page) -> str:
    return page.evaluate(
        "getComputedStyle(document.querySelector('.resilience-chart text')).fill")
