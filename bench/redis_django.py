"""Django for the breaker benchmarks: the app on the Redis that ``REDIS_URL`` names (its
store and cache), SQLite for its tables, migrated: in a file, which the background flusher's
thread opens too (in memory it found no tables and failed at exit), removed at exit."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import django  # noqa: E402
from django.conf import settings  # noqa: E402

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/1")
DATABASE = Path(tempfile.mkdtemp(prefix="rcrm-bench-")) / "app.sqlite3"
# Removed last: after the flusher's own exit handler (registered later, so run first).
atexit.register(shutil.rmtree, DATABASE.parent, ignore_errors=True)


def setup(**resilience: Any) -> None:
    """Configure and start Django, with ``RESILIENCE_CRM`` on the Redis store plus
    ``resilience``."""
    settings.configure(
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "resilience_crm"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(DATABASE)}},
        CACHES={"default": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": REDIS_URL,
                            "KEY_PREFIX": "rcrm-bench"}},
        RESILIENCE_CRM={"STORE": "redis", **resilience},
        USE_TZ=True,
    )
    django.setup()
    from django.core.management import call_command  # only once settings exist

    call_command("migrate", verbosity=0)
