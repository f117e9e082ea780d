"""The short chaos run (``make chaos`` runs the full one, bench/chaos.py): the demo under
gunicorn with four workers and a steady mixed load from users of every tier, through a
PostgreSQL cut and then through workers killed with SIGKILL (tests/chaos/scenarios.py,
``SHORT``).

Asserted here is what holds on any machine, however loaded: no acknowledged write lost, none
applied twice, no answer 500, every read answered or refused as documented (429 or 503 with
Retry-After), one alert per incident. The latency and recovery-time targets depend on the
machine: ``make chaos`` prints and checks them (docs/benchmarks.md).
"""

from __future__ import annotations

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import PBKDF2PasswordHasher, make_password
from django.core.cache import caches
from django.core.management import call_command
from django.db import connection
from django.test import override_settings

from tests.chaos import report, scenarios
from tests.chaos.config import resilience
from tests.chaos.run import Stage
from tests.databases import database_url

pytestmark = [pytest.mark.chaos, pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]

KEY_PREFIX = "rcrm-chaos-test"


@pytest.fixture
def stage(transactional_db, postgres, redis_url):
    """The demo seeded in the test database, served and watched; stopped before the test
    database is flushed (a worker still writing would deadlock with the flush)."""
    redis = {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": redis_url,
             "KEY_PREFIX": KEY_PREFIX}
    call_command("seed_demo", contacts=60, conversations=20, no_progress=True, verbosity=0)
    # The suite hashes with MD5, which the workers' settings cannot check: rehash as they do.
    get_user_model().objects.filter(username__startswith="demo-").update(
        password=make_password("demo", hasher=PBKDF2PasswordHasher()))
    with override_settings(CACHES={**settings.CACHES, "chaos": redis},
                           RESILIENCE_CRM=resilience("chaos")):
        try:
            with Stage(database_url(connection.settings_dict), redis_url, KEY_PREFIX) as made:
                yield made
        finally:
            caches["chaos"].delete_pattern("*")


def test_short_chaos_run(stage):
    outcomes = [stage.run(scenario, index) for index, scenario in enumerate(scenarios.SHORT)]
    print("\n\n".join("\n".join(report.describe(outcome)) for outcome in outcomes))

    cut, killed = outcomes
    assert cut.alerts.incidents, "the database cut opened no circuit"
    # The answers per second make chaos plots: the stale ones where the fault is. A few may
    # come before it: on a loaded machine a read can miss its deadline with the database
    # up, and is then served stale, as it should be.
    start, seconds = report.throughput(cut)
    before = sum(counts[1] for n, counts in enumerate(seconds) if start + n < 0)
    after = sum(counts[1] for n, counts in enumerate(seconds) if start + n >= 0)
    assert after > 10 * before, (start, seconds)
    assert any(a.label == "stale" for a in report.during(cut)), "no read was served stale"
    assert killed.killed, "no worker was killed"
    for outcome in outcomes:
        name, answers = outcome.scenario.name, outcome.record.answers
        assert outcome.writes.acknowledged, f"{name}: no write acknowledged"
        assert outcome.writes.lost == 0, (name, outcome.writes.lost_keys)
        assert outcome.writes.duplicated == 0, name
        assert report.server_errors(answers) == 0, name
        unanswered = [a for a in answers if a.kind == "read" and not report.documented(a)]
        assert not unanswered, (name, unanswered[:5])
        assert outcome.alerts.one_per_incident, (name, outcome.alerts)
