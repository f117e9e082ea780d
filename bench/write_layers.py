"""Where a write's time goes, layer by layer, on each side of ``bench/write_path.py``: wall
time inside each layer (inclusive, so the layers nest), per request, the median of rounds
in which the sides take turns request by request.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/rcrm_bench \\
    REDIS_URL=redis://127.0.0.1:6379/1 .venv/bin/python bench/write_layers.py [create|update|delete]

Each layer is timed by wrapping its function (a few microseconds each, on both sides); the
database's round trips are timed in psycopg's ``execute`` and ``commit``, labelled by the
statement's first word and table, Redis's in the app's script and command calls.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time
from collections.abc import Callable
from typing import Any

import write_path as bench  # bench/ is on sys.path

#: Seconds spent per label in the current request batch.
spent: dict[str, float] = collections.defaultdict(float)


def timed(owner: Any, name: str, label: str | Callable[..., str]) -> None:
    """Count the time inside ``owner.name`` under ``label`` (or ``label(*args)``)."""
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            key = label if isinstance(label, str) else label(*args)
            spent[key] += time.perf_counter() - started

    setattr(owner, name, wrapper)


def statement(cursor: Any, query: Any, *args: Any) -> str:
    """``db round trip: [BEGIN+SET ]INSERT crm_contact[ +COMMIT]``, say."""
    parts = str(query).split("; ")
    commit = len(parts) > 1 and parts[-1].strip() == "COMMIT"
    words = (parts[-2] if commit else parts[-1]).replace('"', " ").split()
    table = next((w for w in words if w.startswith(("crm_", "resilience_", "authtoken_"))), "")
    folded = "BEGIN+SET " if parts[0].startswith("BEGIN") else ""
    return f"db round trip: {folded}{words[0]} {table}{' +COMMIT' if commit else ''}"


def instrument() -> None:
    import psycopg
    import redis.client
    from django.test.client import ClientHandler
    from rest_framework import authentication, serializers, views

    import crm_demo.crm.authentication as token_checks
    import resilience_crm.lua as lua
    import resilience_crm.provider.cache as cache
    import resilience_crm.provider.calls as calls
    import resilience_crm.provider.facade as facade
    import resilience_crm.provider.queue as queue
    import resilience_crm.ratelimit.auth_failures as auth_failures
    import resilience_crm.ratelimit.limiter as limiter

    timed(ClientHandler, "__call__", "request, in Django's handler")
    timed(views.APIView, "initial", "DRF initial (auth, permissions, throttle)")
    timed(authentication.TokenAuthentication, "authenticate_credentials", "token check (DRF)")
    timed(token_checks.ProtectedTokenAuthentication, "authenticate_credentials",
          "token check (protected.read)")
    timed(auth_failures, "refused", "auth-failure peek (middleware)")
    timed(limiter, "check", "limiter decision (throttle)")
    timed(serializers.Serializer, "is_valid", "serializer validation")
    timed(facade.Provider, "submit", "protected.submit")
    timed(calls.Engine, "_call", "protected call (engine)")
    timed(queue, "_record", "idempotency row (ORM + round trip)")
    timed(facade.Provider, "_invalidate", "cache invalidation")
    timed(psycopg.ClientCursor, "execute", statement)
    timed(psycopg.Connection, "commit", "db round trip: COMMIT")
    timed(redis.client.Pipeline, "execute", "redis round trip: pipeline")
    timed(cache, "pipelined", "redis round trip: commands (INCR + XLEN)")
    timed(lua.LuaScript, "__call__", "redis round trip: script (EVALSHA)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", nargs="?", default="create",
                        choices=("create", "update", "delete"))
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    bench.setup()
    import plain_drf

    from crm_demo.crm.models import Contact
    from resilience_crm.models import QueuedWrite

    work = bench.Workload(plain_drf.clients("bench-writer"))
    instrument()
    rounds: dict[str, list[dict[str, float]]] = {bench.OURS: [], bench.PLAIN: []}
    try:
        for number in range(args.rounds + 1):
            order = (bench.OURS, bench.PLAIN) if number % 2 else (bench.PLAIN, bench.OURS)
            per_side: dict[str, dict[str, float]] = {side: {} for side in order}
            for side in order:
                work.prepare(args.kind, side, args.batch)
            for i in range(args.batch):
                for side in order:
                    spent.clear()
                    work.request(args.kind, side, i)
                    for label, seconds in spent.items():
                        per_side[side][label] = per_side[side].get(label, 0.0) + seconds
            if number:  # the first round warms up
                for side in order:
                    rounds[side].append(per_side[side])
    finally:
        Contact.objects.all().delete()
        QueuedWrite.objects.all().delete()
    for side, measured in rounds.items():
        print(f"{side}, {args.kind}: us per request (median of {args.rounds} rounds"
              f" x {args.batch})")
        labels = {label for one in measured for label in one}
        medians = {label: statistics.median(one.get(label, 0.0) for one in measured)
                   / args.batch * 1e6 for label in labels}
        for label, value in sorted(medians.items(), key=lambda item: -item[1]):
            if value >= 1:
                print(f"  {value:7.0f}  {label}")


if __name__ == "__main__":
    main()
