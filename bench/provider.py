"""Latency of the provider's outage paths, in process: a stale hit and a fail-fast while the
circuit is open, at the ``protected.read`` level and through the demo API (Django, DRF,
token authentication from cache), with Redis as the shared cache and breaker store; beside
them, the same two requests to plain DRF's endpoints (bench/plain_drf.py) with the database
up, which is the best plain DRF can do (with the database down it has no answer).

    REDIS_URL=redis://127.0.0.1:6379/2 .venv/bin/python bench/provider.py [--calls N] \\
        [--plots DIR]

The database is an in-memory SQLite that the demo's side never touches once the circuits
are open; the point is what a request costs when the database is down and the breaker
answers for it. The measures take turns in ``--rounds`` batches, every call timed on its
own; each measure's latency is drawn in ``--plots`` (default docs/img/), ``provider.svg``.
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
import plots  # noqa: E402  (bench/ is on sys.path)
from django.conf import settings  # noqa: E402


def setup() -> None:
    settings.CACHES["default"]["KEY_PREFIX"] = "rcrm-bench-provider"
    settings.RESILIENCE_CRM = {
        "STORE": "redis",
        "FALLBACK_TTL": 0,  # every hit is stale
        # The rate limiter stays in the stack, at a limit these calls cannot reach.
        "TIERS": {"free": {"read": "1000000/min"}},
    }
    settings.ROOT_URLCONF = "plain_drf"
    settings.ALLOWED_HOSTS = ["testserver"]
    settings.LOGGING = {"version": 1, "disable_existing_loggers": False,
                        "loggers": {"resilience_crm": {"level": "ERROR"}}}
    settings.DEBUG = False
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def timings(measures: dict[str, Callable[[], object]], calls: int,
            rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each measure, each call timed on its own, the measures taking
    turns in ``rounds`` batches of ``calls / rounds``."""
    samples: dict[str, list[float]] = {label: [] for label in measures}
    for _ in range(rounds):
        for label, call in measures.items():
            for _ in range(max(1, calls // rounds)):
                started = time.perf_counter()
                call()
                samples[label].append(time.perf_counter() - started)
    return samples


def report(label: str, samples: list[float]) -> None:
    ordered = sorted(samples)
    p99 = plots.quantile(ordered, 0.99)
    print(f"  {label:52} median {statistics.median(ordered) * 1e6:9.1f} µs   "
          f"p99 {p99 * 1e6:9.1f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--plots", type=Path, default=plots.IMAGES, help="where to write SVG")
    args = parser.parse_args()
    setup()

    import plain_drf
    from django.core.cache import cache

    from crm_demo.crm.models import Contact
    from resilience_crm import get_breaker, protected
    from resilience_crm.exceptions import CircuitOpenError

    cache.delete_pattern("*")
    for name in ("crm.read", "crm.auth"):
        get_breaker(name).store.clear(name)
    made = Contact.objects.bulk_create(Contact(name=f"Contact {n}", email=f"c{n}@example.com")
                                       for n in range(25))
    sides = plain_drf.clients()  # the demo's list is cached now, and the token too
    client, plain = sides[plain_drf.OURS], sides[plain_drf.PLAIN]
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

    def plain_list() -> None:
        assert plain.get("/plain/contacts/").status_code == 200

    def plain_detail() -> None:
        assert plain.get(f"/plain/contacts/{made[0].pk}/").status_code == 200

    measures = {
        "protected.read stale hit, per-process layer": stale_local,
        "protected.read stale hit, from Redis": stale_redis,
        "protected.read fail-fast (nothing cached)": fail_fast,
        "GET /api/contacts/ stale (full stack)": api_stale,
        "GET /api/contacts/999999/ 503 (full stack)": api_fail_fast,
        "plain DRF GET /plain/contacts/, database up": plain_list,
        "plain DRF GET /plain/contacts/<id>/, database up": plain_detail,
    }
    print(f"circuit open, database unused ({args.calls} calls each, {args.rounds} turns, Redis "
          f"{settings.REDIS_URL})")
    samples = timings(measures, args.calls, args.rounds)
    for label, values in samples.items():
        report(label, values)
    labels = list(samples)
    median = {label: statistics.median(values) for label, values in samples.items()}
    print(f"  stale list / plain DRF's list: {median[labels[3]] / median[labels[5]]:.2f}x the "
          f"time; 503 / plain DRF's detail: {median[labels[4]] / median[labels[6]]:.2f}x")
    plots.save(plots.latency("Reads while the circuit is open (the database unused)", [
        ("through protected.read", {label: samples[label] for label in labels[:3]}),
        ("the demo API (full stack), beside plain DRF with the database up",
         {label: samples[label] for label in labels[3:]}),
    ]), args.plots / "provider.svg")
    for name in ("crm.read", "crm.auth"):
        get_breaker(name).store.clear(name)
    cache.delete_pattern("*")


if __name__ == "__main__":
    main()
