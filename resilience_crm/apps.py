from django.apps import AppConfig


class ResilienceCrmConfig(AppConfig):
    name = "resilience_crm"
    verbose_name = "Resilience"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from resilience_crm import (  # noqa: F401  (registers checks, receivers, flusher tasks)
            checks,
            exposition,  # pushes this worker's counts for /resilience/metrics
            queue,  # replays queued writes when the write circuit closes
            receivers,
            rules,  # evaluates the alert rules
            tiers,  # announces tier edits to every worker
        )
