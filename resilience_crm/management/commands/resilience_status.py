import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.core.serializers.json import DjangoJSONEncoder
from django.db import DatabaseError

from resilience_crm import buckets, spool
from resilience_crm.breakers import events, machine, registry
from resilience_crm.breakers.control import forced_by, known_circuits
from resilience_crm.management import where

#: Kinds of records the spool keeps while the database is down (-1: Redis did not answer).
SPOOLED = (events.KIND, buckets.KIND)


class Command(BaseCommand):
    help = "Show every circuit as the shared store has it now."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")

    def handle(self, *args: Any, **options: Any) -> None:
        # The JSON stays parseable: the line goes to stderr then.
        (self.stderr if options["json"] else self.stdout).write(where.line())
        forced = _forced_rows()
        circuits = {}
        for name in known_circuits():
            snap = registry.get_breaker(name).snapshot()
            snap.pop("name")
            snap["forced"] = forced.get(name)
            circuits[name] = snap
        store = type(registry.shared_store())
        if options["json"]:
            body = {"store": f"{store.__module__}.{store.__qualname__}", "circuits": circuits,
                    "pending_events": events.pending_count(),
                    "spooled": {kind: spool.length(kind) for kind in SPOOLED}}
            self.stdout.write(json.dumps(body, cls=DjangoJSONEncoder, indent=2))
            return
        rows = [("CIRCUIT", "STATE", "GEN", "CALLS", "FAILURES", "RATE", "RETRY IN", "STORE",
                 "FORCED")]
        for name, snap in circuits.items():
            hold = snap["forced"]
            rows.append((
                name, snap["state"], str(snap["generation"]), str(snap["calls"]),
                str(snap["failures"]), f"{snap['failure_rate']:.0%}",
                f"{snap['retry_after']:.1f}s" if snap["retry_after"] else "-", snap["store"],
                f"by {hold['by']}: {hold['reason'] or '-'}" if hold else "-",
            ))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            style = self.style.ERROR if row[1] in machine.REJECTING else (lambda text: text)
            self.stdout.write(style(line.rstrip()))
        if events.pending_count():
            self.stdout.write(self.style.WARNING(
                f"{events.pending_count()} circuit events wait for the database."))
        for kind in SPOOLED:
            if (batches := spool.length(kind)) > 0:
                self.stdout.write(self.style.WARNING(
                    f"{batches} batches of {kind} wait in the shared store for the database."))


def _forced_rows() -> dict[str, dict[str, Any]]:
    """Who forced which circuit, why and until when, from the durable record."""
    from resilience_crm.models import Circuit

    try:
        rows = Circuit.objects.exclude(forced_state="").select_related("forced_by")
        return {c.name: {"state": c.forced_state, "reason": c.forced_reason,
                         "by": forced_by(c.name, c),
                         "until": c.forced_until} for c in rows}
    except DatabaseError:
        return {}
