from django.apps import AppConfig


class ResilienceCrmConfig(AppConfig):
    name = "resilience_crm"
    verbose_name = "Resilience"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported for what they register: checks, signal receivers (queue: replay on close).
        from resilience_crm import checks, queue, receivers  # noqa: F401
