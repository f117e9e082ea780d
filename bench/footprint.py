"""Footprint: the bytes each key and row the app keeps takes, measured on the real Redis and
PostgreSQL, and what 1M users and 10k circuits make of them.

    REDIS_URL=redis://127.0.0.1:6379/1 DATABASE_URL=postgres://postgres@127.0.0.1:5432/rc_fp \
        .venv/bin/python bench/footprint.py [--circuits 1000] [--users 10000]

``DATABASE_URL`` names a PostgreSQL database of its own for the run: it is migrated, and the
app's tables are emptied before and after. Everything is written through the app's own code
(the stores' ``step``, ``TierRateThrottle.allow_request``, ``protected.read``), except the
``Circuit``, ``CircuitEvent`` and ``CircuitMetric`` rows, which are bulk-created as the
flusher would leave them, and the call counters (``metrics.inc``, then the exposition's
``push``). Measured:

- Redis keys: ``MEMORY USAGE`` of each key (value, key name, expiry and Redis's own
  overhead), averaged over the keys written;
- PostgreSQL rows: ``pg_total_relation_size`` of the table (heap, indexes, TOAST) divided by
  its rows after a plain ``VACUUM``, which keeps the room its updates left, as a table in
  use has it (the table's figure); below the table also after a ``VACUUM FULL`` (the
  floor), and ``pg_column_size`` of one row.

A circuit's live state is measured with its whole failure-rate window in use (all ten
buckets, as a circuit called steadily for ``window`` seconds has); the limiter keys after
each user was charged twice; read-cache entries with the demo's signed JSON serializer, for a
token check, a contact and a page of 25 contacts as the demo API caches them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dj_database_url  # noqa: E402
import django  # noqa: E402
import tier_rows  # noqa: E402  (bench/ is on sys.path)
from django.conf import settings  # noqa: E402

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/1")
DATABASE_URL = os.environ.get("DATABASE_URL", "")
PREFIX = "rcrm-bench-fp"
#: Two charges at this rate keep a limiter key for 72 s: long enough for a run of 50,000
#: users to measure every key before it expires (its name is as long as at 1000/hour).
RATE = "100/hour"
#: The scale the table projects to.
USERS, CIRCUITS = 1_000_000, 10_000
#: Minutes of ``CircuitMetric`` rows a circuit called every minute leaves per day.
MINUTES_PER_DAY = 24 * 60
#: What the projection assumes of the retention (``METRICS_RETENTION_DAYS``' default).
RETENTION_DAYS = 30
TABLES = ("resilience_crm_circuitmetric", "resilience_crm_circuitevent",
          "resilience_crm_circuit", "resilience_crm_ratelimit")


def setup() -> None:
    if not DATABASE_URL.startswith(("postgres://", "postgresql://")):
        sys.exit("DATABASE_URL must name a PostgreSQL database of its own for the run")
    settings.configure(
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "rest_framework",
                        "resilience_crm"],
        DATABASES={"default": dj_database_url.parse(DATABASE_URL)},
        CACHES={"default": {
            "BACKEND": "django_redis.cache.RedisCache", "LOCATION": REDIS_URL,
            "KEY_PREFIX": PREFIX,
            "OPTIONS": {"SERIALIZER": "resilience_crm.cache_serializer.SignedJSONSerializer"},
        }},
        RESILIENCE_CRM={"STORE": "redis", "TIERS": {"free": {"read": RATE},
                                                    "anonymous": {"read": RATE}}},
        USE_TZ=True,
        SECRET_KEY="bench-only-footprint",  # noqa: S106  (signs nothing kept)
    )
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    tier_rows.write(settings.RESILIENCE_CRM["TIERS"])


def redis_bytes(redis: Any, keys: Iterable[Any]) -> float:
    """Mean ``MEMORY USAGE`` of ``keys`` (every one of them still there, not a sample)."""
    sizes = [size for size in (redis.memory_usage(key, samples=0) for key in keys)
             if size is not None]
    if not sizes:
        raise RuntimeError("no keys were written")
    return statistics.fmean(sizes)


class Table(NamedTuple):
    compact: float  # bytes per row in all the table's relations after a VACUUM FULL
    as_left: float  # the same after a plain VACUUM: what updates left free is still there
    row: int  # pg_column_size of one row
    rows: int


def table_bytes(table: str) -> Table:
    """Bytes per row of ``table``, as its writes left it and compacted."""
    from django.db import connection

    query = (f"SELECT pg_total_relation_size(%s), count(*),"  # noqa: S608
             f" (SELECT pg_column_size(t.*) FROM {table} t LIMIT 1) FROM {table}")
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM {table}")
        cursor.execute(query, [table])
        as_left, rows, row = cursor.fetchone()
        cursor.execute(f"VACUUM FULL {table}")
        cursor.execute(query, [table])
        compact = cursor.fetchone()[0]
    return Table(compact / rows, as_left / rows, row, rows)


def empty_tables() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(TABLES)} CASCADE")


def breaker_state(circuits: int) -> float:
    """Mean bytes of a circuit's live state in Redis, its window full."""
    from django_redis import get_redis_connection

    from resilience_crm.breakers.stores.redis import RedisStore

    store = RedisStore()
    names = [f"bench.fp.{n}" for n in range(circuits)]
    fill_windows(store.step, names)
    return redis_bytes(get_redis_connection("default"), (store.key(name) for name in names))


