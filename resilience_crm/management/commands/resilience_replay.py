from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from resilience_crm.management import where
from resilience_crm.provider import replay


class Command(BaseCommand):
    help = ("Apply queued writes: move them from Redis into QueuedWrite rows, then apply the "
            "pending and failed ones (and those whose replayer's lease ran out) exactly once; "
            "a write that has failed 5 times, or that no attempt can fix (the database "
            "refuses its data), becomes a dead letter.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--limit", type=int, default=None,
                            help="apply at most this many writes")
        parser.add_argument("--lease", type=float, default=replay.LEASE_SECONDS,
                            help="seconds a row stays leased to this run (default %(default)s)")

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(where.line())
        report = replay.replay(lease=options["lease"], limit=options["limit"])
        self.stdout.write(
            f"Moved {report.moved} from Redis, applied {report.applied}, failed "
            f"{report.failed}, dead letters {report.dead}." +
            (f" Stopped: {report.stopped}." if report.stopped else ""))
        if report.stopped:
            raise SystemExit(1)
