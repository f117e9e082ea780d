"""Manual control is all or nothing: a change made while the shared store is unreachable is
saved and applied to every worker once it is back (exactly once across the cluster), or
refused when the database cannot save it either; never reported done in one process only.
Also the admin's guard rails: breaker settings need their own permission and leave a diff,
and a circuit with an audit trail cannot be deleted.
"""

from __future__ import annotations

import socket

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.core.management import CommandError, call_command
from django.db import connections
from django.urls import reverse

from resilience_crm.breakers import control, registry
from resilience_crm.breakers import machine as core
from resilience_crm.breakers.breaker import Breaker
from resilience_crm.breakers.stores.redis import RedisStore
from resilience_crm.conf import settings as conf
from resilience_crm.exceptions import ManualChangeRefused
from resilience_crm.models import Circuit, CircuitEvent
from resilience_crm.signals import circuit_transition
from tests.processes import ctx, run_processes
from tests.waiting import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis]

CIRCUIT = "crm.read"
CHANGELIST = reverse("admin:resilience_crm_circuit_changelist")


def another_worker() -> Breaker:
    """A breaker as another worker process has it: straight on Redis, no snapshot."""
    return Breaker(CIRCUIT, core.Config.from_mapping(conf.circuit_config(CIRCUIT)),
                   RedisStore("redis"), snapshot_ttl=0)


@pytest.fixture
def stalled(settings, redis_proxy):
    """Breakers on the real Redis through a proxy, warmed up, then stalled."""
    settings.RESILIENCE_CRM = {"STORE": "redis", "CACHE_ALIAS": "proxied", "SNAPSHOT_TTL": 0,
                               "STORE_RETRY_INTERVAL": 0.2}
    assert registry.get_breaker(CIRCUIT).state == core.CLOSED
    redis_proxy.stalled = True
    redis_proxy.drop()
    return redis_proxy


def back(proxy) -> None:
    """Redis answers again, and this worker finds out on its next step."""
    proxy.stalled = False
    wait_until(lambda: registry.get_breaker(CIRCUIT).snapshot()["store"] == "shared",
             "the worker to find Redis again")


def test_a_change_made_while_redis_is_unreachable_is_pending_not_done(stalled,
                                                                      django_user_model):
    operator = django_user_model.objects.create_user("ops")

    outcome = control.steer(CIRCUIT, core.FORCED_OPEN, actor=operator, reason="vendor down",
                            source="admin")

    assert not outcome.applied and outcome.pending
    assert another_worker().state == core.CLOSED  # nobody has it: not even this worker
    assert registry.get_breaker(CIRCUIT).state == core.CLOSED
    row = Circuit.objects.get(name=CIRCUIT)
    assert row.pending["action"]["state"] == core.FORCED_OPEN
    assert row.forced_state == core.FORCED_OPEN  # the durable intent
    assert not CircuitEvent.objects.filter(circuit=row).exists()

    back(stalled)

    assert another_worker().state == core.FORCED_OPEN
    assert Circuit.objects.get(name=CIRCUIT).pending == {}
    event = CircuitEvent.objects.get(circuit=row)
    assert (event.to_state, event.actor, event.source, event.reason) == (
        core.FORCED_OPEN, operator, "admin", "vendor down")


def test_a_change_neither_redis_nor_the_database_can_take_is_refused(
        stalled, settings, unreachable_database):
    settings.DATABASE_ROUTERS = ["resilience_crm.routers.ResilienceRouter"]
    settings.RESILIENCE_CRM = {**settings.RESILIENCE_CRM, "DATABASE_ALIAS": unreachable_database}

    with pytest.raises(ManualChangeRefused, match="nothing changed"):
        control.steer(CIRCUIT, core.FORCED_OPEN, reason="vendor down", source="command")

    assert another_worker().state == core.CLOSED


def test_the_commands_say_pending_or_refuse(stalled, settings, unreachable_database):
    from io import StringIO

    out = StringIO()
    call_command("resilience_force", CIRCUIT, "forced_open", stdout=out)
    assert "NOT yet in effect" in out.getvalue()
    out = StringIO()
    call_command("resilience_reset", CIRCUIT, stdout=out)
    assert "NOT yet in effect" in out.getvalue()

    settings.DATABASE_ROUTERS = ["resilience_crm.routers.ResilienceRouter"]
    settings.RESILIENCE_CRM = {**settings.RESILIENCE_CRM, "DATABASE_ALIAS": unreachable_database}
    with pytest.raises(CommandError, match="nothing changed"):
        call_command("resilience_force", CIRCUIT, "disabled")


def _apply_after_barrier(index, barrier, announced):
    def count(sender, **kwargs):
        with announced.get_lock():
            announced.value += 1

    circuit_transition.connect(count, weak=False)
    barrier.wait(timeout=30)
    control.apply_pending()


