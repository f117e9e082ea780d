"""The admin dashboard: every circuit's state in colour and words, charts drawn on the
server from the per-minute metrics, recent transitions with who and why, queued writes, and
reset / force buttons that run the audited actions."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse
from django.utils import timezone

from resilience_crm.admin import charts
from resilience_crm.breakers import machine as core
from resilience_crm.breakers import registry
from resilience_crm.breakers.control import steer
from resilience_crm.models import Circuit, CircuitEvent, CircuitMetric, QueuedWrite
from resilience_crm.ratelimit import limiter
from resilience_crm.ratelimit.principals import Principal

pytestmark = pytest.mark.django_db

DASHBOARD = reverse("admin:resilience_crm_dashboard")


def staff(client, *codenames: str) -> User:
    user = User.objects.create_user("watcher", password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(
        content_type__app_label="resilience_crm", codename__in=codenames))
    client.force_login(user)
    return user


def test_bars_draw_one_titled_bar_per_value_and_gaps_for_none():
    svg = str(charts.bars([0.5, None, 1.0], ["10:01", "10:02", "10:03"], colour="#b52a1c",
                          ceiling=1, fmt="{:.0%}", title="failure rate"))
    assert svg.count("<rect") == 2
    assert "<title>10:01: 50%</title>" in svg and "<title>10:03: 100%</title>" in svg
    assert 'aria-label="failure rate"' in svg


def test_the_dashboard_shows_circuits_charts_transitions_and_the_queue(client):
    staff(client, "view_circuit")
    now = timezone.now().replace(second=0, microsecond=0)
    read = Circuit.objects.get(name="crm.read")
    CircuitMetric.objects.create(circuit=read, bucket=now - timedelta(minutes=2), calls=10,
                                 successes=5, failures=5, latency_sum_ms=42.0)
    operator = User.objects.create_user("ops-lead")
    steer("crm.write", core.FORCED_OPEN, actor=operator, reason="db failover", source="admin")
    QueuedWrite.objects.create(name="contact.create", idempotency_key="k1", payload={},
                               payload_hash="x", state="dead")

    response = client.get(DASHBOARD)

    assert response.status_code == 200
    html = response.content.decode()
    for name in ("crm.read", "crm.write", "crm.rpc", "crm.auth"):
        assert f'data-circuit="{name}"' in html
    assert 'data-circuit="crm.write" data-state="forced_open"' in html
    assert "resilience-state-forced_open" in html and ">forced open</span>" in html
    minute = f"{timezone.localtime(now - timedelta(minutes=1)):%H:%M}"
    assert f"<title>{minute}: 50%</title>" in html  # the failure rate of that minute
    assert f"<title>{minute}: 10</title>" in html  # its calls
    assert f"<title>{minute}: 4.2 ms</title>" in html  # its mean latency
    assert "db failover" in html and "ops-lead" in html
    assert '<strong id="queue-dead">1</strong>' in html
    assert 'data-action="reset"' not in html  # no permission, no button
    assert 'data-action="force_open"' not in html


def test_the_dashboard_needs_the_view_permission(client):
    staff(client)
    assert client.get(DASHBOARD).status_code == 403


def test_the_reset_button_runs_the_audited_action(client):
    user = staff(client, "view_circuit", "reset_circuit")
    steer("crm.rpc", core.FORCED_OPEN, reason="vendor down", source="command")
    circuit = Circuit.objects.get(name="crm.rpc")
    html = client.get(DASHBOARD).content.decode()
    card = html[html.index('data-circuit="crm.rpc"'):]
    card = card[:card.index("</section>")]
    # A forced card says who holds it, why and until when, and offers Release.
    assert "Forced open: held by <strong>command</strong>, “vendor down”, until released." in card
    assert '<summary class="button">Release</summary>' in card
    assert 'name="reason" required' in card
    assert "Confirm: release crm.rpc" in card

    refused = client.post(DASHBOARD, {"action": "reset", "_selected_action": circuit.pk,
                                      "index": 0, "reason": " ", "until": ""}, follow=True)
    assert "Nothing changed: give a reason" in refused.content.decode()
    assert registry.get_breaker("crm.rpc").state == core.FORCED_OPEN

    response = client.post(DASHBOARD, {"action": "reset", "_selected_action": circuit.pk,
                                       "index": 0, "reason": "vendor back", "until": ""})

    assert response.status_code == 302 and response["Location"] == DASHBOARD
    assert registry.get_breaker("crm.rpc").state == core.CLOSED
    event = CircuitEvent.objects.filter(circuit=circuit).latest("generation")
    assert (event.to_state, event.actor, event.source) == (core.CLOSED, user, "admin")


def test_the_dashboard_shows_rate_limit_decisions_by_tier(client, settings):
    settings.RESILIENCE_CRM = {"RATELIMIT_STORE": "memory"}
    staff(client, "view_circuit")
    pro = Principal(key="u:7", tier="pro", overrides={"read": "3/hour"})
    free = Principal(key="u:8", tier="free", overrides={"read": "1/hour"})
    for _ in range(4):
        limiter.decide(pro, "read")
    for _ in range(2):
        limiter.decide(free, "read")

    html = client.get(DASHBOARD).content.decode()

    assert ('<tr data-tier="pro"><td>pro</td><td>3</td><td>1</td>\n        <td>25%</td>'
            in html)
    assert ('<tr data-tier="free"><td>free</td><td>1</td><td>1</td>\n        <td>50%</td>'
            in html)
