"""Alert rules over the cluster's record: failure rate, slow calls, flapping, several
circuits open; one Sentry event per incident across every worker."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone

from resilience_crm import checks
from resilience_crm.breakers import events as audit
from resilience_crm.breakers import machine as core
from resilience_crm.breakers import registry
from resilience_crm.models import Circuit, CircuitEvent, CircuitMetric
from resilience_crm.observability import drills, rules
from tests.processes import ctx, run_processes
from tests.sentry_server import received

pytestmark = pytest.mark.django_db


def minute(ago: int):
    return timezone.now().replace(second=0, microsecond=0) - timedelta(minutes=ago)


def alerted(sentry, caplog) -> list[dict]:
    """The events the ingest server received; if none came, why (for a failure message)."""
    import sentry_sdk

    events = received(sentry, at_least=1)
    assert events, (sentry_sdk.is_initialized(), sentry_sdk.get_client().dsn,
                    sentry.dsn, caplog.text[-2000:])
    return events


def traffic(name: str, calls: int, failures: int = 0, latency_ms: float = 10.0, ago: int = 1):
    circuit = Circuit.objects.get_or_create(name=name)[0]
    return CircuitMetric.objects.create(circuit=circuit, bucket=minute(ago), calls=calls,
                                        successes=calls - failures, failures=failures,
                                        latency_sum_ms=calls * latency_ms)


def test_a_failure_rate_over_the_threshold_alerts_once_per_incident(sentry):
    row = traffic("crm.read", 100, failures=15)

    assert [f.rule for f in rules.evaluate()] == ["failure_rate"]
    assert rules.evaluate() == []  # the same incident
    events = received(sentry, at_least=1)
    assert len(events) == 1
    assert events[0]["level"] == "warning"
    assert events[0]["fingerprint"] == ["resilience-rule", "failure_rate", "crm.read"]
    assert events[0]["message"] == ("Circuit crm.read: 15% of 100 calls failed in the last 5 "
                                    "min (threshold 10%)")

    CircuitMetric.objects.filter(pk=row.pk).update(failures=2)  # over: the incident ends
    assert rules.evaluate() == []
    CircuitMetric.objects.filter(pk=row.pk).update(failures=30)  # a new incident
    assert [f.rule for f in rules.evaluate()] == ["failure_rate"]
    assert len(received(sentry, at_least=2)) == 2


def test_old_or_thin_traffic_does_not_alert(sentry):
    traffic("crm.read", 100, failures=90, ago=10)  # outside the 5 minutes
    traffic("crm.write", 10, failures=10)  # under min_calls
    assert rules.evaluate() == []
    assert received(sentry) == []


def test_slow_calls_alert(sentry, caplog):
    traffic("crm.rpc", 50, latency_ms=3500)
    (finding,) = rules.evaluate()
    assert (finding.rule, finding.subject) == ("slow", "crm.rpc")
    events = alerted(sentry, caplog)
    assert "3,500 ms on average" in events[0]["message"]


def test_flapping_alerts_but_local_transitions_do_not_count(sentry):
    circuit = Circuit.objects.get(name="crm.auth")
    for generation in range(1, 8):
        CircuitEvent.objects.create(circuit=circuit, generation=generation, from_state="closed",
                                    to_state="open" if generation % 2 else "closed")
    (finding,) = rules.evaluate()
    assert (finding.rule, finding.subject, finding.details) == (
        "flapping", "crm.auth", {"transitions": 7})


def test_several_circuits_open_at_once_alert_for_the_cluster(sentry, settings, caplog):
    settings.RESILIENCE_CRM = {"STORE": "memory"}
    registry.get_breaker("crm.read").force(core.FORCED_OPEN, reason="drill")
    assert rules.evaluate() == []
    registry.get_breaker("crm.write").force(core.FORCED_OPEN, reason="drill")
    (finding,) = rules.evaluate()
    assert (finding.rule, finding.subject) == ("many_open", "cluster")
    assert alerted(sentry, caplog)[0]["message"] == (
        "2 circuits reject calls at once: crm.read, crm.write")


def test_rules_are_configurable_and_can_be_turned_off(sentry, settings):
    traffic("crm.read", 100, failures=15, latency_ms=3000)
    settings.RESILIENCE_CRM = {"ALERT_RULES": {"failure_rate": {"threshold": 0.2},
                                               "slow": None}}
    assert rules.evaluate() == []
    settings.RESILIENCE_CRM = {"ALERT_RULES": {"failure_rate": {"threshold": 0.15}}}
    assert {f.rule for f in rules.evaluate()} == {"failure_rate", "slow"}


@pytest.mark.parametrize(("value", "error"), [
    ([], 'RESILIENCE_CRM["ALERT_RULES"] must be a dict, not list.'),
    ({"latency": {}}, 'RESILIENCE_CRM["ALERT_RULES"]["latency"] is not an alert rule.'),
    ({"slow": {"threshold_ms": -1}},
     'RESILIENCE_CRM["ALERT_RULES"]["slow"]["threshold_ms"] must be a number above 0, not -1.'),
    ({"flapping": {"transition": 3}},
     'RESILIENCE_CRM["ALERT_RULES"]["flapping"]["transition"] is not a setting of this rule '
     "(it has transitions, window)."),
])
def test_e019_alert_rules_are_checked(settings, value, error):
    from django.core.checks import run_checks

    settings.RESILIENCE_CRM = {"ALERT_RULES": value}
    found = [m for m in run_checks(tags=[checks.TAG]) if m.id == checks.Codes.ALERT_RULES_INVALID]
    assert [m.msg for m in found] == [error]
    assert found[0].hint.startswith('Example: {"failure_rate"')


def _evaluate_at_once(index, barrier, dsn):
    import sentry_sdk

    sentry_sdk.init(dsn=dsn, default_integrations=False)  # a worker's own client
    barrier.wait(timeout=30)
    rules.evaluate()
    sentry_sdk.flush(timeout=5)


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_one_alert_per_incident_across_worker_processes(sentry, redis_settings):
    redis_settings.RESILIENCE_CRM = {"CACHE_ALIAS": "redis", "STORE": "memory"}
    traffic("crm.read", 100, failures=50)
    connections.close_all()

    run_processes(_evaluate_at_once, ctx.Barrier(6), sentry.dsn, count=6)

    assert rules.evaluate() == []  # claimed by a worker already
    events = received(sentry, at_least=1)
    assert [e["fingerprint"] for e in events] == [["resilience-rule", "failure_rate",
                                                   "crm.read"]]


def flapped(name: str, transitions: int = 7) -> None:
    circuit = Circuit.objects.get_or_create(name=name)[0]
    for generation in range(1, transitions + 1):
        CircuitEvent.objects.create(circuit=circuit, generation=generation, from_state="closed",
                                    to_state="open" if generation % 2 else "closed")


def test_a_drill_pages_nobody_while_it_runs_nor_after_within_the_look_back(sentry):
    drills.begin("run1")
    flapped("crm.auth")
    assert rules.evaluate() == []
    drills.end("run1")
    assert rules.evaluate() == []  # the flapping look-back (an hour) still covers the drill
    # An hour and a minute on, the drill is out of the look-back: the same record would page.
    later = timezone.now() + timedelta(minutes=61)
    assert not drills.silenced(later - timedelta(hours=1), later)
    assert drills.silenced(timezone.now() - timedelta(hours=1))
    assert received(sentry) == []


def test_a_drill_asked_to_page_pages(sentry):
    drills.begin("run2", page=True)
    flapped("crm.auth")
    try:
        (finding,) = rules.evaluate()
    finally:
        drills.end("run2")
    assert (finding.rule, finding.subject) == ("flapping", "crm.auth")
    assert len(received(sentry, at_least=1)) == 1


def test_a_drill_tags_the_transitions_recorded_while_it_runs(settings):
    settings.RESILIENCE_CRM = {"STORE": "memory"}
    drills.begin("run3")
    try:
        registry.get_breaker("crm.read").force(core.FORCED_OPEN, reason="game day")
    finally:
        drills.end("run3")
    registry.get_breaker("crm.read").reset(reason="over")
    audit.flush()
    reasons = list(CircuitEvent.objects.filter(circuit__name="crm.read")
                   .order_by("generation").values_list("reason", flat=True))
    assert reasons == ["game day [drill run3]", "over"]
    assert drills.current() is None
