from django.apps import AppConfig


class ResilienceCrmConfig(AppConfig):
    name = "resilience_crm"
    verbose_name = "Resilience"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from resilience_crm import buckets, flusher, receivers  # noqa: F401  (connects receivers)
        from resilience_crm.breakers import events, registry
        from resilience_crm.observability import exposition, rules
        from resilience_crm.provider import replay
        from resilience_crm.ratelimit import (
            limiter,
            tiers,  # noqa: F401  (announces tier edits)
        )

        # The background flusher's rounds, in this order: the audit trail first, then the
        # per-minute metrics, this worker's counts for /resilience/metrics, and the alert
        # rules after them, since they read the metrics just written; then the sweep of the
        # database limiter store's full buckets (once a minute at most).
        flusher.register(events.write_pending, spill=events.spill)
        flusher.register(buckets.write_buckets, spill=buckets.spill)
        flusher.register(exposition.push)
        flusher.register(rules.evaluate_due)
        flusher.register(limiter.sweep)
        flusher.register(replay.replay_due)  # writes queued after the outage's replay
        # Its backoff stops at the guard circuit's reset_timeout, the one saved in the admin
        # included.
        flusher.use_circuit_config(registry.circuit_config)

        # The system checks, each registered as its module is imported: the shared ones, then
        # each feature's. Imported here, in one place, since the shared module cannot import
        # the features' (they import it for ``Check``, ``table`` and ``settings_check``).
        from resilience_crm import checks, cluster_checks, database_checks  # noqa: F401
        from resilience_crm.breakers import checks as breaker_checks  # noqa: F401
        from resilience_crm.guard import checks as guard_checks  # noqa: F401
        from resilience_crm.observability import checks as observability_checks  # noqa: F401
        from resilience_crm.provider import checks as provider_checks  # noqa: F401
        from resilience_crm.ratelimit import checks as ratelimit_checks  # noqa: F401
