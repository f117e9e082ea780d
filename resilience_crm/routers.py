"""Keep the app's tables on their own database alias when ``RESILIENCE_CRM["DATABASE_ALIAS"]``
says so.

    DATABASES = {"default": {...}, "resilience": {...same NAME, HOST and PORT...}}
    DATABASE_ROUTERS = ["resilience_crm.routers.ResilienceRouter"]
    RESILIENCE_CRM = {"DATABASE_ALIAS": "resilience"}

The supported layout is a second alias to the same database (docs/settings.md): the app's
writes then go through a connection of their own, outside the requests' transactions
(``ATOMIC_REQUESTS``), while its foreign keys to the user model stay in one database.

With ``READ_REPLICAS``, the router also sends a read that falls back to a replica there
(:mod:`resilience_crm.provider.replicas`); put it first in ``DATABASE_ROUTERS`` when the
project has routers of its own.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings as django_settings
from django.db.models import Model

from resilience_crm.conf import settings
from resilience_crm.provider import replicas

APP_LABEL = "resilience_crm"


class ResilienceRouter:
    """The app's tables on ``DATABASE_ALIAS``; while a read falls back to a replica
    (``READ_REPLICAS``), every other model's reads on that replica; no write, and no
    migration, ever on a replica."""

    def db_for_read(self, model: type[Model], **hints: Any) -> str | None:
        replica = replicas.reading_from()
        if replica is not None and model._meta.app_label != APP_LABEL:
            return replica
        return self._alias(model)

    def db_for_write(self, model: type[Model], **hints: Any) -> str | None:
        return self._alias(model)

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        """A user from the default alias may be the actor of a circuit or event on the
        app's alias when both aliases name the same database; across databases, no."""
        first, second = obj1._state.db, obj2._state.db
        if first and second and first != second and same_database(first, second):
            return True
        return None

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None,
                      **hints: Any) -> bool | None:
        if db in (settings.READ_REPLICAS or ()):
            return False  # read-only: its primary's migrations reach it by replication
        alias = settings.DATABASE_ALIAS
        if alias is None or app_label != APP_LABEL:
            return None
        # Another alias of the same database migrates the same tables: ``migrate`` on the
        # default alias creates them, as it records the migrations both aliases share.
        return db == alias or same_database(db, alias)

    def _alias(self, model: type[Model]) -> str | None:
        if model._meta.app_label == APP_LABEL:
            return settings.DATABASE_ALIAS
        return None


def same_database(alias: str, other: str) -> bool:
    """Whether two aliases of ``DATABASES`` name the same database on the same server."""
    try:
        first, second = django_settings.DATABASES[alias], django_settings.DATABASES[other]
    except KeyError:
        return False
    fields = ("ENGINE", "NAME", "HOST", "PORT")
    return all(str(first.get(f) or "") == str(second.get(f) or "") for f in fields)
