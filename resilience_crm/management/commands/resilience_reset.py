from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from resilience_crm.breakers import machine
from resilience_crm.breakers.control import PENDING, known_circuits, steer
from resilience_crm.exceptions import ManualChangeRefused


class Command(BaseCommand):
    help = "Close circuits and forget their counts, in every worker within SNAPSHOT_TTL."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("names", nargs="*", metavar="NAME", help="circuits to reset")
        parser.add_argument("--all", action="store_true", help="reset every known circuit")
        parser.add_argument("--reason", default="", help="kept in the audit trail")

    def handle(self, *args: Any, **options: Any) -> None:
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
        for name in names:
            try:
                reason = options["reason"] or "reset by command"
                outcome = steer(name, machine.CLOSED, reason=reason,
                                source="command")
            except ManualChangeRefused as err:
                raise CommandError(err.message) from err
            if outcome.applied:
                self.stdout.write(self.style.SUCCESS(f"Reset {name}."))
            else:
                self.stdout.write(self.style.WARNING(PENDING.format(name=name, change="reset")))
