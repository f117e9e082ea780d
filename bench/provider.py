"""Latency of the provider's outage paths, in process: a stale hit and a fail-fast while the
circuit is open, at the ``protected.read`` level and through the demo API (Django, DRF,
token authentication from cache), with Redis as the shared cache and breaker store.

    REDIS_URL=redis://127.0.0.1:6379/2 .venv/bin/python bench/provider.py [--calls N]

The database is an in-memory SQLite that is never touched once the circuits are open; the
point is what a request costs when the database is down and the breaker answers for it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/1")
os.environ["DATABASE_URL"] = "sqlite://:memory:"
os.environ["DJANGO_SETTINGS_MODULE"] = "crm_demo.settings"

import django  # noqa: E402
from django.conf import settings  # noqa: E402


def setup() -> None:
    settings.CACHES["default"]["KEY_PREFIX"] = "rcrm-bench-provider"
    settings.RESILIENCE_CRM = {
        "STORE": "redis",
        "FALLBACK_TTL": 0,  # every hit is stale
        # The rate limiter stays in the stack, at a limit these calls cannot reach.
        "TIERS": {"free": {"read": "1000000/min"}},
    }
    settings.ALLOWED_HOSTS = ["testserver"]
    settings.LOGGING = {"version": 1, "disable_existing_loggers": False,
                        "loggers": {"resilience_crm": {"level": "ERROR"}}}
    settings.DEBUG = False
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def timings(call: Callable[[], object], calls: int) -> list[float]:
    """Seconds per call, each call timed on its own."""
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


def report(label: str, samples: list[float]) -> None:
    ordered = sorted(samples)
    p99 = ordered[int(len(ordered) * 0.99) - 1]
    print(f"  {label:48} median {statistics.median(ordered) * 1e6:9.1f} µs   "
          f"p99 {p99 * 1e6:9.1f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    setup()

    from django.contrib.auth.models import User
    from django.core.cache import cache
    from django.test import Client
    from rest_framework.authtoken.models import Token

    from crm_demo.crm.models import Contact
    from resilience_crm import get_breaker, protected
    from resilience_crm.exceptions import CircuitOpenError

    cache.delete_pattern("*")
    for name in ("crm.read", "crm.auth"):
        get_breaker(name).store.clear(name)
    Contact.objects.bulk_create(Contact(name=f"Contact {n}", email=f"c{n}@example.com")
                                for n in range(25))
    token = Token.objects.create(user=User.objects.create_user("bench")).key
    client = Client(HTTP_AUTHORIZATION=f"Token {token}")
    assert client.get("/api/contacts/").status_code == 200  # cached, and the token too
    protected.read("bench:value", lambda: list(range(100)))
    for name in ("crm.read", "crm.auth"):
        get_breaker(name).force("forced_open", reason="benchmark")

    def stale_local() -> None:
        protected.read("bench:value", list)

    def stale_redis() -> None:
        protected.cache.forget_local()
        protected.read("bench:value", list)

    def fail_fast() -> None:
        with contextlib.suppress(CircuitOpenError):
            protected.read("bench:never-cached", list)

    def api_stale() -> None:
        response = client.get("/api/contacts/")
        assert response.status_code == 200 and response["X-Resilience-Fallback"] == "stale", (
            response.status_code, response.content[:200])

    def api_fail_fast() -> None:
        response = client.get("/api/contacts/999999/")
        assert response.status_code == 503

    print(f"circuit open, database unused ({args.calls} calls each, Redis {settings.REDIS_URL})")
    report("protected.read stale hit, per-process layer", timings(stale_local, args.calls))
    report("protected.read stale hit, from Redis", timings(stale_redis, args.calls))
    report("protected.read fail-fast (nothing cached)", timings(fail_fast, args.calls))
    report("GET /api/contacts/ stale (full stack)", timings(api_stale, args.calls))
    report("GET /api/contacts/999999/ 503 (full stack)", timings(api_fail_fast, args.calls))
    for name in ("crm.read", "crm.auth"):
        get_breaker(name).store.clear(name)
    cache.delete_pattern("*")


if __name__ == "__main__":
    main()
