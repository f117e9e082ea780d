"""How long a protected read takes against its ``call_timeout`` (DESIGN.md, invariant 13: at
most the budget plus 100 ms) while PostgreSQL fails in each way a bad day brings, with
psycopg's pool (the demo's settings) and without.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/deadlines.py [--calls N] [--call-timeout S]

The database sits behind the fault proxy (``crm_demo/crm/faults.py``):

- refused: connections refused (a crashed host);
- reset: each read is reset 0.6 s in, and new connections are never answered;
- blackholed: the open connections and new ones are never answered;
- pool exhausted: other threads hold every pooled connection;
- slow query: ``pg_sleep(10)``, stopped by the budget's ``statement_timeout``.

Every read runs on a thread of its own; one still running after ``--give-up`` seconds is
counted as hung (and freed by resetting its connection). The run prints p50, p99 and max per
fault, the budget, and how many reads went over it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dj_database_url  # noqa: E402
import django  # noqa: E402
from django.conf import settings  # noqa: E402

from crm_demo.crm.faults import FaultProxy  # noqa: E402

DATABASE_URL = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
#: The pool of the "pooled" alias: the demo's settings, with room for a few readers.
POOL = {"min_size": 4, "max_size": 4, "timeout": 1.0}
#: What a call may take beyond its budget (DESIGN.md, invariant 13).
SLACK = 0.1
FAULTS = ("refused", "reset", "blackholed", "pool exhausted", "slow query")


def setup(proxy_port: int, call_timeout: float) -> None:
    database = {**dj_database_url.parse(DATABASE_URL), "HOST": "127.0.0.1", "PORT": proxy_port}
    settings.configure(
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "resilience_crm"],
        DATABASES={
            "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
            "pooled": {**database, "OPTIONS": {"connect_timeout": 2, "pool": POOL}},
            "unpooled": {**database, "OPTIONS": {"connect_timeout": 2}},
        },
        CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
        RESILIENCE_CRM={"STORE": "memory", "CIRCUITS": {"crm.read": {
            "call_timeout": call_timeout, "failure_threshold": 0, "failure_rate_threshold": 0,
            "slow_call_rate_threshold": 0}}},  # never open: every read meets the fault
        USE_TZ=True,
    )
    django.setup()


def query(alias: str, sql: str) -> Callable[[], object]:
    from django.db import connections

    def run() -> object:
        with connections[alias].cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchone()
    return run


def read(alias: str, key: str, fn: Callable[[], object], proxy: FaultProxy,
         give_up: float) -> float | None:
    """Seconds one read took on a thread of its own (which gives its connection back, as a
    request does), or ``None`` when it was still running after ``give_up``."""
    from django.db import connections

    from resilience_crm.exceptions import ResilienceError
    from resilience_crm.provider.facade import protected

    took: list[float] = []

    def run() -> None:
        started = time.monotonic()
        with contextlib.suppress(ResilienceError):
            protected.read(key, fn, using=alias)  # a key of its own: never cached
        took.append(time.monotonic() - started)
        connections.close_all()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(give_up)
    if thread.is_alive():
        proxy.drop()  # free it: its connection is reset
        thread.join()
        return None
    return took[0]


def measure(fault: str, alias: str, proxy: FaultProxy, calls: int,
            give_up: float) -> list[float | None]:
    from django.db import connections

    proxy.restore()
    connections[alias].close_pool()  # a pool of its own for each fault, filled
    assert read(alias, f"{alias}:{fault.replace(' ', '-')}:warm", query(alias, "SELECT 1"), proxy,
                give_up) is not None
    pool = connections[alias].pool
    if pool is not None:
        pool.wait(30)
    each: Callable[[], object] = lambda: None  # noqa: E731
    fn = query(alias, "SELECT 1")
    release = threading.Event()
    if fault == "refused":
        proxy.cut()
    elif fault == "reset":
        fn = reset_after(alias, proxy, query(alias, "SELECT pg_sleep(0.6)"))
        each = lambda: (proxy.restore(), pool and pool.wait(30))  # noqa: E731
    elif fault == "blackholed":
        proxy.stalled = True
    elif fault == "pool exhausted":
        hold_all(alias, release)
    elif fault == "slow query":
        fn = query(alias, "SELECT pg_sleep(10)")
    try:
        durations = []
        for n in range(calls):
            each()
            key = f"{alias}:{fault.replace(' ', '-')}:{n}"  # a cache key: no spaces
            durations.append(read(alias, key, fn, proxy, give_up))
        return durations
    finally:
        release.set()
        proxy.restore()


def reset_after(alias: str, proxy: FaultProxy, first: Callable[[], object]
                ) -> Callable[[], object]:
    def fn() -> object:
        if not proxy.stalled:  # the first attempt of each read
            first()
            proxy.stalled = True
            proxy.drop()
        return query(alias, "SELECT 1")()
    return fn


def hold_all(alias: str, release: threading.Event) -> None:
    from django.db import connections

    held = threading.Barrier(POOL["max_size"] + 1)

    def hold() -> None:
        connections[alias].ensure_connection()
        held.wait()
        release.wait()
        connections.close_all()

    for _ in range(POOL["max_size"]):
        threading.Thread(target=hold, daemon=True).start()
    held.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20, help="reads per fault")
    parser.add_argument("--call-timeout", type=float, default=2.0)
    parser.add_argument("--give-up", type=float, default=10.0,
                        help="seconds after which a read counts as hung")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the pool's and the app's complaints about the faults
    budget = args.call_timeout
    server = dj_database_url.parse(DATABASE_URL)
    with FaultProxy(server["HOST"] or "127.0.0.1", int(server["PORT"] or 5432)) as proxy:
        setup(proxy.port, budget)
        print(f"protected.read, call_timeout {budget:.1f} s (limit {budget + SLACK:.1f} s), "
              f"{args.calls} reads per fault")
        print(f"  {'alias':9} {'fault':15} {'p50':>7} {'p99':>7} {'max':>7}  over  hung")
        for alias in ("pooled", "unpooled"):
            for fault in FAULTS:
                if fault == "pool exhausted" and alias == "unpooled":
                    continue
                took = measure(fault, alias, proxy, args.calls, args.give_up)
                ended = sorted(t for t in took if t is not None)
                hung = len(took) - len(ended)
                over = sum(1 for t in ended if t > budget + SLACK) + hung
                p50 = statistics.median(ended) if ended else float("nan")
                p99 = ended[max(0, int(len(ended) * 0.99) - 1)] if ended else float("nan")
                slowest = ended[-1] if ended else float("nan")
                print(f"  {alias:9} {fault:15} {p50:6.3f}s {p99:6.3f}s {slowest:6.3f}s "
                      f"{over:5} {hung:5}")


if __name__ == "__main__":
    main()
