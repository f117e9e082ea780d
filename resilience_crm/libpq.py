"""libpq connection parameters the app adds to an alias's own: one ``statement_timeout`` for
the query guard's ``QUERY_TIMEOUT`` and the database limiter store's
``RATELIMIT_STORE_TIMEOUT``."""

from __future__ import annotations

from typing import Any


def with_statement_timeout(params: dict[str, Any], seconds: float | None) -> dict[str, Any]:
    """libpq connection ``params`` that start every session with ``statement_timeout`` at
    ``seconds`` (as a startup option, so pooled connections get it too, with no extra round
    trip); ``params`` unchanged when ``seconds`` is ``None``."""
    if seconds is None:
        return params
    option = f"-c statement_timeout={max(1, round(seconds * 1000))}"
    return {**params, "options": f"{params.get('options') or ''} {option}".strip()}
