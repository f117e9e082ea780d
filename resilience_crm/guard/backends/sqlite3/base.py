"""Django's SQLite ``DatabaseWrapper`` with the query guard (``QUERY_TIMEOUT`` is
PostgreSQL's ``statement_timeout``, and does not apply here)."""

from __future__ import annotations

from django.db.backends.sqlite3 import base

from resilience_crm.guard.connection import GuardedDatabaseWrapper


class DatabaseWrapper(GuardedDatabaseWrapper, base.DatabaseWrapper):
    pass
