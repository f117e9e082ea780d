"""The label a response carries when part of it came from a fallback: ``X-Resilience-Fallback``
(``stale`` or ``degraded``) and, for stale data, ``Age``.

The read path records each fallback it serves with :func:`mark`, in a context variable of the
current request (or task); ``drf.FallbackHeadersMixin`` calls :func:`begin` when a request
starts and puts :func:`headers` on its response.
"""

from __future__ import annotations

import contextvars

#: Header names of the label.
FALLBACK_HEADER = "X-Resilience-Fallback"
#: What a fallback served: an entry past its freshness, or the caller's degraded value.
STALE, DEGRADED = "stale", "degraded"

_served: contextvars.ContextVar[tuple[str, float] | None] = contextvars.ContextVar(
    "resilience_crm_served", default=None)


def begin() -> None:
    """Forget earlier labels; call at the start of each request."""
    _served.set(None)


def mark(kind: str, age: float = 0.0) -> None:
    """Record that part of the current answer came from a fallback: ``degraded`` (no real
    data) outranks ``stale``; of stale parts the oldest age is kept."""
    current = _served.get()
    if current is None or (kind == DEGRADED and current[0] != DEGRADED):
        _served.set((kind, age))
    elif kind == current[0]:
        _served.set((kind, max(age, current[1])))


def headers() -> dict[str, str]:
    """The response headers that label the current request's fallback, if any."""
    current = _served.get()
    if current is None:
        return {}
    kind, age = current
    if kind == STALE:
        return {FALLBACK_HEADER: kind, "Age": str(int(age))}
    return {FALLBACK_HEADER: kind}
