"""What the admin dashboard shows, gathered in one place: every circuit's live state, its
calls, failure rate and latency over the last hour and day (from ``CircuitMetric``), the
recent transitions with who and why, and the queued writes."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone
from django.utils.safestring import SafeString

import resilience_crm.admin.charts as charts
import resilience_crm.admin.incidents as incidents
from resilience_crm.breakers import registry
from resilience_crm.breakers.control import known_circuits
from resilience_crm.models import CircuitEvent, CircuitMetric, QueuedWrite
from resilience_crm.observability import exposition
from resilience_crm.provider import probe

#: The two spans the charts cover: (name, slots, minutes per slot).
SPANS = (("hour", 60, 1), ("day", 48, 30))
COLOURS = {"calls": "#417690", "failure_rate": "#b52a1c", "latency": "#b36b00"}
RECENT_EVENTS = 15
RECENT_INCIDENTS = 10


@dataclass
class Span:
    name: str
    charts: dict[str, SafeString]
    totals: dict[str, float]


@dataclass
class CircuitPanel:
    name: str
    snapshot: dict[str, Any]
    spans: list[Span] = field(default_factory=list)
    pk: int | None = None
    badge: str = ""
    hold: Any = None
    buttons: list[dict[str, Any]] = field(default_factory=list)


def context(now: datetime | None = None) -> dict[str, Any]:
    now = (now or timezone.now()).replace(second=0, microsecond=0)
    names = known_circuits()
    earliest = now - timedelta(minutes=SPANS[-1][1] * SPANS[-1][2])
    rows = (CircuitMetric.objects.filter(circuit__name__in=names, bucket__gt=earliest)
            .values_list("circuit__name", "bucket", "calls", "failures", "latency_sum_ms",
                         "latency_max_ms"))
    by_circuit: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for name, *rest in rows:
        by_circuit[name].append(tuple(rest))
    panels = []
    for name in names:
        panel = CircuitPanel(name, _snapshot(name))
        for span, slots, minutes in SPANS:
            panel.spans.append(Span(span, *_span(by_circuit[name], now, slots, minutes, span)))
        panels.append(panel)
    events = (CircuitEvent.objects.select_related("circuit", "actor")
              .order_by("-created_at", "-pk")[:RECENT_EVENTS])
    queue = probe.waiting(QueuedWrite.counts())
    return {"panels": panels, "events": list(events), "queue": queue, "now": now,
            "tiers": tier_decisions(), "incidents": incidents.recent(names, RECENT_INCIDENTS)}


def tier_decisions() -> list[dict[str, Any]]:
    """The cluster's rate-limit decisions by tier since the counters began: admitted,
    rejected, decided in shadow mode, and the share rejected."""
    try:
        found = exposition.totals("ratelimit_tier_decisions")
    except Exception:  # Redis down: the page renders without the table
        return []
    rows: dict[str, dict[str, Any]] = {}
    for (tier, decision), count in found.items():
        row = rows.setdefault(tier, {"tier": tier, "allowed": 0, "rejected": 0, "shadow": 0,
                                     "other": 0})
        if decision.startswith("shadow"):
            row["shadow"] += count
        elif decision.endswith("rejected"):
            row["rejected"] += count
        elif decision.endswith("allowed"):
            row["allowed"] += count
        else:  # exempt, unlimited, unavailable
            row["other"] += count
    for row in rows.values():
        decided = row["allowed"] + row["rejected"]
        row["rejected_share"] = row["rejected"] / decided if decided else 0.0
    return sorted(rows.values(), key=lambda row: row["tier"])


def _snapshot(name: str) -> dict[str, Any]:
    try:
        return registry.get_breaker(name).snapshot()
    except Exception:  # the page must render when the store and the fallback both fail
        return {"state": "unknown", "store": "?", "calls": 0, "failures": 0,
                "failure_rate": 0.0}


def _span(rows: list[tuple[Any, ...]], now: datetime, slots: int, minutes: int,
          span: str) -> tuple[dict[str, SafeString], dict[str, float]]:
    """Charts of one circuit's calls, failure rate and mean latency over ``slots`` slots of
    ``minutes`` minutes ending now, and the span's totals."""
    start = now - timedelta(minutes=slots * minutes)
    calls = [0] * slots
    failures = [0] * slots
    latency = [0.0] * slots
    for bucket, n, failed, latency_sum, _ in rows:
        index = int((bucket - start).total_seconds() // (minutes * 60))
        if 0 <= index < slots:
            calls[index] += n
            failures[index] += failed
            latency[index] += latency_sum
    labels = [f"{timezone.localtime(start + timedelta(minutes=(i + 1) * minutes)):%H:%M}"
              for i in range(slots)]
    rate = [failures[i] / calls[i] if calls[i] else None for i in range(slots)]
    mean = [latency[i] / calls[i] if calls[i] else None for i in range(slots)]
    total_calls, total_failures = sum(calls), sum(failures)
    return (
        {
            "calls": charts.bars(calls, labels, colour=COLOURS["calls"],
                                 title=f"calls per {minutes} min, last {span}"),
            "failure_rate": charts.bars(rate, labels, colour=COLOURS["failure_rate"],
                                        ceiling=1, fmt="{:.0%}",
                                        title=f"failure rate, last {span}"),
            "latency": charts.bars(mean, labels, colour=COLOURS["latency"], fmt="{:,.1f} ms",
                                   title=f"mean latency, last {span}"),
        },
        {"calls": total_calls,
         "failure_rate": total_failures / total_calls if total_calls else 0.0,
         "latency_ms": sum(latency) / total_calls if total_calls else 0.0},
    )
