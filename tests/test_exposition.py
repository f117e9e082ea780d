"""/resilience/metrics: OpenMetrics text with the DESIGN names, summed over every worker
through Redis, for staff or the monitoring token only."""

from __future__ import annotations

import pytest
from django.urls import reverse
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from resilience_crm import metrics
from resilience_crm.breakers import machine as core
from resilience_crm.breakers import registry
from resilience_crm.models import QueuedWrite
from resilience_crm.observability import exposition
from tests.processes import ctx, run_processes

METRICS = reverse("resilience:metrics")
TOKEN = "metrics-token"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _boom():
    raise ConnectionError("refused")


@pytest.mark.django_db
def test_metrics_need_staff_or_the_token(client, admin_client, settings):
    settings.RESILIENCE_CRM = {"MONITORING_TOKEN": TOKEN}
    assert client.get(METRICS).status_code == 401
    assert client.get(METRICS, HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get(METRICS, HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200
    response = admin_client.get(METRICS)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/openmetrics-text; version=1.0.0; charset=utf-8"
    assert response.content.decode().endswith("# EOF\n")


@pytest.mark.django_db
def test_the_design_names_with_states_calls_and_queue(admin_client, settings):
    settings.RESILIENCE_CRM = {"STORE": "memory"}
    breaker = registry.get_breaker("crm.write")
    breaker.call(lambda: "ok")
    with pytest.raises(ConnectionError):
        breaker.call(_boom)
    registry.get_breaker("crm.rpc").force(core.FORCED_OPEN, reason="vendor down")
    QueuedWrite.objects.create(name="contact.create", idempotency_key="k", payload={},
                               payload_hash="x")

    found = samples(admin_client.get(METRICS).content.decode())

    assert found[("resilience_calls_total", (("circuit", "crm.write"),
                                             ("outcome", "success")))] == 1
    assert found[("resilience_calls_total", (("circuit", "crm.write"),
                                             ("outcome", "failure")))] == 1
    assert found[("resilience_circuit_state", (("circuit", "crm.rpc"),
                                               ("state", "forced_open")))] == 1
    assert found[("resilience_circuit_state", (("circuit", "crm.rpc"),
                                               ("state", "closed")))] == 0
    assert found[("resilience_queued_writes", (("state", "pending"),))] == 1


def _count_calls(index, barrier, calls):
    breaker = registry.get_breaker("crm.read")
    barrier.wait(timeout=30)
    for _ in range(calls * (index + 1)):
        breaker.call(lambda: "ok")
    assert exposition.push() >= 1


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_counts_from_every_process_add_up(admin_client, redis_settings, redis_cache):
    from django.db import connections

    redis_settings.RESILIENCE_CRM = {"STORE": "redis", "CACHE_ALIAS": "redis"}
    registry.clear()
    connections.close_all()
    barrier = ctx.Barrier(4)
    run_processes(_count_calls, barrier, 25, count=4)
    registry.get_breaker("crm.read").call(lambda: "ok")  # this process's own call, pushed now

    found = samples(admin_client.get(METRICS).content.decode())

    # 25 + 50 + 75 + 100 calls in the children, 1 here.
    assert found[("resilience_calls_total", (("circuit", "crm.read"),
                                             ("outcome", "success")))] == 251
    assert metrics.value("calls", circuit="crm.read", outcome="success") == 1