def fill_windows(step: Callable[[Any], Any], names: list[str]) -> None:
    """Ten steps per circuit, one in each bucket of its failure-rate window: 50 successes,
    a slow call and a failure in each (below every threshold: the circuit stays closed)."""
    from resilience_crm.breakers import machine
    from resilience_crm.breakers.registry import get_breaker
    from resilience_crm.breakers.stores.base import Step

    config = get_breaker(names[0]).config.as_step_config()
    width = max(1, config["window_ms"] // machine.BUCKETS)
    start = int(datetime.now(UTC).timestamp() * 1000)
    for name in names:
        for bucket in range(machine.BUCKETS):
            entries = [[0, machine.SUCCESS, 50, None], [0, machine.SLOW, 1, None],
                       [0, machine.FAILURE, 1, None]]
            step(Step(name, config, 0.5, entries, now=start + bucket * width))


def counter_fields(circuits: int) -> float:
    """Bytes per circuit of the ``resilience_calls`` hash the workers push their counts to
    (one field per circuit and outcome, every outcome counted)."""
    from django_redis import get_redis_connection

    from resilience_crm import metrics
    from resilience_crm.observability import exposition

    outcomes = ("success", "failure", "slow", "timeout", "rejected", "fallback")
    for n in range(circuits):
        for outcome in outcomes:
            metrics.inc("calls", circuit=f"bench.fp.{n}", outcome=outcome)
    exposition.push()
    redis = get_redis_connection("default")
    return redis_bytes(redis, redis.scan_iter(match=f"{PREFIX}:*resilience:metrics:calls")
                       ) / circuits


def circuit_rows(circuits: int) -> dict[str, Table]:
    """``Circuit`` rows as the Redis store leaves them (the durable record: state,
    generation, timestamps), then as the database store does (the live state in the row)."""
    from resilience_crm.breakers.stores.database import DatabaseStore
    from resilience_crm.models import Circuit

    names = [f"bench.fp.{n}" for n in range(circuits)]
    empty_tables()
    Circuit.objects.bulk_create(Circuit(name=name, generation=3) for name in names)
    durable = table_bytes("resilience_crm_circuit")
    empty_tables()
    fill_windows(DatabaseStore().step, names)
    return {"redis": durable, "database": table_bytes("resilience_crm_circuit")}


def record_rows(circuits: int, minutes: int) -> dict[str, Table]:
    """``CircuitMetric`` rows (one per circuit and minute it was called in) and
    ``CircuitEvent`` rows (two per incident: open, then closed), as the flusher writes them."""
    from resilience_crm.breakers import machine
    from resilience_crm.models import Circuit, CircuitEvent, CircuitMetric

    empty_tables()
    made = Circuit.objects.bulk_create(Circuit(name=f"bench.fp.{n}") for n in range(circuits))
    minute = datetime.now(UTC).replace(second=0, microsecond=0)
    for offset in range(minutes):
        bucket = minute - timedelta(minutes=offset)
        CircuitMetric.objects.bulk_create(
            CircuitMetric(circuit=circuit, bucket=bucket, calls=1200, successes=1190,
                          failures=6, slow=4, timeouts=1, rejected=0, fallbacks=2,
                          latency_sum_ms=9876.5, latency_max_ms=412.25)
            for circuit in made)
    CircuitEvent.objects.bulk_create(
        CircuitEvent(circuit=circuit, generation=generation, from_state=before, to_state=after,
                     reason="failure_rate")
        for circuit in made
        for generation, before, after in ((1, machine.CLOSED, machine.OPEN),
                                          (2, machine.HALF_OPEN, machine.CLOSED)))
    return {"metric": table_bytes("resilience_crm_circuitmetric"),
            "event": table_bytes("resilience_crm_circuitevent")}


def limiter_keys(users: int) -> dict[str, Any]:
    """Each of ``users`` charged twice at one limit, on the Redis limiter store and on the
    database one."""
    from django.contrib.auth.models import User
    from django.test import RequestFactory
    from django_redis import get_redis_connection
    from rest_framework.request import Request

    from resilience_crm.ratelimit import limiter
    from resilience_crm.ratelimit.stores.database import DatabaseLimiterStore
    from resilience_crm.ratelimit.stores.redis import RedisLimiterStore
    from resilience_crm.throttling import TierRateThrottle

    factory = RequestFactory()
    throttle = TierRateThrottle()
    requests = []
    for n in range(users):
        request = Request(factory.get("/bench/"))
        request.user = User(pk=n + 1, username=f"u{n}")
        requests.append(request)
    redis = get_redis_connection("default")
    measured: dict[str, Any] = {}
    for name, store in (("redis", RedisLimiterStore()), ("database", DatabaseLimiterStore())):
        limiter.set_store(store)
        for _ in range(2):
            for request in requests:
                if not throttle.allow_request(request, object()):  # type: ignore[arg-type]
                    raise RuntimeError("a decision refused: the rate is too low for the run")
        if name == "redis":
            measured[name] = redis_bytes(redis, redis.scan_iter(match=f"{PREFIX}:*rl:*",
                                                                count=1000))
        else:
            measured[name] = table_bytes("resilience_crm_ratelimit")
    return measured


def read_entries(users: int) -> dict[str, float]:
    """Read-cache entries of the demo's three kinds, each written through ``protected.read``."""
    from django_redis import get_redis_connection

    from resilience_crm.provider import cache
    from resilience_crm.provider.facade import protected

    redis = get_redis_connection("default")
    created = datetime(2026, 12, 3, 15, 4, 5, 123456, tzinfo=UTC).isoformat()

    def contact(n: int) -> dict[str, Any]:
        return {"id": n, "name": f"Contact number {n}", "email": f"contact{n}@example.com",
                "phone": "+44 20 7946 0958", "company": "Example Holdings Ltd",
                "created_at": created}

    kinds: dict[str, Callable[[int], tuple[str, Any]]] = {
        "token": lambda n: (f"authtokens:{n:064x}", {
            "pk": n, "username": f"user{n}", "is_active": True, "is_staff": False,
            "is_superuser": False}),
        "contact": lambda n: (f"contacts:detail:{n}", contact(n)),
        "page": lambda n: (f"contacts:page:page={n}", {
            "count": 25 * users, "next": n + 1, "previous": n - 1 if n > 1 else None,
            "results": [contact(25 * n + i) for i in range(25)]}),
    }
    measured = {}
    for kind, build in kinds.items():
        keys = []
        for n in range(1, min(users, 1000) + 1):
            key, value = build(n)
            protected.read(key, partial(identity, value))
            keys.append(f"{PREFIX}:1:{cache.PREFIX}{key}")
        measured[kind] = redis_bytes(redis, keys)
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--circuits", type=int, default=1_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--minutes", type=int, default=60,
                        help="minutes of CircuitMetric rows per circuit")
    args = parser.parse_args()
    setup()
    from django_redis import get_redis_connection

    redis = get_redis_connection("default")

    def clean() -> None:
        stale = list(redis.scan_iter(match=f"{PREFIX}*", count=1000))
        for start in range(0, len(stale), 1000):
            redis.delete(*stale[start:start + 1000])
        empty_tables()

    clean()
    try:
        state = breaker_state(args.circuits)
        counters = counter_fields(args.circuits)
        circuits = circuit_rows(args.circuits)
        records = record_rows(args.circuits, args.minutes)
        limits = limiter_keys(args.users)
        reads = read_entries(args.users)
    finally:
        clean()

    day = CIRCUITS * MINUTES_PER_DAY
    rows: list[tuple[str, str, float, str, float]] = [
        # what, where, bytes each, how many at scale (said), how many (counted)
        ("breaker live state, window full", "Redis", state, "10k circuits", CIRCUITS),
        ("call counters (6 hash fields)", "Redis", counters, "10k circuits", CIRCUITS),
        ("Circuit row (Redis store: durable record)", "PostgreSQL", circuits["redis"].as_left,
         "10k circuits", CIRCUITS),
        ("Circuit row (database store: live state)", "PostgreSQL", circuits["database"].as_left,
         "10k circuits", CIRCUITS),
        ("CircuitMetric row (circuit x minute)", "PostgreSQL", records["metric"].as_left,
         f"10k circuits x {MINUTES_PER_DAY} min = 1 day", day),
        ("", "", records["metric"].as_left, f"... x {RETENTION_DAYS} days retention",
         day * RETENTION_DAYS),
        ("CircuitEvent row (per transition)", "PostgreSQL", records["event"].as_left,
         "10k circuits x 1 incident (2 rows)", 2 * CIRCUITS),
        ("limiter key, one limit", "Redis", limits["redis"], "1M users", USERS),
        ("limiter row, one limit", "PostgreSQL", limits["database"].as_left, "1M users", USERS),
        ("read cache: token check", "Redis", reads["token"], "1M users", USERS),
        ("read cache: one contact", "Redis", reads["contact"], "1M contacts", USERS),
        ("read cache: page of 25 contacts", "Redis", reads["page"], "40k pages (1M contacts)",
         USERS // 25),
    ]
    print(f"footprint: {args.circuits} circuits, {args.users} users, {args.minutes} minutes of "
          f"metrics; Redis {REDIS_URL}, PostgreSQL {settings.DATABASES['default']['NAME']}")
    print(f"  {'':44} {'store':10} {'bytes each':>10}  {'at scale':38} {'rows/keys':>12}"
          f" {'total':>9}")
    for what, where, each, scale, count in rows:
        print(f"  {what:44} {where:10} {each:10.0f}  {scale:38} {count:12,} "
              f"{human(each * count):>9}")
    for name, table in (("Circuit (Redis store)", circuits["redis"]),
                        ("Circuit (database store)", circuits["database"]),
                        ("CircuitMetric", records["metric"]),
                        ("CircuitEvent", records["event"]),
                        ("ratelimit", limits["database"])):
        print(f"  {name}: {table.rows} rows; per row in all its relations {table.compact:.0f} B"
              f" compacted, {table.as_left:.0f} B as its writes left it (pg_column_size of "
              f"one row: {table.row} B)")


def identity(value: Any) -> Any:
    return value


def human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


if __name__ == "__main__":
    main()
