"""What the admin dashboard shows, gathered in one place: every circuit's live state, its
calls, failure rate and latency over the last hour and day (from ``CircuitMetric``), the
recent transitions with who and why, and the queued writes."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import DatabaseError
from django.utils import timezone
from django.utils.safestring import SafeString

import resilience_crm.admin.charts as charts
import resilience_crm.admin.incidents as incidents
from resilience_crm.breakers import machine, registry
from resilience_crm.breakers.control import known_circuits
from resilience_crm.models import CircuitEvent, CircuitMetric, QueuedWrite
from resilience_crm.observability import exposition
from resilience_crm.provider import probe

#: The two spans the charts cover: (name, slots, minutes per slot).
SPANS = (("hour", 60, 1), ("day", 48, 30))
COLOURS = {"calls": "#417690", "failure_rate": "#b52a1c", "latency": "#b36b00"}
RECENT_EVENTS = 15
#: Slots between two labels of the time axis: every 15 minutes, every 6 hours.
TICK_EVERY = {"hour": 15, "day": 12}
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
    moment = now or timezone.now()
    names = known_circuits()
    windows = {span: _window(moment, slots, minutes) for span, slots, minutes in SPANS}
    earliest = min(start for start, _ in windows.values())
    rows = (CircuitMetric.objects.filter(circuit__name__in=names, bucket__gte=earliest)
            .values_list("circuit__name", "bucket", "calls", "failures", "latency_sum_ms",
                         "latency_max_ms"))
    by_circuit: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for name, *rest in rows:
        by_circuit[name].append(tuple(rest))
    opened = _open_periods(names, earliest, moment)
    panels = []
    for name in names:
        panel = CircuitPanel(name, _snapshot(name))
        periods = opened.get(name, [])
        if panel.snapshot.get("state") in machine.STRUGGLING and not any(
                end is None for _, end in periods):  # its events are not written yet
            periods.append((panel.snapshot.get("opened_at") or moment, None))
        for span, slots, minutes in SPANS:
            panel.spans.append(Span(span, *_span(by_circuit[name], windows[span][0], slots,
                                                 minutes, span, periods, moment)))
        panels.append(panel)
    events = (CircuitEvent.objects.select_related("circuit", "actor")
              .order_by("-created_at", "-pk")[:RECENT_EVENTS])
    queue = probe.waiting(QueuedWrite.counts())
    return {"panels": panels, "events": list(events), "queue": queue,
            "now": moment.replace(second=0, microsecond=0),
            "tiers": tier_decisions(), "incidents": incidents.recent(names, RECENT_INCIDENTS)}


def _window(moment: datetime, slots: int, minutes: int) -> tuple[datetime, datetime]:
    """The span's start and end: whole slots, the last one the slot ``moment`` is in."""
    slot = timedelta(minutes=minutes)
    midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    end = midnight + slot * ((moment - midnight) // slot + 1)
    return end - slot * slots, end


def _open_periods(names: list[str], since: datetime,
                  moment: datetime) -> dict[str, list[tuple[datetime, datetime | None]]]:
    """When each circuit refused calls (open, half-open, forced open) since ``since``:
    ``(start, end)``, ``end`` ``None`` while it goes on."""
    found = (CircuitEvent.objects.filter(circuit__name__in=names, created_at__gte=since)
             .exclude(source="local").select_related("circuit").order_by("created_at", "pk"))
    periods: dict[str, list[tuple[datetime, datetime | None]]] = defaultdict(list)
    for incident in incidents.group(found):
        periods[incident.circuit].append((incident.start, incident.end))
    return periods


def live() -> dict[str, Any]:
    """The figures the dashboard updates in place: each circuit's state, generation and
    seconds to its next trial, and the queue's depth."""
    circuits = {}
    for name in known_circuits():
        snap = _snapshot(name)
        circuits[name] = {"state": snap["state"], "generation": snap.get("generation"),
                          "retry_after": snap.get("retry_after")}
    try:
        queue = probe.waiting(QueuedWrite.counts())
    except DatabaseError:  # the database is down: the states still tell
        queue = {}
    return {"at": timezone.now().isoformat(), "circuits": circuits,
            "queue": {key: queue.get(key) for key in ("waiting", "in_redis", "dead")}}


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


def _milliseconds(value: float) -> str:
    return f"{charts.number(value)} ms"


def _span(rows: list[tuple[Any, ...]], start: datetime, slots: int, minutes: int, span: str,
          periods: list[tuple[datetime, datetime | None]], moment: datetime,
          ) -> tuple[dict[str, SafeString], dict[str, float]]:
    """Charts of one circuit's calls, failure rate and mean latency over ``slots`` slots of
    ``minutes`` minutes from ``start``, with ``periods`` shaded, and the span's totals (the
    numbers its card shows)."""
    slot_seconds = minutes * 60
    calls = [0] * slots
    failures = [0] * slots
    latency = [0.0] * slots
    for bucket, n, failed, latency_sum, _ in rows:
        index = int((bucket - start).total_seconds() // slot_seconds)
        if 0 <= index < slots:
            calls[index] += n
            failures[index] += failed
            latency[index] += latency_sum
    times = [f"{timezone.localtime(start + timedelta(minutes=i * minutes)):%H:%M}"
             for i in range(slots + 1)]
    labels = times[:slots]
    ticks = [(i, times[i]) for i in range(0, slots + 1, TICK_EVERY[span])]
    shaded = [((begin - start).total_seconds() / slot_seconds,
               ((end or moment) - start).total_seconds() / slot_seconds)
              for begin, end in periods]
    rate = [failures[i] / calls[i] if calls[i] else None for i in range(slots)]
    mean = [latency[i] / calls[i] if calls[i] else None for i in range(slots)]
    total_calls, total_failures = sum(calls), sum(failures)
    axes: dict[str, Any] = {"ticks": ticks, "shaded": shaded}
    return (
        {
            "calls": charts.bars(calls, labels, colour=COLOURS["calls"], scale=charts.number,
                                 title=f"calls per {minutes} min, last {span}", **axes),
            "failure_rate": charts.bars(rate, labels, colour=COLOURS["failure_rate"],
                                        ceiling=1, fmt="{:.0%}",
                                        title=f"failure rate, last {span}", **axes),
            "latency": charts.bars(mean, labels, colour=COLOURS["latency"], fmt="{:,.0f} ms",
                                   scale=_milliseconds, title=f"mean latency, last {span}",
                                   **axes),
        },
        {"calls": total_calls, "failures": total_failures,
         "failure_rate": total_failures / total_calls if total_calls else 0.0,
         "latency_ms": sum(latency) / total_calls if total_calls else 0.0,
         "open_minutes": round(sum(min(end, float(slots)) - max(0.0, begin)
                                   for begin, end in shaded if end > 0 and begin < slots)
                               * minutes, 1)},
    )
