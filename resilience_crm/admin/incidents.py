"""Incidents, not a list of transitions: a circuit's events grouped from the moment it
stopped passing calls (opened, or was forced open) to the moment it passed them again
(recovered after a half-open trial, or was reset), with who and why, how long it lasted,
the calls it refused and the reads served from the fallback meanwhile (from the per-minute
``CircuitMetric`` rows), and the alerts its transitions called for."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import Sum
from django.utils import timezone

from resilience_crm.breakers import machine
from resilience_crm.models import CircuitEvent, CircuitMetric
from resilience_crm.observability.alerts import alert_for

#: How many of the latest events are read to find the incidents (per query).
SCAN = 500
_DRILL = re.compile(r"\[drill ([\w-]+)\]")


@dataclass
class Incident:
    circuit: str
    events: list[CircuitEvent] = field(default_factory=list)
    #: Calls refused and reads served by a fallback while it lasted (whole minutes).
    refused: int = 0
    fallbacks: int = 0

    @property
    def start(self) -> datetime:
        return self.events[0].created_at

    @property
    def end(self) -> datetime | None:
        """When calls passed again; ``None`` while it goes on."""
        last = self.events[-1]
        return last.created_at if last.to_state in machine.PASSING else None

    @property
    def ongoing(self) -> bool:
        return self.end is None

    @property
    def duration(self) -> timedelta:
        return (self.end or timezone.now()) - self.start

    @property
    def duration_text(self) -> str:
        seconds = int(self.duration.total_seconds())
        if seconds < 60:
            return f"{seconds} s"
        if seconds < 3600:
            return f"{seconds // 60} min {seconds % 60} s"
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"

    @property
    def trials(self) -> int:
        """Half-open trials made."""
        return sum(1 for event in self.events if event.to_state == machine.HALF_OPEN)

    @property
    def alerts(self) -> int:
        """Alerts the transitions called for (an opening, a recovery), sent when Sentry is set
        up."""
        return sum(1 for e in self.events
                   if alert_for(e.from_state, e.to_state, manual=e.source != "breaker"))

    @property
    def cause(self) -> str:
        return who(self.events[0])

    @property
    def outcome(self) -> str:
        """How it ended: ``recovered`` (a trial succeeded) or ``reset by ...``."""
        if self.ongoing:
            return "ongoing"
        last = self.events[-1]
        if last.from_state == machine.HALF_OPEN and last.source == "breaker":
            return "recovered"
        verb = "reset" if last.to_state == machine.CLOSED else last.to_state.replace("_", " ")
        return f"{verb}: {who(last)}"

    @property
    def timeline(self) -> list[tuple[datetime, str, str, str]]:
        """Each transition: when, from, to, and who or why."""
        return [(e.created_at, e.from_state, e.to_state, who(e)) for e in self.events]

    @property
    def drill(self) -> str:
        """The drill's run id when the incident was a drill's, else ``""``."""
        for event in self.events:
            if found := _DRILL.search(event.reason):
                return found[1]
        return ""


def who(event: CircuitEvent) -> str:
    """``"alice (admin): vendor outage"``, ``"command: migration"``, or the breaker's reason."""
    if event.source == "breaker":
        return event.reason
    by = f"{event.actor} ({event.source})" if event.actor_id else event.source
    return f"{by}: {event.reason}" if event.reason else by


def recent(names: Iterable[str] | None = None, limit: int = 10) -> list[Incident]:
    """The latest ``limit`` incidents, newest first, of the circuits ``names`` (every circuit
    when ``None``)."""
    events = CircuitEvent.objects.exclude(source="local").select_related("circuit", "actor")
    if names is not None:
        events = events.filter(circuit__name__in=list(names))
    latest = list(events.order_by("-created_at", "-pk")[:SCAN])
    latest.reverse()
    found = group(latest)
    found.sort(key=lambda incident: incident.start, reverse=True)
    found = found[:limit]
    for incident in found:
        _count(incident)
    return found


def group(events: Iterable[CircuitEvent]) -> list[Incident]:
    """Events in the order they happened, grouped into incidents per circuit; transitions
    between passing states (closed -> disabled) belong to none."""
    current: dict[str, Incident] = {}
    done: list[Incident] = []
    for event in events:
        name = event.circuit.name
        incident = current.get(name)
        if incident is None:
            if event.to_state not in machine.STRUGGLING:
                continue
            incident = current[name] = Incident(name)
        incident.events.append(event)
        if event.to_state in machine.PASSING:
            done.append(current.pop(name))
    return done + list(current.values())


def by_circuit(incidents: Iterable[Incident]) -> dict[str, list[Incident]]:
    grouped: dict[str, list[Incident]] = defaultdict(list)
    for incident in incidents:
        grouped[incident.circuit].append(incident)
    return grouped


def _count(incident: Incident) -> None:
    start = incident.start.replace(second=0, microsecond=0)
    end = incident.end or timezone.now()
    totals = (CircuitMetric.objects
              .filter(circuit__name=incident.circuit, bucket__gte=start, bucket__lte=end)
              .aggregate(refused=Sum("rejected"), fallbacks=Sum("fallbacks")))
    incident.refused = totals["refused"] or 0
    incident.fallbacks = totals["fallbacks"] or 0
