"""Deprecated home of the stores: breaker stores are in :mod:`resilience_crm.breakers.stores`,
rate-limit stores in :mod:`resilience_crm.ratelimit.stores`. The modules here are aliases kept
for dotted paths in settings; each warns once (DeprecationWarning) when imported."""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType


def alias(old: str, new: str) -> ModuleType:
    """The module ``new``, after warning that ``old`` is its deprecated name."""
    warnings.warn(f"{old} is deprecated; import {new} instead.", DeprecationWarning,
                  stacklevel=3)
    return importlib.import_module(new)
