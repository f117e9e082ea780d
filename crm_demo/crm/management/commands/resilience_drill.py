from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from crm_demo.crm.drill import Drill, DrillUnavailable
from resilience_crm.management import where


class Command(BaseCommand):
    help = ("Watch a real database outage in the demo: a local TCP proxy in front of "
            "PostgreSQL is cut, reads come from the cache labelled stale, a write is queued, "
            "the circuit opens and alerts; then the proxy is restored, the circuits close and "
            "the queue is replayed. Needs DATABASE_URL (PostgreSQL) and REDIS_URL.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--seconds", type=float, default=8.0,
                            help="how long the outage lasts (default %(default)s)")
        parser.add_argument("--keep", action="store_true",
                            help="keep the contacts the drill wrote (its token is removed)")
        parser.add_argument("--page", action="store_true",
                            help="let the alert rules page for the drill's outage (by default "
                                 "they know it is a drill and stay quiet)")
        parser.add_argument("--quiet", action="store_true",
                            help="print only the summary, not each step")

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(where.line())
        if options["seconds"] < 3:
            raise CommandError("--seconds must be at least 3: the circuits need that long to "
                               "open and show stale reads.")
        say = (lambda line: None) if options["quiet"] else self.stdout.write
        try:
            outcome = Drill(options["seconds"], say, keep=options["keep"],
                            page=options["page"]).run()
        except DrillUnavailable as err:
            raise CommandError(str(err)) from err
        self.stdout.write("")
        for step in outcome.steps.values():
            mark = self.style.SUCCESS("ok  ") if step.ok else self.style.ERROR("FAIL")
            self.stdout.write(f"{mark} {step.promise}" + (f": {step.detail}" if step.detail
                                                          else ""))
        if not outcome.ok:
            failed = [name for name, step in outcome.steps.items() if not step.ok]
            raise CommandError(f"The drill did not see every promised step: {', '.join(failed)}.")
        self.stdout.write(self.style.SUCCESS("The drill passed: the demo rode out the outage."))
