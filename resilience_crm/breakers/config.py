"""Breaker settings that name exception classes: importing and checking the dotted paths of
``record_exceptions`` / ``ignore_exceptions``, and :func:`breaker_errors`, the whole validation
of a circuit's settings. A leaf (Django's settings and the pure state machine aside), so the
models and the checks can validate a circuit's overrides without importing the breaker
itself; the numeric settings are :func:`resilience_crm.breakers.machine.config_errors`' job."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import resilience_crm.breakers.machine as machine

logger = logging.getLogger(__name__)


def import_exception(path: str) -> type[BaseException]:
    """The exception class at the dotted ``path``; ``ImportError`` or ``TypeError`` says why
    there is none."""
    module, _, attr = path.rpartition(".")
    if not module:
        raise ImportError(f"{path!r} is not a dotted path")
    try:
        value = getattr(importlib.import_module(module), attr)
    except AttributeError as err:
        raise ImportError(f"module {module!r} has no attribute {attr!r}") from err
    if not (isinstance(value, type) and issubclass(value, BaseException)):
        raise TypeError(f"{path!r} is not an exception class")
    return value


def exception_errors(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(key, message)`` for each path in ``record_exceptions`` / ``ignore_exceptions`` that
    does not name an exception class (the shapes are :func:`machine.config_errors`' job)."""
    errors = []
    for key in ("record_exceptions", "ignore_exceptions"):
        paths = values.get(key)
        if not isinstance(paths, list | tuple):
            continue
        for path in paths:
            if not isinstance(path, str):
                continue
            try:
                import_exception(path)
            except Exception as err:  # importing user code may raise anything
                errors.append((key, f"cannot use {path!r}: {err}"))
    return errors


def breaker_errors(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(key, message)`` for each problem in a breaker settings mapping: its numbers and
    shapes first, then, once those are sound, its exception paths. What the checks and
    ``Circuit.clean`` both report."""
    return machine.config_errors(values) or exception_errors(values)


def exception_classes(paths: Sequence[str], circuit: str = "") -> tuple[type[BaseException], ...]:
    """The classes ``paths`` name. One that cannot be imported is left out, with an error in
    the log: a bad path never makes a circuit raise (the checks report it at start-up)."""
    classes = []
    for path in paths:
        try:
            classes.append(import_exception(path))
        except Exception as err:  # importing user code may raise anything
            logger.error("Circuit %s: ignoring exception path %r (%s).", circuit, path, err)
    return tuple(classes)
