from django.apps import AppConfig


class ResilienceCrmConfig(AppConfig):
    name = "resilience_crm"
    verbose_name = "Resilience"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from resilience_crm import (  # noqa: F401  (registers the system checks and receivers)
            buckets,
            checks,
            flusher,
            receivers,
        )
        from resilience_crm.breakers import events
        from resilience_crm.observability import exposition, rules
        from resilience_crm.provider import queue  # noqa: F401  (replays when crm.write closes)
        from resilience_crm.ratelimit import tiers  # noqa: F401  (announces tier edits)

        # The background flusher's rounds, in this order: the audit trail first, then the
        # per-minute metrics, this worker's counts for /resilience/metrics, and the alert
        # rules last, since they read the metrics just written.
        flusher.register(events.write_pending, spill=events.spill)
        flusher.register(buckets.write_buckets, spill=buckets.spill)
        flusher.register(exposition.push)
        flusher.register(rules.evaluate_due)
