"""Throughput of the demo API's writes (create, update, delete) against the same endpoints as
plain DRF, in one run, as ratios.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/rcrm_bench \\
    REDIS_URL=redis://127.0.0.1:6379/1 .venv/bin/python bench/write_path.py [--rounds N]

Ours is ``/api/contacts/`` of the demo with all its protection on: the resilience
middleware, token checks through ``protected`` (cached), ``TierRateThrottle`` on Redis (at a
limit the run cannot reach), creates through ``protected.submit`` with an
``Idempotency-Key``, updates and deletes through ``protected.write``, the read cache
invalidated on each. The peer is a ``ModelViewSet`` over the same model and serializer with
DRF's stock ``TokenAuthentication`` (one query per request), no throttle, under the demo's
middleware minus ours. Both go through Django's full handler (the test client) in this
process, on the same PostgreSQL (the demo's pooled connection settings) and Redis.

Each round times ``--batch`` requests of one kind on each side, the sides taking turns
(which goes first alternates), after a warm-up; the run prints each side's median
throughput and the median of the per-round ratios (ours / plain DRF). The database named by
``DATABASE_URL`` is created if missing and migrated; its contacts and idempotency rows are
deleted at the end.
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
import psycopg  # noqa: E402
from django.conf import settings  # noqa: E402

OURS, PLAIN = "resilience_crm", "plain DRF"
urlpatterns: list = []  # filled in by setup(): the views need Django set up


def create_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def setup() -> None:
    create_database(os.environ["DATABASE_URL"])
    settings.CACHES["default"]["KEY_PREFIX"] = "rcrm-bench-write"
    settings.RESILIENCE_CRM = {
        "STORE": "redis",
        # The limiter decides every request, at a limit the run cannot reach.
        "TIERS": {"free": {"read": "100000000/min", "write": "100000000/min"}},
        **({"AUTH_FAILURES": None} if os.environ.get("BENCH_NO_AUTH_FAILURES") else {}),
    }
    settings.ROOT_URLCONF = __name__
    settings.ALLOWED_HOSTS = ["testserver"]
    settings.LOGGING = {"version": 1, "disable_existing_loggers": False,
                        "loggers": {"resilience_crm": {"level": "ERROR"}}}
    django.setup()
    from django.core.management import call_command
    from django.urls import include, path
    from rest_framework import routers, viewsets
    from rest_framework.authentication import TokenAuthentication
    from rest_framework.permissions import IsAuthenticated

    from crm_demo.crm.models import Contact
    from crm_demo.crm.serializers import ContactSerializer

    class PlainContacts(viewsets.ModelViewSet):
        queryset = Contact.objects.all()
        serializer_class = ContactSerializer
        authentication_classes = [TokenAuthentication]
        permission_classes = [IsAuthenticated]
        throttle_classes: list = []

    router = routers.SimpleRouter()
    router.register("contacts", PlainContacts, basename="plain-contacts")
    urlpatterns[:] = [path("plain/", include(router.urls)), path("", include("crm_demo.urls"))]
    call_command("migrate", verbosity=0)


def clients() -> dict[str, object]:
    """A client per side with the bench user's token; the plain side's handler is built
    without the resilience middleware."""
    from django.contrib.auth.models import User
    from django.test import Client, override_settings
    from rest_framework.authtoken.models import Token

    user, _ = User.objects.get_or_create(username="bench-writer")
    token, _ = Token.objects.get_or_create(user=user)
    ours = Client(HTTP_AUTHORIZATION=f"Token {token.key}")
    plain = Client(HTTP_AUTHORIZATION=f"Token {token.key}")
    middleware = [m for m in settings.MIDDLEWARE if not m.startswith("resilience_crm.")]
    with override_settings(MIDDLEWARE=middleware):
        assert plain.get("/plain/contacts/").status_code == 200  # builds its handler now
    assert ours.get("/api/contacts/").status_code == 200
    return {OURS: ours, PLAIN: plain}


class Workload:
    """Requests of one kind for each side; ``prepare(side, n)`` runs untimed before a batch
    (the deletes' contacts), ``request(side, i)`` is timed."""

    def __init__(self, sides: dict[str, object]) -> None:
        self.sides = sides
        self.serial = 0
        self.run = uuid.uuid4().hex[:8]  # idempotency keys no earlier run used
        self.targets: dict[str, list[int]] = {OURS: [], PLAIN: []}

    def url(self, side: str) -> str:
        return "/api/contacts/" if side == OURS else "/plain/contacts/"

    def prepare(self, kind: str, side: str, n: int) -> None:
        from crm_demo.crm.models import Contact

        if kind in ("update", "delete"):
            made = Contact.objects.bulk_create(
                Contact(name=f"Target {i}", email="t@example.com") for i in range(n))
            self.targets[side] = [c.pk for c in made]

    def request(self, kind: str, side: str, i: int) -> None:
        client = self.sides[side]
        self.serial += 1
        if kind == "create":
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
        now: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Requests per second of each side, per round; the first round warms up, untimed."""
    rates: dict[str, list[float]] = {OURS: [], PLAIN: []}
    for number in range(rounds + 1):
        order = (OURS, PLAIN) if number % 2 else (PLAIN, OURS)
        for side in order:
            work.prepare(kind, side, batch)
            started = now()
            for i in range(batch):
                work.request(kind, side, i)
            if number:
                rates[side].append(batch / (now() - started))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    setup()
    from django.db import connection

    from crm_demo.crm.models import Contact
    from resilience_crm.models import QueuedWrite

    work = Workload(clients())
    print(f"writes per second, {args.rounds} rounds x {args.batch} requests per side, "
          f"sides taking turns (PostgreSQL {connection.pg_version}, {settings.REDIS_URL})")
    print(f"  {'':8} {OURS + ' median':>22} {PLAIN + ' median':>18} {'ratio (median)':>16}"
          f" {'ratio range':>14}")
    try:
        for kind in ("create", "update", "delete"):
            rates = run(kind, work, args.rounds, args.batch)
            ratios = [o / p for o, p in zip(rates[OURS], rates[PLAIN], strict=True)]
            print(f"  {kind:8} {statistics.median(rates[OURS]):18.0f} /s "
                  f"{statistics.median(rates[PLAIN]):14.0f} /s "
                  f"{statistics.median(ratios):15.2f}x {min(ratios):6.2f}-{max(ratios):.2f}x")
    finally:
        Contact.objects.all().delete()
        QueuedWrite.objects.all().delete()


if __name__ == "__main__":
    main()
