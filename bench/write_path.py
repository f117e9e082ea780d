"""Throughput of the demo API (list, detail, create, update, delete) against the same
endpoints as plain DRF, in one run, as ratios.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/rcrm_bench \\
    REDIS_URL=redis://127.0.0.1:6379/1 .venv/bin/python bench/write_path.py \\
        [--rounds N] [--batch N] [--kinds create,update,...] [--plots DIR]

Ours is ``/api/contacts/`` of the demo with all its protection on: the resilience
middleware, token checks through ``protected`` (cached), ``TierRateThrottle`` on Redis (at a
limit the run cannot reach), creates through ``protected.submit`` with an
``Idempotency-Key``, updates and deletes through ``protected.write``, the read cache
invalidated on each; lists and details through ``protected.read`` (from its cache once
warm). The peer is a ``ModelViewSet`` over the same model and serializer with DRF's stock
``TokenAuthentication`` (one query per request), no throttle, under the demo's middleware
minus ours (bench/plain_drf.py). Both go through Django's full handler (the test client) in
this process, on the same PostgreSQL (the demo's pooled connection settings) and Redis.

Each round times ``--batch`` requests of one kind on each side, the sides taking turns
request by request (which goes first alternates by round), after a warm-up; the run prints
each side's median throughput and the median of the per-round ratios (ours / plain DRF),
and draws each request's latency by kind and side in ``--plots`` (default docs/img/),
``api.svg``. The database named by ``DATABASE_URL`` is created if missing and migrated; its
contacts and idempotency rows are deleted at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/rcrm_bench")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/1")
os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only-secret-key-not-for-production")
os.environ["DJANGO_DEBUG"] = "0"
os.environ["DJANGO_SETTINGS_MODULE"] = "crm_demo.settings"

import django  # noqa: E402
import plots  # noqa: E402  (bench/ is on sys.path)
import tier_rows  # noqa: E402
from chaos import create_database  # noqa: E402
from django.conf import settings  # noqa: E402

OURS, PLAIN = "resilience_crm", "plain DRF"  # as in plain_drf, imported once Django is set up
KINDS = ("list", "detail", "create", "update", "delete")


def setup() -> None:
    create_database(os.environ["DATABASE_URL"])
    settings.CACHES["default"]["KEY_PREFIX"] = "rcrm-bench-write"
    settings.RESILIENCE_CRM = {
        "STORE": "redis",
        # The limiter decides every request, at a limit the run cannot reach.
        "TIERS": {"free": {"read": "100000000/min", "write": "100000000/min"}},
        **({"AUTH_FAILURES": None} if os.environ.get("BENCH_NO_AUTH_FAILURES") else {}),
    }
    settings.ROOT_URLCONF = "plain_drf"
    settings.ALLOWED_HOSTS = ["testserver"]
    settings.LOGGING = {"version": 1, "disable_existing_loggers": False,
                        "loggers": {"resilience_crm": {"level": "ERROR"}}}
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    tier_rows.write(settings.RESILIENCE_CRM["TIERS"])


#: What each kind of request is, for the plot.
METHODS = {"list": "GET /contacts/ (page of 25)", "detail": "GET /contacts/<id>/",
           "create": "POST /contacts/", "update": "PATCH /contacts/<id>/",
           "delete": "DELETE /contacts/<id>/"}


class Workload:
    """Requests of one kind for each side; ``prepare(side, n)`` runs untimed before a batch
    (the targets of updates and deletes, new each round; those of details, made once, so
    the demo's read cache holds them after the warm-up), ``request(side, i)`` is timed."""

    def __init__(self, sides: dict[str, object]) -> None:
        self.sides = sides
        self.serial = 0
        self.run = uuid.uuid4().hex[:8]  # idempotency keys no earlier run used
        self.targets: dict[str, list[int]] = {OURS: [], PLAIN: []}
        self.details: dict[str, list[int]] = {OURS: [], PLAIN: []}

    def url(self, side: str) -> str:
        return "/api/contacts/" if side == OURS else "/plain/contacts/"

    def prepare(self, kind: str, side: str, n: int) -> None:
        from crm_demo.crm.models import Contact

        if kind == "detail" and self.details[side]:
            return  # the same contacts every round: read from the cache once warm
        if kind in ("detail", "update", "delete"):
            made = Contact.objects.bulk_create(
                Contact(name=f"Target {i}", email="t@example.com") for i in range(n))
            (self.details if kind == "detail" else self.targets)[side] = [c.pk for c in made]

    def request(self, kind: str, side: str, i: int) -> None:
        client = self.sides[side]
        self.serial += 1
        if kind == "list":
            response = client.get(self.url(side))  # type: ignore[attr-defined]
            expected = 200
        elif kind == "detail":
            target = self.details[side][i % len(self.details[side])]
            response = client.get(f"{self.url(side)}{target}/")  # type: ignore[attr-defined]
            expected = 200
        elif kind == "create":
            response = client.post(  # type: ignore[attr-defined]
                self.url(side), {"name": f"C{self.serial}", "email": "c@example.com"},
                content_type="application/json",
                HTTP_IDEMPOTENCY_KEY=f"bench-{self.run}-{self.serial}")
            expected = 201
        elif kind == "update":
            target = self.targets[side][i % len(self.targets[side])]
            response = client.patch(  # type: ignore[attr-defined]
                f"{self.url(side)}{target}/", {"company": f"Co {self.serial}"},
                content_type="application/json")
            expected = 200
        else:
            response = client.delete(  # type: ignore[attr-defined]
                f"{self.url(side)}{self.targets[side][i]}/")
            expected = 204
        assert response.status_code == expected, (side, kind, response.status_code,
                                                  response.content[:300])


def run(kind: str, work: Workload, rounds: int, batch: int,
        now: Callable[[], float] = time.perf_counter,
        ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Requests per second of each side, per round, and each request's seconds; the first
    round warms up, untimed. Within a round the sides take turns request by request (which
    goes first alternates by round): on a machine shared with other work, a burst of load
    then falls on both sides alike, where batches of one side at a time gave one of them all
    of it (one run's round ratios spread from 0.4x to 1.1x)."""
    rates: dict[str, list[float]] = {OURS: [], PLAIN: []}
    latencies: dict[str, list[float]] = {OURS: [], PLAIN: []}
    for number in range(rounds + 1):
        order = (OURS, PLAIN) if number % 2 else (PLAIN, OURS)
        took: dict[str, list[float]] = {side: [] for side in order}
        for side in order:
            work.prepare(kind, side, batch)
        for i in range(batch):
            for side in order:
                started = now()
                work.request(kind, side, i)
                took[side].append(now() - started)
        if number:
            for side in order:
                rates[side].append(batch / sum(took[side]))
                latencies[side] += took[side]
    return rates, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help=f"which requests, in order (of {', '.join(KINDS)})")
    parser.add_argument("--plots", type=Path, default=plots.IMAGES, help="where to write SVG")
    args = parser.parse_args()
    kinds = [kind for kind in args.kinds.split(",") if kind]
    assert set(kinds) <= set(KINDS), f"--kinds: {args.kinds}"
    setup()
    import plain_drf
    from django.db import connection

    from crm_demo.crm.models import Contact
    from resilience_crm.models import QueuedWrite

    work = Workload(plain_drf.clients("bench-writer"))
    print(f"requests per second, {args.rounds} rounds x {args.batch} requests per side, "
          f"sides taking turns per request (PostgreSQL {connection.pg_version}, "
          f"{settings.REDIS_URL})")
    print(f"  {'':8} {OURS + ' median':>22} {PLAIN + ' median':>18} {'ratio (median)':>16}"
          f" {'ratio range':>14}")
    panels: list[plots.Panel] = []
    try:
        for kind in kinds:
            rates, latencies = run(kind, work, args.rounds, args.batch)
            ratios = [o / p for o, p in zip(rates[OURS], rates[PLAIN], strict=True)]
            print(f"  {kind:8} {statistics.median(rates[OURS]):18.0f} /s "
                  f"{statistics.median(rates[PLAIN]):14.0f} /s "
                  f"{statistics.median(ratios):15.2f}x {min(ratios):6.2f}-{max(ratios):.2f}x")
            panels.append((f"{kind}: {METHODS[kind]}, ours / plain DRF "
                           f"{statistics.median(ratios):.2f}x in throughput", latencies))
    finally:
        Contact.objects.all().delete()
        QueuedWrite.objects.all().delete()
    plots.save(plots.latency("The demo API, all its protection on, beside plain DRF",
                             panels),
               args.plots / "api.svg")


if __name__ == "__main__":
    main()
