from django.apps import AppConfig


class CrmConfig(AppConfig):
    name = "crm_demo.crm"
    label = "crm"
    verbose_name = "CRM"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Write handlers must exist in every process that may replay queued writes, and the
        # token cache must hear of revoked tokens.
        from crm_demo.crm import authentication, writes  # noqa: F401
