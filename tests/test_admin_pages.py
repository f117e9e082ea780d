"""What an operator sees in the admin: the dashboard link on the index, circuits that cannot be
added or deleted from under their audit trail, a circuit's page with its configuration in
force, its buttons and its incidents, and the writes' idempotency records."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse
from django.utils import timezone
from model_bakery import baker

from resilience_crm.admin import incidents
from resilience_crm.breakers import machine as core
from resilience_crm.breakers import registry
from resilience_crm.breakers.control import steer
from resilience_crm.models import Circuit, CircuitEvent, CircuitMetric, QueuedWrite

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = reverse("admin:resilience_crm_circuit_changelist")


def page(circuit: Circuit) -> str:
    return reverse("admin:resilience_crm_circuit_change", args=[circuit.pk])


def events(circuit: Circuit, *steps: tuple[str, str, str], start=None, **extra) -> None:
    """``steps``: (from, to, reason) in order, a second apart."""
    start = start or timezone.now() - timedelta(minutes=5)
    for generation, (from_state, to_state, reason) in enumerate(steps, start=1):
        CircuitEvent.objects.create(circuit=circuit, generation=generation,
                                    from_state=from_state, to_state=to_state, reason=reason,
                                    created_at=start + timedelta(seconds=generation), **extra)


OUTAGE = [("closed", "open", "5 consecutive failures"),
          ("open", "half_open", "reset timeout elapsed"),
          ("half_open", "open", "trial failed"),
          ("open", "half_open", "reset timeout elapsed"),
          ("half_open", "closed", "3 successful trials")]


def test_the_admin_index_links_the_dashboard(admin_client):
    html = admin_client.get(reverse("admin:index")).content.decode()

    assert f'<a href="{reverse("admin:resilience_crm_dashboard")}">Dashboard</a>' in html


def test_circuits_cannot_be_added_nor_deleted_from_under_settings_or_events(admin_client):
    html = admin_client.get(CHANGELIST).content.decode()
    assert reverse("admin:resilience_crm_circuit_add") not in html
    assert "delete_selected" not in html
    assert admin_client.get(reverse("admin:resilience_crm_circuit_add")).status_code == 403

    configured = Circuit.objects.get(name="crm.read")
    audited = Circuit.objects.create(name="billing.api")
    events(audited, ("closed", "open", "boom"))
    orphan = Circuit.objects.create(name="old.name")
    delete = "admin:resilience_crm_circuit_delete"
    assert admin_client.get(reverse(delete, args=[configured.pk])).status_code == 403
    assert admin_client.get(reverse(delete, args=[audited.pk])).status_code == 403
    admin_client.post(reverse(delete, args=[orphan.pk]), {"post": "yes"})
    assert not Circuit.objects.filter(name="old.name").exists()


def test_the_overrides_column_names_them_or_says_none(admin_client):
    Circuit.objects.filter(name="crm.rpc").update(config={"window": 30, "call_timeout": 2})

    html = admin_client.get(CHANGELIST).content.decode()

    assert '<td class="field-overridden">call_timeout, window</td>' in html
    # crm.read, crm.write, crm.auth, and the query guard's crm.db (tests/settings.py).
    assert html.count('<td class="field-overridden">none</td>') == 4
    assert "icon-no.svg" not in html


def test_a_circuits_page_shows_the_configuration_in_force(admin_client, settings):
    settings.RESILIENCE_CRM = {"CIRCUIT_DEFAULTS": {"reset_timeout": 10},
                               "CIRCUITS": {"crm.read": {"failure_threshold": 3}}}
    circuit = Circuit.objects.get(name="crm.read")
    circuit.config = {"failure_threshold": 7, "window": 20}
    circuit.save()

    html = admin_client.get(page(circuit)).content.decode()

    section = html[html.index('id="circuit-config"'):]
    for key, value, origin in [("failure_threshold", "7", "admin override"),
                               ("window", "20", "admin override"),
                               ("reset_timeout", "10", "CIRCUIT_DEFAULTS"),
                               ("half_open_max_calls", "1", "default")]:
        marked = "" if origin == "default" else ' class="overridden"'
        assert (f'<tr data-setting="{key}"{marked}>\n'
                f"        <td>{key}</td><td>{value}</td><td>{origin}</td></tr>") in section


def test_a_circuits_page_offers_its_buttons_and_they_need_a_reason(admin_client):
    circuit = Circuit.objects.get(name="crm.write")
    html = admin_client.get(page(circuit)).content.decode()
    actions = html[html.index('id="circuit-actions"'):html.index('id="circuit-config"')]
    assert '<summary class="button">Force open</summary>' in actions
    assert "Reset</summary>" not in actions  # it is closed: nothing to reset

    admin_client.post(page(circuit), {"action": "force_open", "_selected_action": circuit.pk,
                                      "index": 0, "reason": "", "until": ""})
    assert registry.get_breaker("crm.write").state == core.CLOSED

    until = timezone.localtime() + timedelta(hours=1)
    response = admin_client.post(page(circuit), {
        "action": "force_open", "_selected_action": circuit.pk, "index": 0,
        "reason": "db maintenance", "until": f"{until:%Y-%m-%dT%H:%M}"})

    assert response.status_code == 302 and response["Location"] == page(circuit)
    assert registry.get_breaker("crm.write").state == core.FORCED_OPEN
    circuit.refresh_from_db()
    assert circuit.forced_reason == "db maintenance"
    assert abs((circuit.forced_until - until).total_seconds()) < 60
    html = admin_client.get(page(circuit)).content.decode()
    actions = html[html.index('id="circuit-actions"'):html.index('id="circuit-config"')]
    assert "Forced open: held by <strong>admin</strong>, “db maintenance”, until " in actions
    assert '<summary class="button">Release</summary>' in actions
    assert "Force open</summary>" not in actions


def test_without_permissions_a_circuits_page_offers_no_button(client, settings):
    user = User.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_circuit"))
    client.force_login(user)
    circuit = Circuit.objects.get(name="crm.read")

    html = client.get(page(circuit)).content.decode()

    assert "data-action=" not in html and "No action is open to you here." in html
    client.post(page(circuit), {"action": "force_open", "_selected_action": circuit.pk,
                                "index": 0, "reason": "try", "until": ""})
    assert registry.get_breaker("crm.read").state == core.CLOSED


def test_transitions_group_into_incidents_with_their_cost():
    circuit = Circuit.objects.get(name="crm.read")
    start = timezone.now().replace(second=0, microsecond=0) - timedelta(minutes=10)
    events(circuit, *OUTAGE, start=start)
    events(circuit, ("closed", "disabled", "maintenance"), ("disabled", "closed", "done"),
           start=start + timedelta(minutes=3))  # not an incident: calls passed throughout
    CircuitMetric.objects.create(circuit=circuit, bucket=start, calls=20, rejected=12,
                                 fallbacks=9)
    CircuitMetric.objects.create(circuit=circuit, bucket=start - timedelta(minutes=5),
                                 calls=5, rejected=50)  # before it began
    steer("crm.rpc", core.FORCED_OPEN, reason="vendor down", source="command")

    found = incidents.recent()

    assert [i.circuit for i in found] == ["crm.rpc", "crm.read"]
    rpc, read = found
    assert (rpc.ongoing, rpc.outcome, rpc.cause) == (True, "ongoing", "command: vendor down")
    assert (read.ongoing, read.trials, read.refused, read.fallbacks) == (False, 2, 12, 9)
    assert (read.cause, read.outcome, read.alerts) == ("5 consecutive failures", "recovered", 2)
    assert read.duration == timedelta(seconds=4)


def test_a_reset_ends_an_incident_and_a_drill_says_so(admin_client):
    circuit = Circuit.objects.get(name="crm.auth")
    user = User.objects.get(username="admin")
    events(circuit, ("closed", "open", "2 consecutive failures [drill ab12]"))
    CircuitEvent.objects.create(circuit=circuit, generation=9, from_state="open",
                                to_state="closed", reason="db back", source="admin",
                                actor=user)

    (incident,) = incidents.recent(["crm.auth"])

    assert (incident.drill, incident.outcome) == ("ab12", "reset: admin (admin): db back")
    html = admin_client.get(page(circuit)).content.decode()
    assert 'data-circuit="crm.auth" data-drill="ab12"' in html
    timeline = html[html.index('class="incident-timeline"'):]
    assert "<summary>2 transitions</summary>" in timeline
    assert "closed → open: 2 consecutive failures [drill ab12]</li>" in timeline
    assert "open → closed: admin (admin): db back</li>" in timeline
    dashboard = admin_client.get(reverse("admin:resilience_crm_dashboard")).content.decode()
    assert 'id="last-incidents"' in dashboard and 'data-drill="ab12"' in dashboard


def test_writes_list_says_what_it_is_with_state_badges_and_the_clients_key(admin_client):
    baker.make(QueuedWrite, name="contacts.create", idempotency_key="7:contacts.create:abc-1",
               state=QueuedWrite.State.DEAD)
    baker.make(QueuedWrite, name="notes.add", idempotency_key="plain-key",
               state=QueuedWrite.State.APPLIED)

    html = admin_client.get(reverse("admin:resilience_crm_queuedwrite_changelist")).content.decode()

    assert "Writes and their idempotency records" in html
    assert "Every write submitted with an idempotency key" in html
    assert '<span title="7:contacts.create:abc-1">abc-1</span>' in html
    assert '<span title="plain-key">plain-key</span>' in html
    assert "resilience-write-dead" in html and ">dead letter</span>" in html
    assert "resilience-write-applied" in html
