"""The write handlers ``protected.write_handler`` registers, by name, and what a write must
be for the database to hold it.

A handler's queued writes live on its own database alias (its effect and its ``QueuedWrite``
row commit in one transaction). :func:`row_errors` and :func:`column_errors` say, with no
query, what a ``QueuedWrite`` row or the handler's model could not store: ``submit`` refuses
such a write before it is applied or queued, and replay keeps such a stream entry as a dead
letter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.db import router
from django.db.models import Field, ForeignKey, Model

from resilience_crm.constants import OP_CIRCUITS
from resilience_crm.models import QueuedWrite


@dataclass(frozen=True)
class Handler:
    name: str
    fn: Callable[[Any], Any]
    key: str
    circuit: str
    using: str
    model: type[Model] | None = None


_handlers: dict[str, Handler] = {}


def register(name: str, *, key: str = "", circuit: str = OP_CIRCUITS["write"],
             using: str = "default", model: type[Model] | None = None,
             ) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]]:
    def decorate(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        _handlers[name] = Handler(name, fn, key or name, circuit, using, model)
        return fn

    return decorate


def handler(name: str) -> Handler:
    try:
        return _handlers[name]
    except KeyError:
        raise LookupError(f"No write handler is registered as {name!r}; decorate one with "
                          f"@protected.write_handler({name!r}).") from None


def circuits() -> set[str]:
    """The circuits the handlers write under."""
    return {found.circuit for found in _handlers.values()}


def databases() -> list[str]:
    """The aliases queued writes live on: each handler's own (its effect and its
    ``QueuedWrite`` row commit in one transaction), and where the router puts the model."""
    return sorted({found.using for found in _handlers.values()}
                  | {router.db_for_write(QueuedWrite) or "default"})


def database_of(name: str) -> str:
    """Where the writes of handler ``name`` live (the router's choice for one unknown)."""
    found = _handlers.get(name)
    return found.using if found else (router.db_for_write(QueuedWrite) or "default")


def row_errors(*, idempotency_key: str, entity: str) -> dict[str, list[str]]:
    """What is wrong with a write's key and entity as ``QueuedWrite`` columns."""
    problems = {}
    for field, value in (("idempotency_key", idempotency_key), ("entity", entity)):
        problems.update(column_errors(QueuedWrite, field, value))
    return problems


def column_errors(model: type[Model], name: str, value: Any) -> dict[str, list[str]]:
    """``{name: [messages]}`` when ``value`` cannot be stored in ``model``'s field ``name``
    (its attribute name too, ``contact_id``); a foreign key's value is checked against the
    column it points at, never looked up."""
    try:
        field = model._meta.get_field(name)
    except FieldDoesNotExist:
        field = None
    if not isinstance(field, Field) or not field.concrete or field.many_to_many:
        return {name: [f"{model.__name__} has no column {name!r}."]}
    column = field.target_field if isinstance(field, ForeignKey) else field
    if value is None and field.null:
        return {}
    try:
        column.clean(value, None)
    except ValidationError as err:
        return {name: list(err.messages)}
    return {}
