from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from resilience_crm.breakers import machine, registry
from resilience_crm.breakers.control import PENDING, command_actor, known_circuits, steer
from resilience_crm.exceptions import ManualChangeRefused
from resilience_crm.management import where
from resilience_crm.models import Circuit


class Command(BaseCommand):
    help = ("Close circuits and forget their counts, in every worker within SNAPSHOT_TTL. "
            "With --all, circuits that are already closed (and hold no saved change) are "
            "left alone: no event, no new generation.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("names", nargs="*", metavar="NAME", help="circuits to reset")
        parser.add_argument("--all", action="store_true", help="reset every known circuit")
        parser.add_argument("--reason", default="", help="kept in the audit trail")

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(where.line())
        names = tuple(options["names"])
        known = known_circuits()
        if options["all"] == bool(names):
            raise CommandError("Name the circuits to reset, or pass --all.")
        if options["all"]:
            names = tuple(known)
        unknown = [name for name in names if name not in known]
        if unknown:
            raise CommandError(f"Unknown circuit(s): {', '.join(unknown)}. "
                               f"Known: {', '.join(known)}.")
        skipped = [name for name in names if options["all"] and _closed(name)]
        for name in names:
            if name in skipped:
                continue
            try:
                reason = options["reason"] or "reset by command"
                outcome = steer(name, machine.CLOSED, reason=reason, actor=command_actor(),
                                source="command")
            except ManualChangeRefused as err:
                raise CommandError(err.message) from err
            if outcome.applied:
                self.stdout.write(self.style.SUCCESS(f"Reset {name}."))
            else:
                self.stdout.write(self.style.WARNING(PENDING.format(name=name, change="reset")))
        if skipped:
            self.stdout.write(f"Already closed, left alone: {', '.join(skipped)}.")


def _closed(name: str) -> bool:
    """Closed in the shared store, with no forced state or change waiting on the row."""
    if registry.get_breaker(name).state != machine.CLOSED:
        return False
    try:
        row = Circuit.objects.filter(name=name).values("forced_state", "pending").first()
    except DatabaseError:
        return True  # the live state is what a reset changes; the row cannot say more
    return row is None or (not row["forced_state"] and not row["pending"])
