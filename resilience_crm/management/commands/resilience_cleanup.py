from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

import resilience_crm.ratelimit.limiter as limiter
from resilience_crm.conf import settings
from resilience_crm.exceptions import StoreUnavailable
from resilience_crm.management import where
from resilience_crm.models import CircuitEvent, CircuitMetric, SpoolReceipt


class Command(BaseCommand):
    help = ("Delete circuit events, metric buckets and spool receipts older than "
            "METRICS_RETENTION_DAYS, and the database limiter store's full buckets.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=int, default=None,
                            help="keep this many days instead of METRICS_RETENTION_DAYS")
        parser.add_argument("--dry-run", action="store_true", help="count, delete nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(where.line())
        days = options["days"] if options["days"] is not None else settings.METRICS_RETENTION_DAYS
        if not isinstance(days, int) or isinstance(days, bool) or days < 1:
            raise CommandError(f"The retention must be a whole number of days >= 1, not {days!r}.")
        cutoff = timezone.now() - timedelta(days=days)
        old = {
            "circuit events": CircuitEvent.objects.filter(created_at__lt=cutoff),
            "metric buckets": CircuitMetric.objects.filter(bucket__lt=cutoff),
            # A receipt matters only while its batch may still be read from the spool.
            "spool receipts": SpoolReceipt.objects.filter(created_at__lt=cutoff),
        }
        verb = "Would delete" if options["dry_run"] else "Deleted"
        for label, queryset in old.items():
            count = queryset.count() if options["dry_run"] else queryset.delete()[0]
            self.stdout.write(f"{verb} {count} {label} older than {days} days.")
        if options["dry_run"]:
            return
        try:  # bounded per call, as the background flusher's sweep
            swept = limiter.get_store().sweep()
        except StoreUnavailable as err:
            self.stderr.write(f"The rate-limit store was not swept: {err.__cause__ or err}")
            return
        if swept:
            self.stdout.write(f"Deleted {swept} rate-limit buckets that are full again.")
