"""The admin: circuits steered by audited, permission-gated actions; read-only audit trail."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import Permission, User
from django.urls import reverse
from django.utils import timezone
from model_bakery import baker

from resilience_crm.breakers import events, registry
from resilience_crm.breakers import machine as core
from resilience_crm.breakers.breaker import Breaker
from resilience_crm.breakers.machine import Config
from resilience_crm.conf import settings as conf
from resilience_crm.models import Circuit, CircuitEvent, CircuitMetric, QueuedWrite, Tier

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = reverse("admin:resilience_crm_circuit_changelist")
ACTIONS = {
    "reset": "reset_circuit",
    "force_open": "force_open_circuit",
    "force_closed": "force_closed_circuit",
    "disable": "disable_circuit",
}
TARGET = {
    "reset": core.CLOSED,
    "force_open": core.FORCED_OPEN,
    "force_closed": core.FORCED_CLOSED,
    "disable": core.DISABLED,
}


def operator(client, *codenames: str) -> User:
    user = User.objects.create_user("operator", password="pw", is_staff=True)
    perms = Permission.objects.filter(
        content_type__app_label="resilience_crm", codename__in=["view_circuit", *codenames]
    )
    user.user_permissions.add(*perms)
    client.force_login(user)
    return user


def act(client, action: str, *circuits: Circuit, **extra):
    data = {"action": action, "_selected_action": [c.pk for c in circuits], "reason": "",
            "until": ""}
    data.update(extra)
    return client.post(CHANGELIST, data, follow=True)


def offered_actions(client) -> set[str]:
    response = client.get(CHANGELIST)
    assert response.status_code == 200
    form = response.context["action_form"]  # None when no action is allowed
    choices = form.fields["action"].choices if form else []
    return {name for name, _ in choices if name}


@pytest.fixture
def circuit():
    return Circuit.objects.get(name="crm.read")  # made by post_migrate


@pytest.mark.parametrize("action", list(ACTIONS))
def test_each_action_needs_its_own_permission(client, circuit, action):
    operator(client, ACTIONS[action])
    assert offered_actions(client) == {action}


def test_without_permissions_no_action_is_offered_or_taken(client, circuit):
    operator(client)
    assert offered_actions(client) == set()

    act(client, "force_open", circuit)

    assert registry.get_breaker("crm.read").state == core.CLOSED
    assert not CircuitEvent.objects.exists()


@pytest.mark.parametrize("action", ["force_open", "force_closed", "disable", "reset"])
def test_action_steers_breaker_and_leaves_an_audit_trail(client, circuit, action):
    user = operator(client, ACTIONS[action])
    if action == "reset":
        registry.get_breaker("crm.read").force(core.FORCED_OPEN)

    response = act(client, action, circuit, reason="failover drill")

    assert response.status_code == 200
    assert registry.get_breaker("crm.read").state == TARGET[action]
    event = CircuitEvent.objects.get(circuit=circuit, to_state=TARGET[action], actor=user)
    assert (event.source, event.reason) == ("admin", "failover drill")
    log = LogEntry.objects.get(object_id=str(circuit.pk), action_flag=CHANGE)
    assert log.user == user and "failover drill" in log.get_change_message()
    circuit.refresh_from_db()
    assert circuit.state == TARGET[action]
    if action == "reset":
        assert (circuit.forced_state, circuit.forced_by) == ("", None)
    else:
        assert (circuit.forced_state, circuit.forced_by, circuit.forced_reason) == (
            TARGET[action], user, "failover drill")


def test_forced_state_with_until_lapses_by_itself(client, circuit):
    operator(client, "force_open_circuit")
    until = timezone.localtime() + timedelta(hours=1)

    act(client, "force_open", circuit, until=until.strftime("%Y-%m-%d %H:%M:%S"))

    circuit.refresh_from_db()
    assert circuit.forced_until == until.replace(microsecond=0)
    snap = registry.get_breaker("crm.read").snapshot()
    assert snap["state"] == core.FORCED_OPEN
    assert snap["until"] == until.replace(microsecond=0)


def test_until_in_the_past_changes_nothing_and_says_why(client, circuit):
    operator(client, "force_open_circuit")
    past = timezone.localtime() - timedelta(minutes=5)

    response = act(client, "force_open", circuit, until=past.strftime("%Y-%m-%d %H:%M:%S"))

    assert "Until must be in the future" in response.content.decode()
    assert registry.get_breaker("crm.read").state == core.CLOSED
    assert not CircuitEvent.objects.exists()


def test_lapsed_forced_state_is_cleared_from_the_record(circuit):
    breaker = registry.get_breaker("crm.read")
    breaker.force(core.FORCED_OPEN, until=timezone.now() + timedelta(milliseconds=50))
    Circuit.objects.filter(pk=circuit.pk).update(forced_state=core.FORCED_OPEN)
    deadline = timezone.now() + timedelta(seconds=5)
    while breaker.snapshot()["state"] != core.CLOSED and timezone.now() < deadline:
        pass
    events.flush()  # what the background flusher writes

    circuit.refresh_from_db()
    assert (circuit.state, circuit.forced_state) == (core.CLOSED, "")


def test_changelist_shows_live_state_of_every_circuit(admin_client):
    registry.get_breaker("crm.write").force(core.FORCED_OPEN)

    html = admin_client.get(CHANGELIST).content.decode()

    # Every circuit the settings name (the guard's crm.db among them), one forced open.
    assert html.count("resilience-state-closed") == len(conf.circuit_names()) - 1
    assert html.count("resilience-state-forced_open") == 1


def test_change_page_shows_live_counts_and_links_events(admin_client, circuit):
    breaker = registry.get_breaker("crm.read")
    permit = breaker.allow()
    breaker.record(permit, core.FAILURE)

    url = reverse("admin:resilience_crm_circuit_change", args=[circuit.pk])
    html = admin_client.get(url).content.decode()

    assert "1 calls, 1 failures (100%)" in html
    assert f"circuit__id__exact={circuit.pk}" in html


def test_invalid_overrides_are_refused_naming_the_key(admin_client, circuit):
    url = reverse("admin:resilience_crm_circuit_change", args=[circuit.pk])

    response = admin_client.post(url, {"config": '{"failure_rate_threshold": 3}'})

    assert response.status_code == 200
    assert "failure_rate_threshold" in response.context["adminform"].form.errors["config"][0]
    circuit.refresh_from_db()
    assert circuit.config == {}


@pytest.mark.parametrize(("paths", "why"), [
    (["crm_demo.no_such_module.Error"], "No module named 'crm_demo.no_such_module'"),
    (["builtins.print"], "is not an exception class"),
])
def test_exception_paths_are_imported_and_checked_when_saved(admin_client, circuit, paths,
                                                             why):
    url = reverse("admin:resilience_crm_circuit_change", args=[circuit.pk])

    response = admin_client.post(url, {"config": f'{{"record_exceptions": ["{paths[0]}"]}}'})

    assert response.status_code == 200
    error = response.context["adminform"].form.errors["config"][0]
    assert error.startswith(f"record_exceptions cannot use '{paths[0]}'") and why in error
    circuit.refresh_from_db()
    assert circuit.config == {}


def test_saved_overrides_reach_the_breaker(admin_client, circuit):
    url = reverse("admin:resilience_crm_circuit_change", args=[circuit.pk])

    response = admin_client.post(url, {"config": '{"failure_threshold": 2}'})

    assert response.status_code == 302
    breaker = registry.get_breaker("crm.read")
    for _ in range(2):
        breaker.record(breaker.allow(), core.FAILURE)
    assert breaker.state == core.OPEN


@pytest.mark.redis
def test_action_reaches_another_worker_through_redis(client, redis_settings, circuit):
    """A breaker built apart from the admin's, as another process would, sees the change."""
    operator(client, "force_open_circuit")
    other = Breaker("crm.read", Config.from_mapping(conf.circuit_config("crm.read")),
                    conf.store_class()(), snapshot_ttl=0.5)
    assert other.state == core.CLOSED

    act(client, "force_open", circuit, reason="maintenance")

    assert other.snapshot()["state"] == core.FORCED_OPEN
    assert CircuitEvent.objects.filter(to_state=core.FORCED_OPEN, source="admin").count() == 1


