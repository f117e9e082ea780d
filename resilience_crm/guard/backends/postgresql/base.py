"""Django's PostgreSQL ``DatabaseWrapper`` with the query guard and ``QUERY_TIMEOUT``."""

from __future__ import annotations

from typing import Any

from django.db.backends.postgresql import base

from resilience_crm.guard.connection import GuardedDatabaseWrapper, query_timeout
from resilience_crm.libpq import with_statement_timeout


class DatabaseWrapper(GuardedDatabaseWrapper, base.DatabaseWrapper):
    def get_connection_params(self) -> dict[str, Any]:
        return with_statement_timeout(super().get_connection_params(), query_timeout(self.alias))
