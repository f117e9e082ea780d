import re
from datetime import datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from resilience_crm.breakers.control import (
    PENDING,
    STEERABLE,
    command_actor,
    known_circuits,
    steer,
)
from resilience_crm.exceptions import ManualChangeRefused
from resilience_crm.management import where

DURATION = re.compile(r"^(\d+)([smhd])$")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


class Command(BaseCommand):
    help = ("Hold a circuit in a state (forced_open, forced_closed, disabled, metrics_only), "
            "or reset it with 'closed', in every worker within SNAPSHOT_TTL.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", metavar="NAME")
        parser.add_argument("state", metavar="STATE", choices=STEERABLE,
                            help=f"one of {', '.join(STEERABLE)}")
        parser.add_argument("--until", default="",
                            help="when the forced state ends: a duration (30s, 15m, 2h, 1d) "
                                 "or an ISO 8601 time")
        parser.add_argument("--reason", default="", help="kept in the audit trail")

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(where.line())
        name, state = options["name"], options["state"]
        known = known_circuits()
        if name not in known:
            raise CommandError(f"Unknown circuit {name!r}. Known: {', '.join(known)}.")
        until = parse_until(options["until"]) if options["until"] else None
        try:
            outcome = steer(name, state, reason=options["reason"] or f"{state} by command",
                            until=until, actor=command_actor(), source="command")
        except ManualChangeRefused as err:
            raise CommandError(err.message) from err
        expiry = f" until {until.isoformat()}" if until else ""
        if outcome.applied:
            self.stdout.write(self.style.SUCCESS(f"{name} is now {state}{expiry}."))
        else:
            self.stdout.write(self.style.WARNING(PENDING.format(name=name,
                                                                change=f"{state}{expiry}")))


def parse_until(value: str) -> datetime:
    match = DURATION.match(value.strip())
    if match:
        span = timedelta(**{UNITS[match[2]]: int(match[1])})
        until = timezone.now().replace(microsecond=0) + span
    else:
        try:
            parsed = parse_datetime(value.strip())
        except ValueError:
            parsed = None
        if parsed is None:
            raise CommandError(f"--until {value!r} is neither a duration like 15m nor an "
                               "ISO 8601 time.")
        until = parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed)
    if until <= timezone.now():
        raise CommandError(f"--until {value!r} is not in the future.")
    return until
