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


def test_a_chart_has_a_y_scale_a_time_axis_and_shaded_open_periods():
    svg = str(charts.bars([3, None, 7, 0], ["10:00", "10:01", "10:02", "10:03"],
                          colour="#417690", ticks=[(0, "10:00"), (2, "10:02"), (4, "10:04")],
                          shaded=[(1.5, 3.0), (3.5, 9.0)]))
    # y scale: a round top at or above the largest value, its middle, and 0.
    for label in (">0</text>", ">5</text>", ">10</text>"):
        assert label in svg
    assert svg.count('class="x-label"') == 3 and ">10:04</text>" in svg
    assert 'text-anchor="start">10:00' in svg and 'text-anchor="end">10:04' in svg
    assert svg.count('class="open-period"') == 2  # the second one clipped at the edge
    assert svg.count('class="bar"') == 2
    assert 'preserveAspectRatio="none"' not in svg  # text is not stretched


@pytest.mark.parametrize("largest, top", [(0, 1), (3, 5), (7, 10), (12, 20), (0.3, 0.5),
                                          (2500, 2500), (2501, 5000)])
def test_the_y_scale_tops_at_a_round_number(largest, top):
    assert charts.nice_ceiling(largest) == top


def test_an_open_period_is_shaded_on_every_chart_of_the_card(client):
    staff(client, "view_circuit")
    read = Circuit.objects.get(name="crm.read")
    now = timezone.now()
    for generation, (from_state, to_state, ago) in enumerate(
            [("closed", "open", 20), ("open", "half_open", 15), ("half_open", "closed", 10)],
            start=1):
        CircuitEvent.objects.create(circuit=read, generation=generation, from_state=from_state,
                                    to_state=to_state, created_at=now - timedelta(minutes=ago))
    steer("crm.write", core.FORCED_OPEN, reason="ongoing", source="command")

    html = client.get(DASHBOARD).content.decode()

    def hour_block(name: str) -> str:
        card = html[html.index(f'data-circuit="{name}"'):]
        return card[card.index('data-span="hour"'):card.index('data-span="day"')]

    assert hour_block("crm.read").count('class="open-period"') == 3  # one per chart
    assert "open 10 min (shaded)" in hour_block("crm.read")
    assert hour_block("crm.write").count('class="open-period"') == 3  # still open: to now
    assert hour_block("crm.rpc").count('class="open-period"') == 0


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
    minute = f"{timezone.localtime(now - timedelta(minutes=2)):%H:%M}"
    assert f"<title>{minute}: 50%</title>" in html  # the failure rate of that minute
    assert f"<title>{minute}: 10</title>" in html  # its calls
    assert f"<title>{minute}: 4 ms</title>" in html  # its mean latency
    # Every number on the card is the span's: no second window beside the charts.
    card = html[html.index('data-circuit="crm.read"'):]
    card = card[:card.index("</section>")]
    assert "in the window" not in card
    hour = card[card.index('data-span="hour"'):card.index('data-span="day"')]
    assert ('Last hour: <strong class="span-calls">10</strong> calls,\n          '
            '<strong class="span-failures">5</strong> failed\n          '
            '(<strong class="span-failure-rate">50%</strong>)') in hour
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


@pytest.mark.parametrize("value, label", [(0, "0"), (2.5, "2.5"), (40, "40"), (2500, "2.5k"),
                                          (1_200_000, "1.2M")])
def test_scale_labels_are_short(value, label):
    assert charts.number(value) == label


def test_the_live_endpoint_gives_states_and_the_queue(client):
    live = reverse("admin:resilience_crm_dashboard_live")
    staff(client)
    assert client.get(live).status_code == 403
    client.logout()
    User.objects.all().delete()
    staff(client, "view_circuit")
    steer("crm.rpc", core.FORCED_OPEN, reason="vendor down", source="command")
    QueuedWrite.objects.create(name="contact.create", idempotency_key="k1", payload={},
                               payload_hash="x", state="pending")

    body = client.get(live).json()

    assert body["circuits"]["crm.rpc"] == {"state": "forced_open", "generation": 1,
                                           "retry_after": None}
    assert body["circuits"]["crm.read"]["state"] == "closed"
    assert body["queue"] == {"waiting": 1, "in_redis": 0, "dead": 0}
