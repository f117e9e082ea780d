from django.apps import AppConfig


class ResilienceCrmConfig(AppConfig):
    name = "resilience_crm"
    verbose_name = "Resilience"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from resilience_crm import (  # noqa: F401  (registers checks, receivers, flusher tasks)
            checks,
            receivers,
        )
        from resilience_crm.observability import (  # noqa: F401
            exposition,  # pushes this worker's counts for /resilience/metrics
            rules,  # evaluates the alert rules
        )
        from resilience_crm.provider import queue  # noqa: F401  (replays when crm.write closes)
        from resilience_crm.ratelimit import tiers  # noqa: F401  (announces tier edits)
