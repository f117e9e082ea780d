"""Django's PostgreSQL backend with the query guard: ``ENGINE =
"resilience_crm.guard.backends.postgresql"``."""
