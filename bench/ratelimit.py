"""Rate-limit decisions: resilience_crm beside DRF's UserRateThrottle, django-ratelimit and
``limits``, all on one Redis, in one run; with ``DATABASE_URL`` (PostgreSQL) also ours on the
database limiter store (no Redis in its path).

    REDIS_URL=redis://127.0.0.1:6379/1 [DATABASE_URL=postgres://...] \
        .venv/bin/python bench/ratelimit.py [--decisions N] [--plots DIR]

With ``--cluster``, also ours on a Redis Cluster of three masters (each with a replica)
started from the machine's ``redis-server`` for the run (``tests/redis_cluster.py``),
through ``resilience_crm.redis_cluster.RedisClusterClient``.

``DATABASE_URL`` names a database of its own for the run: it is migrated, and the database
store's table is emptied before and after. Bytes per key there is the heap and primary-key
index of the table divided by its rows (after a ``VACUUM``), and ``pg_column_size`` of one row.

Each side decides the same stream: ``--users`` users taking turns, each at 1000/hour (every
user is seen once before timing starts, as in a steady state), so every decision admits and
every key stays small (DRF keeps a list of timestamps per key, which grows with the limit).
Ours goes through ``TierRateThrottle.allow_request`` (principal, tier
lookup, adaptive factor, one EVALSHA, the decision object); DRF's through its own
``allow_request`` on the django-redis cache; django-ratelimit through ``is_ratelimited``
(fixed window, ``cache.add`` + ``incr``); ``limits`` through ``MovingWindowRateLimiter.hit``
on its own Redis storage; for reference, a bare ``GET`` of a missing key on the same pool
(and with ``DATABASE_URL``, a bare ``SELECT 1`` on the database store's connection): the
round trip none of them can go under. The sides take turns in ``--rounds`` batches, so a
busy machine slows them alike. Printed: median and p99 latency per decision, decisions per
second (one thread), and ``MEMORY USAGE`` of one key after the run; each decision's latency
by side is drawn in ``--plots`` (default docs/img/), ``ratelimit.svg``. Keys are deleted
afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dj_database_url  # noqa: E402
import django  # noqa: E402
import plots  # noqa: E402  (bench/ is on sys.path)
import tier_rows  # noqa: E402
from django.conf import settings  # noqa: E402

from tests import redis_cluster  # noqa: E402

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/1")
PREFIX = "rcrm-bench-rl"
RATE = "1000/hour"
DATABASE = str(Path(tempfile.mkdtemp(prefix="rcrm-bench-")) / "bench.sqlite3")
DATABASE_URL = os.environ.get("DATABASE_URL")
OURS_REDIS = "resilience_crm TierRateThrottle (GCRA, Lua)"
OURS_DATABASE = "resilience_crm TierRateThrottle (GCRA, PostgreSQL)"
OURS_CLUSTER = "resilience_crm TierRateThrottle (Redis Cluster)"
ROUND_TRIP_REDIS = "(a bare Redis GET: one round trip)"
ROUND_TRIP_DATABASE = "(a bare SELECT 1 on the store's connection)"


def setup(cluster_url: str | None = None) -> None:
    cluster = {"cluster": {
        "BACKEND": "django_redis.cache.RedisCache", "LOCATION": cluster_url,
        "KEY_PREFIX": PREFIX,
        "OPTIONS": {"CLIENT_CLASS": "resilience_crm.redis_cluster.RedisClusterClient"},
    }} if cluster_url else {}
    settings.configure(
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "rest_framework",
                        "resilience_crm"],
        # A file, not ":memory:": the background flusher writes the decisions' metrics from
        # its own thread (and connection), as it would in production.
        DATABASES={"default": dj_database_url.parse(DATABASE_URL) if DATABASE_URL else {
            "ENGINE": "django.db.backends.sqlite3", "NAME": DATABASE}},
        CACHES={"default": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": REDIS_URL,
                            "KEY_PREFIX": PREFIX}, **cluster},
        RESILIENCE_CRM={"TIERS": {"free": {"read": RATE}, "anonymous": {"read": RATE}}},
        REST_FRAMEWORK={"DEFAULT_THROTTLE_RATES": {"user": RATE}},
        RATELIMIT_USE_CACHE="default",
        USE_TZ=True,
        SECRET_KEY="bench-only",  # noqa: S106  (nothing is signed)
    )
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    tier_rows.write(settings.RESILIENCE_CRM["TIERS"])


def table_bytes(store: Any, rows: int = 0) -> tuple[int, int, int, int]:
    """The database store's table after a VACUUM: ``pg_column_size`` of one row, then heap and
    primary-key index bytes per row (rounded), and the rows. With ``rows``, first fill it with
    that many users' keys (``rl:{u:N}:read:3600``), each charged twice since (an UPDATE of
    the TAT, as a decision makes), as a table of that many active users looks."""
    connection = store.connection()
    if rows:
        connection.execute("SET statement_timeout = 0")  # the store's is for decisions
        connection.execute("TRUNCATE resilience_crm_ratelimit")  # files of earlier runs too
        connection.execute(  # live for an hour: the sweep leaves them alone
            "INSERT INTO resilience_crm_ratelimit (tat, key)"
            " SELECT (extract(epoch FROM now()) * 1000000)::bigint, 'rl:{u:' || n"
            " || '}:read:3600' FROM generate_series(1, %s) AS n", [rows])
        for _ in range(2):
            connection.execute("UPDATE resilience_crm_ratelimit SET tat = tat + 3600000")
    connection.execute("VACUUM resilience_crm_ratelimit")
    row, heap, index, rows = connection.execute(
        "SELECT (SELECT pg_column_size(r.*) FROM resilience_crm_ratelimit r LIMIT 1),"
        " pg_relation_size('resilience_crm_ratelimit'),"
        " pg_relation_size('resilience_crm_ratelimit_pkey'), count(*)"
        " FROM resilience_crm_ratelimit").fetchone()
    return row, round(heap / rows), round(index / rows), rows


def measure(sides: dict[str, Callable[[int], bool]], decisions: int, users: int,
            rounds: int) -> tuple[dict[str, dict[str, float]], dict[str, list[int]]]:
    """Figures of each side's decisions and their latencies (ns), the sides taking turns in
    ``rounds`` batches so that a noisy machine slows them alike; every decision must
    admit."""
    timings: dict[str, list[int]] = {name: [] for name in sides}
    elapsed = dict.fromkeys(sides, 0)
    batch = decisions // rounds
    for round_ in range(rounds):
        for name, decide in sides.items():
            admitted = 0
            started = time.perf_counter_ns()
            for i in range(round_ * batch, (round_ + 1) * batch):
                t0 = time.perf_counter_ns()
                admitted += decide(i % users)
                timings[name].append(time.perf_counter_ns() - t0)
            elapsed[name] += time.perf_counter_ns() - started
            assert admitted == batch, f"{name}: only {admitted} of {batch} admitted"
    results = {}
    for name, values in timings.items():
        values.sort()
        results[name] = {"median_us": statistics.median(values) / 1000,
                         "p99_us": values[int(len(values) * 0.99)] / 1000,
                         "per_s": len(values) / (elapsed[name] / 1e9)}
    return results, timings


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--decisions", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--table-rows", type=int, default=100_000,
                        help="users' keys in the database store's table when sizing it")
    parser.add_argument("--cluster", action="store_true",
                        help="also ours on a Redis Cluster started from redis-server")
    parser.add_argument("--plots", type=Path, default=plots.IMAGES, help="where to write SVG")
    args = parser.parse_args()
    cluster = redis_cluster.start() if args.cluster else None
    try:
        setup(cluster.url if cluster else None)
        run(args)
    finally:
        if cluster is not None:
            cluster.stop()


def run(args: argparse.Namespace) -> None:
    from django.contrib.auth.models import User
    from django.test import RequestFactory
    from django_ratelimit.core import is_ratelimited
    from django_redis import get_redis_connection
    from limits import parse as parse_limit
    from limits import storage as limits_storage
    from limits import strategies
    from rest_framework.request import Request
    from rest_framework.throttling import UserRateThrottle

    from resilience_crm.ratelimit import limiter
    from resilience_crm.ratelimit.stores.database import DatabaseLimiterStore
    from resilience_crm.ratelimit.stores.redis import RedisLimiterStore
    from resilience_crm.throttling import TierRateThrottle

    redis = get_redis_connection("default")
    leftovers = list(redis.scan_iter(match=f"{PREFIX}*"))  # from an interrupted run
    if leftovers:
        redis.delete(*leftovers)
    factory = RequestFactory()

    def request_of(user_id: int) -> Request:
        django_request = factory.get("/bench/")
        request = Request(django_request)
        request.user = User(pk=user_id + 1, username=f"u{user_id}")
        return request

    requests = [request_of(i) for i in range(args.users)]
    view: Any = object()

    ours_throttle = TierRateThrottle()
    drf_throttle = UserRateThrottle()
    moving = strategies.MovingWindowRateLimiter(
        limits_storage.storage_from_string(REDIS_URL, key_prefix=f"{PREFIX}-limits"))
    item = parse_limit(RATE.replace("/", " per "))

    on_redis = RedisLimiterStore()
    on_cluster = RedisLimiterStore("cluster") if args.cluster else None
    on_database = DatabaseLimiterStore() if DATABASE_URL else None
    if on_database is not None:  # empty, and no files left from earlier runs
        on_database.connection().execute("TRUNCATE resilience_crm_ratelimit")

    def ours(store: Any) -> Callable[[int], bool]:
        def decide(u: int) -> bool:
            limiter.set_store(store)  # both of ours pay for this lock, DRF does not
            return ours_throttle.allow_request(requests[u], view)
        return decide

    sides: dict[str, Callable[[int], bool]] = {
        OURS_REDIS: ours(on_redis),
        **({OURS_DATABASE: ours(on_database)} if on_database is not None else {}),
        **({OURS_CLUSTER: ours(on_cluster)} if on_cluster is not None else {}),
        "DRF UserRateThrottle (django-redis)":
            lambda u: drf_throttle.allow_request(requests[u], view),
        "django-ratelimit is_ratelimited (fixed window)":
            lambda u: not is_ratelimited(requests[u]._request, group="bench", key="user",
                                         rate=RATE, increment=True),
        "limits MovingWindowRateLimiter (Redis)":
            lambda u: moving.hit(item, "bench", str(u)),
        # What no limiter on that store can go under: one round trip, doing nothing.
        ROUND_TRIP_REDIS: lambda u: redis.get(f"{PREFIX}:nothing") is None,
        **({ROUND_TRIP_DATABASE: lambda u: bool(
            on_database.connection().execute("SELECT 1").fetchone())}
           if on_database is not None else {}),
    }
    for decide in sides.values():  # warm up: scripts loaded, connections open
        decide(0)
    keys_before = set(redis.scan_iter(match=f"{PREFIX}*"))
    for user in range(args.users):  # every user seen once: tiers cached, as in steady state
        for decide in sides.values():
            decide(user)
    results, timings = measure(sides, args.decisions, args.users, args.rounds)

    memory: dict[str, Any] = {}
    table = table_bytes(on_database) if on_database is not None else None
    for name, pattern in [
        (OURS_REDIS, f"{PREFIX}:*rl:\\{{u:1\\}}:*"),
        ("DRF UserRateThrottle (django-redis)", f"{PREFIX}:*throttle_user_1"),
        ("django-ratelimit is_ratelimited (fixed window)", f"{PREFIX}:*:rl:[^{{]*"),
        ("limits MovingWindowRateLimiter (Redis)", f"{PREFIX}-limits*bench/1/*"),
    ]:
        keys = list(redis.scan_iter(match=pattern))
        memory[name] = redis.memory_usage(keys[0]) if keys else None
    if table is not None:
        memory[OURS_DATABASE] = table[1] + table[2]
    if on_cluster is not None:
        memory[OURS_CLUSTER] = on_cluster.client.memory_usage(on_cluster.key("u:1", "read:3600"))

    drf = results["DRF UserRateThrottle (django-redis)"]["median_us"]
    print(f"rate-limit decisions: {args.decisions} over {args.users} users at {RATE}, one "
          f"thread, one Redis ({REDIS_URL})")
    print(f"  {'':48} {'median':>9} {'p99':>9} {'decisions/s':>12} {'bytes/key':>10}"
          f" {'x DRF median':>13}")
    for name, result in results.items():
        print(f"  {name:48} {result['median_us']:7.1f}us {result['p99_us']:7.1f}us"
              f" {result['per_s']:12.0f} {memory.get(name, '-')!s:>10}"
              f" {result['median_us'] / drf:12.2f}x")

    plots.save(plots.latency(
        "Rate-limit decisions, one Redis, sides taking turns",
        [(f"each decision: {args.decisions:,} over {args.users:,} users at {RATE}",
          {name: [ns / 1e9 for ns in values] for name, values in timings.items()})]),
        args.plots / "ratelimit.svg")
    if on_database is not None and table is not None:
        for row, heap, index, rows in (table, table_bytes(on_database, args.table_rows)):
            print(f"  database store table: {rows} rows; per row {heap} B heap + {index} B"
                  f" index (pg_column_size of one row: {row} B)")
        on_database.clear()
    stale = set(redis.scan_iter(match=f"{PREFIX}*")) | keys_before
    if stale:
        redis.delete(*stale)
    shutil.rmtree(Path(DATABASE).parent, ignore_errors=True)


if __name__ == "__main__":
    main()
