"""``/resilience/health/live`` latency while the database is blackholed and breakers keep
making transitions and counting calls.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/rcrm_bench \\
        .venv/bin/python bench/live_blackholed.py [--requests N] [--plots DIR]

The app's tables sit on a second alias (``DATABASE_ALIAS``) that reaches the PostgreSQL
server through the drill's fault proxy (``crm_demo/crm/faults.py``), stalled: connections
are accepted and never answered, as with a blackholed host. A producer thread trips and
resets a breaker and counts calls (a few hundred transitions a second), so the background
flusher keeps being woken with work it cannot write. Requests go through Django's full
handler (the test client), once with autocommit and once with ``ATOMIC_REQUESTS = True`` on
that alias, 5 ms apart so that the run spans several of the flusher's 2 s connect attempts
and backoffs. The target is a p99 under 50 ms; the run prints p50, p99 and the slowest
request per mode, and draws both modes' latencies in ``--plots`` (default docs/img/),
``live-blackholed.svg``. Then ``/resilience/health/ready`` on the same blackholed database: each
answer must come within its deadline (0.7 s) and a few milliseconds, which the suite checks
only loosely (tests/test_readiness.py); the run prints the slowest of ``--ready`` requests.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dj_database_url  # noqa: E402
import django  # noqa: E402
import plots  # noqa: E402  (bench/ is on sys.path)
from django.conf import settings  # noqa: E402
from django.urls import include, path  # noqa: E402

from crm_demo.crm.faults import FaultProxy  # noqa: E402
from tests.failing import churn  # noqa: E402

DATABASE_URL = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
CIRCUIT = "bench.live"

urlpatterns: list = []  # filled in by setup(): the views read DATABASES when imported


def setup(proxy_port: int) -> None:
    settings.configure(
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "resilience_crm"],
        DATABASES={
            "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
            "resilience": {**dj_database_url.parse(DATABASE_URL), "HOST": "127.0.0.1",
                           "PORT": proxy_port, "OPTIONS": {"connect_timeout": 2}},
        },
        DATABASE_ROUTERS=["resilience_crm.routers.ResilienceRouter"],
        CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
        RESILIENCE_CRM={
            "STORE": "memory",
            "DATABASE_ALIAS": "resilience",
            "CIRCUITS": {CIRCUIT: {"failure_threshold": 2, "failure_rate_threshold": 0}},
        },
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["testserver"],
        USE_TZ=True,
    )
    django.setup()
    urlpatterns.append(path("resilience/", include("resilience_crm.urls")))


def measure(requests: int, atomic: bool, interval: float) -> list[float]:
    from django.db import connections
    from django.test import Client

    from resilience_crm import get_breaker

    connections.settings["resilience"]["ATOMIC_REQUESTS"] = atomic
    breaker = get_breaker(CIRCUIT)
    client = Client()
    producing = threading.Event()
    producing.set()

    def produce() -> None:
        while producing.is_set():
            churn(breaker)
            time.sleep(0.005)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    durations = []
    try:
        for _ in range(requests):
            started = time.perf_counter()
            response = client.get("/resilience/health/live")
            durations.append(time.perf_counter() - started)
            assert response.status_code == 200, response.status_code
            time.sleep(interval)  # spread over the flusher's connect attempts and backoff
    finally:
        producing.clear()
        producer.join()
    return sorted(durations)


def measure_ready(requests: int) -> list[float]:
    from django.test import Client

    client = Client()
    durations = []
    for _ in range(requests):
        started = time.perf_counter()
        response = client.get("/resilience/health/ready")
        durations.append(time.perf_counter() - started)
        assert response.status_code == 503, response.status_code
    return sorted(durations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--ready", type=int, default=10,
                        help="/ready requests to time (each takes its deadline)")
    parser.add_argument("--interval", type=float, default=0.005,
                        help="seconds between requests (default: 1000 requests span ~5 s)")
    parser.add_argument("--plots", type=Path, default=plots.IMAGES, help="where to write SVG")
    args = parser.parse_args()
    server = dj_database_url.parse(DATABASE_URL)
    with FaultProxy(server["HOST"] or "127.0.0.1", int(server["PORT"] or 5432)) as proxy:
        proxy.stalled = True
        setup(proxy.port)
        from resilience_crm import flusher, get_breaker, metrics
        from resilience_crm.breakers import events

        get_breaker(CIRCUIT)  # built while "down" is not yet known: one 2 s connect attempt
        print(f"/resilience/health/live, database blackholed, {args.requests} requests")
        modes: dict[str, list[float]] = {}
        for atomic in (False, True):
            durations = measure(args.requests, atomic, args.interval)
            modes["ATOMIC_REQUESTS = True" if atomic else "autocommit"] = durations
            p50 = durations[len(durations) // 2]
            p99 = durations[int(len(durations) * 0.99) - 1]
            mode = "ATOMIC_REQUESTS" if atomic else "autocommit     "
            print(f"  {mode}  p50 {p50 * 1000:6.2f} ms  p99 {p99 * 1000:6.2f} ms  "
                  f"max {durations[-1] * 1000:6.2f} ms")
        print(f"  events waiting {events.pending_count()}, calls counted "
              f"{metrics.value('calls', circuit=CIRCUIT, outcome='success')}, flusher "
              f"connection attempts {proxy.connections}, database known down "
              f"{flusher.database_down()}")
        plots.save(plots.latency(
            "/resilience/health/live while the app's database is blackholed",
            [(f"{args.requests:,} requests each, a breaker churning beside them", modes)]),
            args.plots / "live-blackholed.svg")
        if args.ready:
            from resilience_crm.observability.health import PROBE_DEADLINE

            durations = measure_ready(args.ready)
            print(f"/resilience/health/ready, database blackholed, {args.ready} requests: "
                  f"deadline {PROBE_DEADLINE * 1000:.0f} ms, p50 "
                  f"{durations[len(durations) // 2] * 1000:6.2f} ms, max "
                  f"{durations[-1] * 1000:6.2f} ms")
        proxy.drop()


if __name__ == "__main__":
    main()