def test_a_pending_change_is_applied_exactly_once_across_workers(settings, redis_settings,
                                                                  postgres):
    settings.RESILIENCE_CRM = {"STORE": "redis", "CACHE_ALIAS": "redis", "SNAPSHOT_TTL": 0}
    Circuit.objects.filter(name=CIRCUIT).update(
        forced_state=core.DISABLED,
        pending={"action": {"state": core.DISABLED, "reason": "load test", "until": None,
                            "actor_id": None, "source": "command", "at": "2026-01-01"}},
    )
    registry.clear()
    connections.close_all()  # children open their own connections
    barrier, announced = ctx.Barrier(6), ctx.Value("i", 0)

    run_processes(_apply_after_barrier, barrier, announced, count=6)

    assert announced.value == 1
    assert list(CircuitEvent.objects.filter(circuit__name=CIRCUIT)
                .values_list("to_state", flat=True)) == [core.DISABLED]
    assert another_worker().state == core.DISABLED


def test_overrides_saved_while_redis_is_unreachable_reach_workers_when_it_is_back(
        stalled, admin_client):
    circuit = Circuit.objects.get(name=CIRCUIT)
    response = admin_client.post(
        reverse("admin:resilience_crm_circuit_change", args=[circuit.pk]),
        {"config": '{"failure_threshold": 9}'}, follow=True)

    assert response.status_code == 200
    assert "shared store is unreachable" in response.content.decode()
    assert Circuit.objects.get(pk=circuit.pk).pending == {"config": True}
    assert another_worker().config.failure_threshold != 9

    back(stalled)

    worker = another_worker()
    worker.state  # noqa: B018  (its next step picks the overrides up)
    assert worker.config.failure_threshold == 9
    assert Circuit.objects.get(pk=circuit.pk).pending == {}


def test_a_new_worker_takes_the_saved_overrides_from_redis_not_the_database(
        redis_settings, django_assert_num_queries):
    assert control.push_config(CIRCUIT, {"failure_threshold": 9, "half_open_max_calls": 2})
    registry.clear()  # a worker that never made the breaker

    with django_assert_num_queries(0):
        breaker = registry.get_breaker(CIRCUIT)

    # Before its first step: a trial permit is never granted on the settings' figures.
    assert (breaker.config.failure_threshold, breaker.config.half_open_max_calls) == (9, 2)


def test_a_new_worker_takes_the_saved_overrides_from_the_row_while_redis_is_down(
        redis_settings):
    """Redis unreachable, the database up: the breaker runs on what is saved on the row."""
    Circuit.objects.filter(name=CIRCUIT).update(config={"failure_threshold": 9})
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there
    redis_settings.CACHES = {**redis_settings.CACHES, "down": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": f"redis://127.0.0.1:{port}/0",
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.25, "SOCKET_TIMEOUT": 0.25},
    }}
    redis_settings.RESILIENCE_CRM = {"STORE": "redis", "CACHE_ALIAS": "down"}

    breaker = registry.get_breaker(CIRCUIT)

    assert not registry.get_store().available
    assert breaker.config.failure_threshold == 9


def _staff(client, *codenames: str) -> User:
    user = User.objects.create_user("editor", password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(
        content_type__app_label="resilience_crm",
        codename__in=["view_circuit", "change_circuit", *codenames]))
    client.force_login(user)
    return user


def test_breaker_settings_need_their_own_permission(client, redis_settings):
    circuit = Circuit.objects.get(name=CIRCUIT)
    _staff(client)
    url = reverse("admin:resilience_crm_circuit_change", args=[circuit.pk])

    client.post(url, {"config": '{"failure_threshold": 0, "failure_rate_threshold": 0}'})

    assert Circuit.objects.get(pk=circuit.pk).config == {}
    assert registry.get_breaker(CIRCUIT).config.failure_threshold == 5


def test_editing_breaker_settings_leaves_a_diff_in_the_audit_trail(client, redis_settings):
    circuit = Circuit.objects.get(name=CIRCUIT)
    Circuit.objects.filter(pk=circuit.pk).update(config={"failure_threshold": 5, "window": 60})
    user = _staff(client, "change_circuit_config")

    client.post(reverse("admin:resilience_crm_circuit_change", args=[circuit.pk]),
                {"config": '{"failure_threshold": 10, "reset_timeout": 90}'})

    entry = LogEntry.objects.get(object_id=str(circuit.pk), user=user)
    assert entry.get_change_message() == (
        "Changed breaker settings: failure_threshold: 5 -> 10; reset_timeout: (default) -> 90;"
        " window: 60 -> (default).")
    assert registry.get_breaker(CIRCUIT).config.failure_threshold == 10


def test_a_circuit_with_an_audit_trail_cannot_be_deleted(admin_client, redis_settings):
    circuit = Circuit.objects.get(name=CIRCUIT)
    control.steer(CIRCUIT, core.FORCED_OPEN, reason="drill", source="command")

    response = admin_client.post(
        reverse("admin:resilience_crm_circuit_delete", args=[circuit.pk]), {"post": "yes"})

    assert response.status_code == 403  # not offered: the events are its audit trail
    assert Circuit.objects.filter(pk=circuit.pk).exists()
    assert CircuitEvent.objects.filter(circuit=circuit).count() == 1