@pytest.mark.parametrize("model", ["circuitevent", "circuitmetric"])
def test_events_and_metrics_are_read_only(admin_client, circuit, model):
    registry.get_breaker("crm.read").reset()
    events.flush()
    baker.make(CircuitMetric, circuit=circuit, bucket=timezone.now(), calls=4,
               latency_sum_ms=10)
    changelist = reverse(f"admin:resilience_crm_{model}_changelist")

    response = admin_client.get(changelist)

    assert response.status_code == 200
    assert response.context["cl"].result_count == 1
    assert response.context["cl"].has_filters
    assert admin_client.get(reverse(f"admin:resilience_crm_{model}_add")).status_code == 403
    obj = response.context["cl"].result_list[0]
    delete = reverse(f"admin:resilience_crm_{model}_delete", args=[obj.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    change = reverse(f"admin:resilience_crm_{model}_change", args=[obj.pk])
    assert admin_client.post(change, {}).status_code == 403


def test_event_filters_narrow_by_source(admin_client):
    registry.get_breaker("crm.read").reset(source="command")
    registry.get_breaker("crm.write").force(core.DISABLED)
    events.flush()
    url = reverse("admin:resilience_crm_circuitevent_changelist")

    response = admin_client.get(url, {"source__exact": "command"})

    assert [e.circuit.name for e in response.context["cl"].result_list] == ["crm.read"]


def test_tier_limits_are_validated(admin_client):
    tier = Tier.objects.get(name="free")
    url = reverse("admin:resilience_crm_tier_change", args=[tier.pk])

    response = admin_client.post(url, {"name": "free", "limits": '{"read": "ten/min"}',
                                       "description": ""})

    assert response.status_code == 200
    assert response.context["adminform"].form.errors["limits"]


def test_dead_letters_can_be_queued_again(admin_client):
    dead = baker.make(QueuedWrite, state=QueuedWrite.State.DEAD, attempts=5)
    applied = baker.make(QueuedWrite, state=QueuedWrite.State.APPLIED, attempts=1)
    url = reverse("admin:resilience_crm_queuedwrite_changelist")

    admin_client.post(url, {"action": "requeue", "_selected_action": [dead.pk, applied.pk]})

    dead.refresh_from_db()
    applied.refresh_from_db()
    assert (dead.state, dead.attempts) == (QueuedWrite.State.PENDING, 0)
    assert applied.state == QueuedWrite.State.APPLIED


def test_a_queued_write_cannot_be_edited_in_the_admin(admin_client):
    """What a repeated submit answers (``result``) and the replay order (``entity``) are the
    queue's own, like the payload."""
    write = baker.make(QueuedWrite, state=QueuedWrite.State.APPLIED, entity="contact:1",
                       result={"id": 1})
    url = reverse("admin:resilience_crm_queuedwrite_change", args=[write.pk])

    response = admin_client.post(url, {"entity": "contact:2", "result": '{"id": 2}'})

    assert response.status_code == 302
    write.refresh_from_db()
    assert (write.entity, write.result) == ("contact:1", {"id": 1})
