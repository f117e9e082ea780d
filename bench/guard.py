"""The query guard's cost per statement, beside a primary-key SELECT on local PostgreSQL.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/guard.py [--statements N] [--rounds R]

Two aliases reach the same database on persistent connections: ``plain`` on Django's
PostgreSQL backend, ``guarded`` on the guard's, named in ``PROTECT_QUERIES`` (a closed
circuit on the memory store; any store costs the same while the snapshot is fresh). Each
round runs N primary-key SELECTs (``cursor.execute`` + ``fetchone``) on one alias, then on
the other, in alternating order, so both see the same machine, and then the guard around a
function that does nothing (what the guard itself costs a statement: its CPU time). It
prints the median time per statement of each, the median of the rounds' SELECT differences,
and both costs as shares of the plain SELECT's median. The target: at most 5 %.

On a loaded machine the SELECT difference comes out larger than the guard's own time: each
statement waits for the server and then for a CPU, and a process that uses more CPU between
its waits is scheduled later (docs/benchmarks.md has figures).
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dj_database_url  # noqa: E402
import django  # noqa: E402
from django.conf import settings  # noqa: E402

DATABASE_URL = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
TABLE = "rcrm_bench_guard"
ROWS = 1000
TARGET = 0.05
#: The app's own tables (events, metrics), in a file the flusher's thread can open too.
DATABASE = str(Path(tempfile.mkdtemp(prefix="rcrm-bench-guard-")) / "app.sqlite3")
# Removed last: after the flusher's own exit handler (registered later, so run first).
atexit.register(shutil.rmtree, Path(DATABASE).parent, ignore_errors=True)


def setup() -> None:
    database = {**dj_database_url.parse(DATABASE_URL), "CONN_MAX_AGE": None}
    settings.configure(
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "resilience_crm"],
        DATABASES={
            # A file, migrated: the background flusher writes the guard's metrics from its
            # own thread and connection, as in production (in memory it found no tables and
            # kept failing, which slowed the guarded side by half the difference measured).
            "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": DATABASE},
            "plain": {**database, "ENGINE": "django.db.backends.postgresql"},
            "guarded": {**database, "ENGINE": "resilience_crm.guard.backends.postgresql"},
        },
        CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
        RESILIENCE_CRM={"STORE": "memory", "PROTECT_QUERIES": {"guarded": "crm.db"}},
        USE_TZ=True,
    )
    django.setup()
    from django.core.management import call_command  # only once settings exist

    call_command("migrate", verbosity=0)


def nothing() -> None:
    pass


def guard_alone_us(statements: int) -> float:
    from resilience_crm.guard import gate

    started = time.perf_counter_ns()
    for _ in range(statements):
        gate.guarded("crm.db", nothing)
    return (time.perf_counter_ns() - started) / statements / 1000


def per_statement_us(alias: str, statements: int) -> float:
    from django.db import connections

    with connections[alias].cursor() as cursor:
        started = time.perf_counter_ns()
        for i in range(statements):
            cursor.execute(f"SELECT id, name FROM {TABLE} WHERE id = %s", [i % ROWS])  # noqa: S608
            cursor.fetchone()
        return (time.perf_counter_ns() - started) / statements / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--statements", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=101)
    args = parser.parse_args()
    setup()
    from django.db import connections

    from resilience_crm import get_breaker

    with connections["plain"].cursor() as cursor:
        cursor.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id integer PRIMARY KEY, name text)")
        fill = f"INSERT INTO {TABLE} SELECT i, 'name ' || i FROM generate_series(0, %s) i"  # noqa: S608
        cursor.execute(fill + " ON CONFLICT DO NOTHING", [ROWS - 1])
    for alias in ("plain", "guarded"):
        per_statement_us(alias, args.statements)  # warm up: connect, plan, caches
    breaker = get_breaker("crm.db")
    calls_before = breaker.snapshot()["calls"]

    times: dict[str, list[float]] = {"plain": [], "guarded": [], "alone": []}
    for round_ in range(args.rounds):
        order = ("plain", "guarded") if round_ % 2 == 0 else ("guarded", "plain")
        for alias in order:
            times[alias].append(per_statement_us(alias, args.statements))
        times["alone"].append(guard_alone_us(args.statements))
    counted = breaker.snapshot()["calls"] - calls_before
    assert counted == 2 * args.rounds * args.statements, "the guard did not see every call"

    plain, guarded = (statistics.median(times[alias]) for alias in ("plain", "guarded"))
    # Each round's two runs are back to back: their difference is the least disturbed by
    # whatever else the machine does meanwhile.
    difference = statistics.median(g - p for p, g in zip(times["plain"], times["guarded"],
                                                         strict=True))
    alone = statistics.median(times["alone"])
    print(f"primary-key SELECT, {args.statements} statements x {args.rounds} interleaved"
          f" rounds, median per statement")
    print(f"  plain backend          {plain:8.2f} us")
    print(f"  guarded backend        {guarded:8.2f} us  (circuit {breaker.name}:"
          f" {counted} calls counted)")
    print(f"  SELECT difference      {difference:8.2f} us = {difference / plain:.1%} of the"
          f" SELECT (median of the rounds' differences)")
    print(f"  the guard's own cost   {alone:8.2f} us = {alone / plain:.1%} of the SELECT"
          f" (target <= {TARGET:.0%}: {'met' if alone <= TARGET * plain else 'missed'})")


if __name__ == "__main__":
    main()
