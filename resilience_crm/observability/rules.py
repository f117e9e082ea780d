"""Alert rules beyond a circuit opening and recovering (those are
:mod:`resilience_crm.observability.alerts`).

Each rule looks at the whole cluster's record, not one worker's: the per-minute
``CircuitMetric`` rows every worker adds to, the ``CircuitEvent`` audit trail, and the
circuits' live states. :func:`evaluate` runs them all; the background flusher calls it after
it has written the metrics, every few seconds, in every worker.

One alert per incident, across the cluster: an incident starts when a rule's condition
becomes true and ends when it is false again. The first worker to see it start claims it
with an atomic ``add`` in the shared cache and sends the alert; the others find it claimed.
The claim is dropped when a worker sees the condition gone (or after ``INCIDENT_TTL``), so
the next incident alerts again. With a per-process cache each worker claims for itself.

Rules, configured by ``RESILIENCE_CRM["ALERT_RULES"]`` (``None`` turns one off):

``failure_rate``  a circuit's failures / calls over ``window`` seconds at least ``threshold``,
                  once it made ``min_calls`` calls (default 10% over 5 minutes, 20 calls);
``slow``          a circuit's mean latency over ``window`` seconds at least ``threshold_ms``;
``flapping``      more than ``transitions`` transitions of one circuit in ``window`` seconds;
``many_open``     at least ``circuits`` circuits rejecting calls at once.

A finding whose look-back overlaps a drill (:mod:`resilience_crm.observability.drills`)
pages nobody, unless the drill was begun with ``page=True``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.core.cache import caches
from django.db.models import Count, Sum
from django.utils import timezone

import resilience_crm.observability.drills as drills
from resilience_crm.breakers import machine, registry
from resilience_crm.conf import settings
from resilience_crm.models import CircuitEvent, CircuitMetric

logger = logging.getLogger("resilience_crm.observability.rules")

DEFAULT_RULES: dict[str, dict[str, float]] = {
    "failure_rate": {"threshold": 0.10, "window": 300, "min_calls": 20},
    "slow": {"threshold_ms": 2000, "window": 300, "min_calls": 20},
    "flapping": {"transitions": 6, "window": 3600},
    "many_open": {"circuits": 2},
}
#: Seconds a claimed incident lives in the cache without being seen again.
INCIDENT_TTL = 6 * 3600
#: Seconds between two evaluations by one worker's flusher.
EVALUATE_INTERVAL = 30.0

_next_evaluation = 0.0


@dataclass(frozen=True)
class Finding:
    rule: str
    subject: str  # the circuit, or "cluster"
    message: str
    details: dict[str, Any]


def rules() -> dict[str, dict[str, float]]:
    """The rules in force: the defaults overlaid with ``ALERT_RULES``, without those off."""
    configured = settings.ALERT_RULES if isinstance(settings.ALERT_RULES, dict) else {}
    merged: dict[str, dict[str, float]] = {}
    for name, default in DEFAULT_RULES.items():
        value = configured.get(name, {})
        if value is None or value is False:
            continue
        merged[name] = default | (value if isinstance(value, dict) else {})
    return merged


def evaluate(now: datetime | None = None) -> list[Finding]:
    """Run every rule; send an alert for each incident that starts now; returns them."""
    now = now or timezone.now()
    active = rules()
    findings = [finding for finding in _findings(active, now)
                if not drills.silenced(now - timedelta(seconds=_look_back(active, finding)),
                                       now)]
    started = []
    cache = caches[settings.CACHE_ALIAS]
    firing = {(f.rule, f.subject) for f in findings}
    for finding in findings:
        if cache.add(_claim(finding.rule, finding.subject), now.isoformat(), INCIDENT_TTL):
            started.append(finding)
            send(finding)
    for rule in active:
        for subject in [*settings.circuit_names(), "cluster"]:
            if (rule, subject) not in firing:
                cache.delete(_claim(rule, subject))
    return started


def _look_back(active: dict[str, dict[str, float]], finding: Finding) -> float:
    """Seconds of the record ``finding`` was drawn from (``many_open``: this moment)."""
    return float(active[finding.rule].get("window", 0))


def send(finding: Finding) -> bool:
    """One Sentry warning for the incident; never raises."""
    if not settings.SENTRY_ALERTS:
        return False
    try:
        import sentry_sdk

        if not sentry_sdk.is_initialized():
            logger.warning("Alert %s: %s", finding.rule, finding.message)
            return False
        with sentry_sdk.new_scope() as scope:
            scope.set_tag("alert_rule", finding.rule)
            if finding.subject != "cluster":
                scope.set_tag("circuit", finding.subject)
            scope.fingerprint = ["resilience-rule", finding.rule, finding.subject]
            scope.set_context("alert", {"rule": finding.rule, **finding.details})
            sentry_sdk.capture_message(finding.message, level="warning")
        return True
    except Exception:  # alerting must never break the flusher
        logger.exception("Sending the %s alert failed.", finding.rule)
        return False


def _claim(rule: str, subject: str) -> str:
    return f"resilience:incident:{rule}:{subject}"


def _findings(active: dict[str, dict[str, float]], now: datetime) -> Iterator[Finding]:
    for rule in ("failure_rate", "slow"):
        if rule in active:
            yield from _traffic(rule, active[rule], now)
    if "flapping" in active:
        yield from _flapping(active["flapping"], now)
    if "many_open" in active:
        yield from _many_open(active["many_open"])


def _traffic(rule: str, config: dict[str, float], now: datetime) -> Iterator[Finding]:
    since = now - timedelta(seconds=config["window"])
    minutes = round(config["window"] / 60)
    rows = (CircuitMetric.objects.filter(bucket__gte=since.replace(second=0, microsecond=0))
            .values("circuit__name").annotate(calls=Sum("calls"), failures=Sum("failures"),
                                              latency=Sum("latency_sum_ms")))
    for row in rows:
        calls = row["calls"] or 0
        if calls < config["min_calls"]:
            continue
        name = row["circuit__name"]
        if rule == "failure_rate":
            rate = (row["failures"] or 0) / calls
            if rate >= config["threshold"]:
                yield Finding(rule, name,
                              f"Circuit {name}: {rate:.0%} of {calls} calls failed in the last "
                              f"{minutes} min (threshold {config['threshold']:.0%})",
                              {"failure_rate": round(rate, 4), "calls": calls})
        else:
            mean = (row["latency"] or 0) / calls
            if mean >= config["threshold_ms"]:
                yield Finding(rule, name,
                              f"Circuit {name}: calls took {mean:,.0f} ms on average in the "
                              f"last {minutes} min (threshold {config['threshold_ms']:,.0f} ms)",
                              {"mean_latency_ms": round(mean, 1), "calls": calls})


def _flapping(config: dict[str, float], now: datetime) -> Iterator[Finding]:
    since = now - timedelta(seconds=config["window"])
    rows = (CircuitEvent.objects.filter(created_at__gte=since).exclude(source="local")
            .values("circuit__name").annotate(n=Count("pk")))
    for row in rows:
        if row["n"] > config["transitions"]:
            name = row["circuit__name"]
            yield Finding("flapping", name,
                          f"Circuit {name} is flapping: {row['n']} transitions in the last "
                          f"{round(config['window'] / 60)} min",
                          {"transitions": row["n"]})


def _many_open(config: dict[str, float]) -> Iterator[Finding]:
    rejecting = []
    for name in settings.circuit_names():
        try:
            if registry.get_breaker(name).peek() in machine.REJECTING:
                rejecting.append(name)
        except Exception:  # a store that cannot be read proves nothing either way
            logger.exception("Alert rules: circuit %s could not be read.", name)
    if len(rejecting) >= config["circuits"]:
        yield Finding("many_open", "cluster",
                      f"{len(rejecting)} circuits reject calls at once: {', '.join(rejecting)}",
                      {"circuits": rejecting})


def evaluate_due() -> None:
    """:func:`evaluate`, at most every ``EVALUATE_INTERVAL`` seconds (a flusher task)."""
    global _next_evaluation
    now = time.monotonic()
    if now < _next_evaluation:
        return
    _next_evaluation = now + EVALUATE_INTERVAL
    evaluate()
