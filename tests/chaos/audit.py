"""What the chaos run checks after each scenario, once the faults are gone: the writes clients
sent against what the database holds, and the circuits' incidents against the alerts Sentry
received.

A create or an import row asked for a contact with an email no other write uses, so the
number of contacts with that email says it all: 0 for an acknowledged write is one lost, 2
or more is one applied twice. An update sets its client's own contact's ``company`` to
``u<seq>``, in order: a value older than the last acknowledged update is one lost.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Count

from crm_demo.crm.models import Contact
from resilience_crm.models import CircuitEvent
from resilience_crm.observability.alerts import INCIDENT_STARTS, LOCAL_FINGERPRINT
from tests.chaos.load import Record

FINGERPRINT = "resilience-circuit"
RULE_FINGERPRINT = "resilience-rule"


@dataclass(frozen=True)
class Writes:
    acknowledged: int
    applied: int  # acknowledged and in the database
    duplicated: int  # in the database more than once (acknowledged or not)
    lost: int  # acknowledged and not in the database
    unacknowledged_applied: int  # refused or unanswered, and applied anyway (allowed)
    lost_keys: list[str] = field(default_factory=list)


def writes(record: Record, prefix: str) -> Writes:
    """``record``'s writes (emails starting ``prefix``) against the database."""
    counts = dict(Contact.objects.filter(email__startswith=prefix).values("email")
                  .annotate(n=Count("id")).values_list("email", "n"))
    acknowledged = {write.email for write in record.writes if write.acknowledged}
    unacknowledged = {write.email for write in record.writes} - acknowledged
    lost = sorted(email for email in acknowledged if not counts.get(email))
    last_acknowledged: dict[int, int] = {}
    for update in record.updates:
        if update.acknowledged:
            last_acknowledged[update.contact] = max(update.seq,
                                                    last_acknowledged.get(update.contact, 0))
    final = dict(Contact.objects.filter(pk__in=list(last_acknowledged))
                 .values_list("pk", "company"))
    lost_updates = [f"contact {pk}: u{seq} acknowledged, {final.get(pk)!r} kept"
                    for pk, seq in sorted(last_acknowledged.items())
                    if int((final.get(pk) or "u0")[1:] or 0) < seq]
    updates = sum(1 for update in record.updates if update.acknowledged)
    return Writes(
        acknowledged=len(acknowledged) + updates,
        applied=len(acknowledged) - len(lost) + updates - len(lost_updates),
        duplicated=sum(1 for n in counts.values() if n > 1),
        lost=len(lost) + len(lost_updates),
        unacknowledged_applied=sum(1 for email in unacknowledged if counts.get(email)),
        lost_keys=lost + lost_updates,
    )


@dataclass(frozen=True)
class Alerts:
    incidents: list[tuple[str, int]]  # (circuit, generation) of each closed -> open
    opened: list[tuple[str, int]]  # the open alerts' (circuit, generation)
    recovered: int
    local: int  # alerts from workers' own breakers (at most one per process and outage)
    rules: int  # alert rules' warnings (fingerprint "resilience-rule")
    other: list[str]  # any other event's title: an error logged, say

    @property
    def one_per_incident(self) -> bool:
        return Counter(self.opened) == Counter(self.incidents)


def incidents(circuits: dict[str, int]) -> list[tuple[str, int]]:
    """Shared circuits' incidents since the generations in ``circuits`` ({name: generation}),
    from the audit trail."""
    found = []
    for name, generation in circuits.items():
        found += [(name, gen) for gen in CircuitEvent.objects.filter(
            circuit__name=name, generation__gt=generation, to_state="open",
            from_state__in=INCIDENT_STARTS).exclude(source="local")
            .values_list("generation", flat=True)]
    return sorted(found)


def alerts(events: list[dict[str, Any]], circuits: dict[str, int]) -> Alerts:
    """The Sentry ``events`` a scenario sent, against its incidents."""
    opened, recovered, local, rules, other = [], 0, 0, 0, []
    for event in events:
        fingerprint = event.get("fingerprint") or []
        if fingerprint == LOCAL_FINGERPRINT:
            local += 1
        elif fingerprint[:1] == [FINGERPRINT] and fingerprint[2:] == ["open"]:
            context = event.get("contexts", {}).get("circuit", {})
            opened.append((str(context.get("name")), int(context.get("generation", -1))))
        elif fingerprint[:1] == [FINGERPRINT]:
            recovered += 1
        elif fingerprint[:1] == [RULE_FINGERPRINT]:
            rules += 1
        else:
            other.append(str(event.get("logentry", {}).get("message") or event.get("message")
                             or event.get("exception") or event.get("logger")))
    return Alerts(incidents(circuits), sorted(opened), recovered, local, rules, other)
