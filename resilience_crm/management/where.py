"""The first line every command prints: which database and which store it works on.

A second shell without the demo's environment would otherwise read another database (the
SQLite file of an earlier run) and say nothing about it. Passwords are never printed."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings as django_settings
from django.db import connections, router

from resilience_crm.breakers import registry
from resilience_crm.conf import settings
from resilience_crm.models import Circuit


def line() -> str:
    """``Database: postgresql postgres@127.0.0.1:5432/crm · store: RedisStore
    (redis://127.0.0.1:6379/0)``."""
    return f"Database: {database()} · store: {store()}"


def database() -> str:
    alias = router.db_for_write(Circuit) or "default"
    config = connections[alias].settings_dict
    engine = str(config.get("ENGINE", "")).rsplit(".", 1)[-1]
    if engine == "sqlite3":
        where = str(config.get("NAME") or "")
    else:
        user = f"{config['USER']}@" if config.get("USER") else ""
        port = f":{config['PORT']}" if config.get("PORT") else ""
        where = f"{user}{config.get('HOST') or 'localhost'}{port}/{config.get('NAME') or ''}"
    named = "" if alias == "default" else f" (alias {alias})"
    return f"{engine} {where}{named}"


def store() -> str:
    kind = type(registry.shared_store()).__name__
    cache = django_settings.CACHES.get(settings.CACHE_ALIAS, {})
    if "redis" not in str(cache.get("BACKEND", "")).lower():
        return kind
    return f"{kind} ({', '.join(_locations(cache.get('LOCATION')))})"


def _locations(location: Any) -> list[str]:
    found = location if isinstance(location, (list, tuple)) else [location]
    return [_without_password(str(each)) for each in found if each]


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
