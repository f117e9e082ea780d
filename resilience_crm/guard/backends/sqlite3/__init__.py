"""Django's SQLite backend with the query guard: ``ENGINE =
"resilience_crm.guard.backends.sqlite3"``."""
