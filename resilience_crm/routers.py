"""Keep the app's tables on their own database when ``RESILIENCE_CRM["DATABASE_ALIAS"]`` says so.

    DATABASE_ROUTERS = ["resilience_crm.routers.ResilienceRouter"]

Then circuits, events and metrics stay writable while the CRM's own database is down.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Model

from resilience_crm.conf import settings

APP_LABEL = "resilience_crm"


class ResilienceRouter:
    def db_for_read(self, model: type[Model], **hints: Any) -> str | None:
        return self._alias(model)

    def db_for_write(self, model: type[Model], **hints: Any) -> str | None:
        return self._alias(model)

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        return None

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None,
                      **hints: Any) -> bool | None:
        alias = settings.DATABASE_ALIAS
        if alias is None:
            return None
        if app_label == APP_LABEL:
            return db == alias
        return None

    def _alias(self, model: type[Model]) -> str | None:
        if model._meta.app_label == APP_LABEL:
            return settings.DATABASE_ALIAS
        return None
