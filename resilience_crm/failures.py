"""Whether an error says the database failed, rather than the caller's request: one answer for
the query guard (what counts against a guarded alias's circuit) and for ``protected`` (what
counts, and what a client is told). It looks at class names, never at message text, so it
needs no driver imported."""

from __future__ import annotations

#: Class names (anywhere in an error's MRO, or its cause's) of the DB-API errors that mean the
#: database, not the caller, failed: Django's wrapped ones and the driver's own (a failed
#: connect raises the driver's, psycopg_pool's ``PoolTimeout`` among them).
DEPENDENCY_ERRORS = frozenset({"OperationalError", "InterfaceError"})


def class_names(exc: BaseException) -> set[str]:
    """The names of ``exc``'s class and of every class it derives from."""
    return {cls.__name__ for cls in type(exc).__mro__}


def chain_names(exc: BaseException) -> set[str]:
    """:func:`class_names` of ``exc`` and of the error it was raised from: Django raises its
    wrapped errors from the driver's."""
    return class_names(exc) | (class_names(exc.__cause__) if exc.__cause__ else set())


def database_failed(exc: BaseException) -> bool:
    """Whether ``exc`` says the database failed: a lost connection or a timeout, or an
    ``OperationalError`` / ``InterfaceError`` (Django's or the driver's, raised or chained
    from). The caller's errors (``IntegrityError``, ``ProgrammingError``, ``DataError``) are
    the database answering."""
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    return bool(chain_names(exc) & DEPENDENCY_ERRORS)
