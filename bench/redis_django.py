"""Django for the breaker benchmarks: the app on the Redis that ``REDIS_URL`` names (its
store and cache), SQLite in memory for its tables, migrated."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import django  # noqa: E402
from django.conf import settings  # noqa: E402

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/1")


def setup(**resilience: Any) -> None:
    """Configure and start Django, with ``RESILIENCE_CRM`` on the Redis store plus
    ``resilience``."""
    settings.configure(
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "resilience_crm"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        CACHES={"default": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": REDIS_URL,
                            "KEY_PREFIX": "rcrm-bench"}},
        RESILIENCE_CRM={"STORE": "redis", **resilience},
        USE_TZ=True,
    )
    django.setup()
    from django.core.management import call_command  # only once settings exist

    call_command("migrate", verbosity=0)
