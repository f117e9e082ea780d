"""The database limiter store (PostgreSQL, no Redis): exact across real processes with
requests that share some of their keys, all or none, a refusal recorded, full buckets swept
in bounded batches, ``auto``'s choice, and an unreachable or silent database turned into the
limiter's fallback within a bounded wait, never an error."""

from __future__ import annotations

import io
import logging
import time
import uuid
from collections import Counter
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connections

import resilience_crm.ratelimit.limiter as limiter
import resilience_crm.ratelimit.stores.database as database
from resilience_crm import flusher, metrics
from resilience_crm.exceptions import StoreUnavailable
from resilience_crm.ratelimit import gcra
from resilience_crm.ratelimit.gcra import US, Limit
from resilience_crm.ratelimit.principals import Principal
from resilience_crm.ratelimit.stores.database import DatabaseLimiterStore
from tests.databases import CLOSED_PORT, extra_database
from tests.processes import ctx, run_processes
from tests.proxy import Proxy

pytestmark = pytest.mark.postgres

NOW = 1_700_000_000 * US


@pytest.fixture
def store(postgres, db) -> DatabaseLimiterStore:
    return DatabaseLimiterStore()


def test_peek_answers_like_evaluate_and_charges_nothing(store) -> None:
    limits = [Limit(store.key(uuid.uuid4().hex, "read:60"), "p", 3, 60)]
    for _ in range(2):
        store.evaluate(limits, now_us=NOW)
    peeked = store.peek(limits, now_us=NOW)
    assert peeked == store.peek(limits, now_us=NOW)  # charged nothing
    assert peeked == store.evaluate(limits, now_us=NOW)
    assert store.peek(limits, now_us=NOW)[0] is False


def test_a_refusal_charges_no_limit_and_is_recorded_on_the_limit_that_refused(store) -> None:
    who = uuid.uuid4().hex
    tight, loose = (Limit(store.key(who, "read:60"), "tight", 1, 60),
                    Limit(store.key(who, "e:x:read:60"), "loose", 10, 60))
    assert store.evaluate([tight, loose], now_us=NOW)[0]
    allowed, (refused, untouched) = store.evaluate([tight, loose], now_us=NOW + 1)
    assert not allowed and not refused.conform and untouched.conform
    assert untouched.remaining == 9  # the loose limit was charged once, not twice
    assert store.inspect([tight, loose]).tats == [NOW + 60 * US, NOW + 6 * US]
    assert store.refusals([tight, loose]) == [NOW + 1, None]


def test_a_fresh_key_refused_outright_leaves_nothing_charged(store) -> None:
    limit = Limit(store.key(uuid.uuid4().hex, "read:60"), "p", 2, 60)
    allowed, [outcome] = store.evaluate([limit], cost=3, now_us=NOW)
    assert not allowed and outcome.remaining == 2 and outcome.retry_us == 30 * US
    assert store.inspect([limit]).tats == [None]
    assert store.evaluate([limit], cost=2, now_us=NOW)[0]


def _decide(index: int, barrier: Any, admitted: Any, keys: dict[str, str], rounds: int) -> None:
    """Half the processes ask for [shared, own], half for [own, shared] (the opposite lock
    order, were the rows locked in request order); every limit is daily, so only the limits
    decide."""
    store = DatabaseLimiterStore()
    shared = Limit(keys["shared"], "shared", 50, 86_400)
    own = Limit(keys[f"own{index % 2}"], "own", 1000, 86_400)
    limits = [shared, own] if index % 2 else [own, shared]
    barrier.wait(timeout=60)
    count = sum(store.evaluate(limits)[0] for _ in range(rounds))
    admitted.put((index % 2, count))


@pytest.mark.slow
def test_processes_admit_exactly_the_limit_with_keys_locked_in_one_order(
        postgres, transactional_db) -> None:
    keys = {name: f"rl:{{{uuid.uuid4().hex}}}:{name}" for name in ("shared", "own0", "own1")}
    processes, rounds = 8, 20
    barrier, admitted = ctx.Barrier(processes), ctx.SimpleQueue()
    connections.close_all()  # not to be shared with the children
    run_processes(_decide, barrier, admitted, keys, rounds, count=processes, timeout=120)
    counts: Counter[int] = Counter()
    while not admitted.empty():
        side, count = admitted.get()
        counts[side] += count
    assert sum(counts.values()) == 50  # of 160 requests, exactly the shared limit
    store = DatabaseLimiterStore()
    own = [Limit(keys[f"own{side}"], "own", 1000, 86_400) for side in (0, 1)]
    shared = Limit(keys["shared"], "shared", 50, 86_400)
    _, outcomes = store.peek([*own, shared], cost=0)
    # Each side's own limit was charged exactly for the requests of that side admitted.
    assert [o.remaining for o in outcomes] == [1000 - counts[0], 1000 - counts[1], 0]


def test_sweep_deletes_full_buckets_in_bounded_batches_and_keeps_the_rest(store) -> None:
    store.clear()
    now = store.inspect([]).now_us
    full = [Limit(f"rl:{{s}}:full{i}", "p", 10, 1) for i in range(25)]
    for limit in full:  # charged a day ago: full again long since
        store.evaluate([limit], now_us=now - 86_400 * US)
    live = Limit("rl:{s}:live", "p", 10, 3600)
    store.evaluate([live])
    refused = Limit("rl:{s}:refused", "p", 1, 1)
    store.evaluate([refused], now_us=now - 2 * US)
    store.evaluate([refused], now_us=now - 2 * US)  # refused just now: kept for operators
    assert store.sweep(batch=10, batches=2) == 20  # at most two statements of ten
    assert store.sweep(batch=10, batches=2) == 5
    assert store.sweep(batch=10, batches=2) == 0
    assert store.inspect([live]).tats[0] is not None
    assert store.refusals([refused]) == [now - 2 * US]


def test_auto_picks_the_database_on_postgresql_and_says_so_once(settings, caplog,
                                                                postgres, db) -> None:
    settings.RESILIENCE_CRM = {"RATELIMIT_STORE": "auto"}
    assert limiter.store_path() == limiter.STORE_ALIASES["database"]
    settings.RESILIENCE_CRM = {"RATELIMIT_STORE": "auto", "CACHE_ALIAS": "redis"}
    if "redis" in settings.CACHES:
        assert limiter.store_path() == limiter.STORE_ALIASES["redis"]
    settings.RESILIENCE_CRM = {"RATELIMIT_STORE": "auto"}
    with caplog.at_level(logging.INFO, logger="resilience_crm.ratelimit.limiter"):
        limiter.clear()
        assert isinstance(limiter.get_store(), DatabaseLimiterStore)
        assert limiter.get_store() is limiter.get_store()
    said = [r.getMessage() for r in caplog.records if "Rate limits are kept" in r.getMessage()]
    assert said == ["Rate limits are kept by DatabaseLimiterStore (RATELIMIT_STORE 'auto')."]


def test_the_store_decides_on_the_default_database_while_database_alias_names_none(
        settings, postgres, db) -> None:
    """``DATABASE_ALIAS`` naming no database (check E012): the store decides on the default
    one, where the limiter looked for PostgreSQL when it chose it."""
    settings.RESILIENCE_CRM = {"DATABASE_ALIAS": "no_such_alias", "RATELIMIT_STORE": "auto"}
    assert limiter.store_path() == limiter.STORE_ALIASES["database"]
    store = DatabaseLimiterStore()
    limit = Limit(store.key(uuid.uuid4().hex, "read:60"), "p", 1, 60)
    assert store.evaluate([limit], now_us=NOW)[0]
    assert not store.evaluate([limit], now_us=NOW)[0]


def test_a_database_that_refuses_connections_is_store_unavailable(settings, postgres,
                                                                  db) -> None:
    down = {**connections["default"].settings_dict, "HOST": "127.0.0.1", "PORT": CLOSED_PORT}
    with extra_database("limits_down", down), pytest.raises(StoreUnavailable):
        DatabaseLimiterStore("limits_down").evaluate([Limit("rl:{x}:y", "p", 1, 1)])


@pytest.mark.slow
def test_a_silent_database_falls_back_within_the_timeout_and_counts_it(
        settings, postgres, transactional_db) -> None:
    default = connections["default"].settings_dict
    with Proxy(default["HOST"] or "127.0.0.1", int(default["PORT"] or 5432)) as proxy:
        proxied = {**default, "HOST": "127.0.0.1", "PORT": str(proxy.port)}
        with extra_database("limits_proxied", proxied):
            settings.RESILIENCE_CRM = {
                "RATELIMIT_STORE": "tests.test_ratelimit_database.ProxiedStore",
                "RATELIMIT_STORE_TIMEOUT": 0.3, "TIERS": {"free": {"read": "5/min"}}}
            who = Principal(key="u:silent", tier="free")
            assert limiter.decide(who, "read").source == "store"
            proxy.hold_replies()  # the server answers; nothing reaches the app
            started = time.monotonic()
            decision = limiter.decide(who, "read")
            waited = time.monotonic() - started
            proxy.hold_replies(False)
            assert decision.allowed and decision.source == "fallback"
            assert waited < 5, waited  # the timeout, not TCP's minutes
            assert metrics.value("ratelimit_store_errors") == 1
            assert metrics.value("ratelimit_decisions", op_class="read",
                                 decision="fallback_allowed") == 1
            database.close_connections()


@pytest.mark.slow
def test_a_blackholed_database_is_never_a_500(settings, client, postgres,
                                              transactional_db) -> None:
    """Requests through the throttle while the database store's server accepts connections
    and never answers: fail open -> 200 with the limit headers, fail closed -> 503 with the
    problem body, each within the connect timeout."""
    default = connections["default"].settings_dict
    settings.ROOT_URLCONF = "tests.ratelimit_urls"
    with Proxy(default["HOST"] or "127.0.0.1", int(default["PORT"] or 5432)) as proxy:
        proxy.stalled = True
        proxied = {**default, "HOST": "127.0.0.1", "PORT": str(proxy.port)}
        with extra_database("limits_proxied", proxied):
            config = {"RATELIMIT_STORE": "tests.test_ratelimit_database.ProxiedStore",
                      "TIERS": {"anonymous": {"read": "5/min"}}}
            settings.RESILIENCE_CRM = config
            started = time.monotonic()
            opened = client.get("/things/")
            assert time.monotonic() - started < 10  # connect_timeout (2 s), not TCP's
            assert opened.status_code == 200 and opened["RateLimit-Policy"]
            settings.RESILIENCE_CRM = {**config, "FAIL_OPEN": {"read": False}}
            closed = client.get("/things/")
            assert closed.status_code == 503
            assert closed.json()["code"] == "STORE_UNAVAILABLE"
            assert metrics.value("ratelimit_store_errors") == 2  # a settings change: tried again
            database.close_connections()


class ProxiedStore(DatabaseLimiterStore):
    def __init__(self) -> None:
        super().__init__("limits_proxied")


def test_results_are_whole_microseconds_from_the_servers_clock(store) -> None:
    limit = Limit(store.key(uuid.uuid4().hex, "read:7"), "p", 3, 7)  # 7/3 s: rounded up
    before = store.inspect([]).now_us
    allowed, [outcome] = store.evaluate([limit])
    after = store.inspect([]).now_us
    assert allowed and outcome == gcra.Outcome(True, 2, limit.interval_us, 0)
    [tat] = store.inspect([limit]).tats
    assert tat is not None and before + limit.interval_us <= tat <= after + limit.interval_us


def test_the_background_flusher_sweeps_at_most_once_a_minute(settings, store) -> None:
    settings.RESILIENCE_CRM = {"RATELIMIT_STORE": "database"}
    store.clear()
    day_ago = store.inspect([]).now_us - 86_400 * US
    first, second = Limit("rl:{f}:first", "p", 10, 1), Limit("rl:{f}:second", "p", 10, 1)
    store.evaluate([first], now_us=day_ago)
    flusher.run_tasks()  # this process has decided nothing yet: nothing to sweep for it
    assert store.inspect([first]).tats == [day_ago + 100_000]
    limiter.get_store()  # it decides from now on
    first, second = Limit("rl:{f}:first", "p", 10, 1), Limit("rl:{f}:second", "p", 10, 1)
    store.evaluate([first], now_us=day_ago)
    flusher.run_tasks()  # one round of the registered tasks, the sweep among them
    assert store.inspect([first]).tats == [None]
    store.evaluate([second], now_us=day_ago)
    flusher.run_tasks()
    assert store.inspect([second]).tats == [day_ago + 100_000]  # not yet: within the minute


def test_resilience_cleanup_sweeps_the_full_buckets_too(settings, store) -> None:
    settings.RESILIENCE_CRM = {"RATELIMIT_STORE": "database"}
    store.clear()
    day_ago = store.inspect([]).now_us - 86_400 * US
    full = [Limit(f"rl:{{c}}:{i}", "p", 10, 1) for i in range(3)]
    for limit in full:
        store.evaluate([limit], now_us=day_ago)
    out = io.StringIO()
    call_command("resilience_cleanup", stdout=out)
    assert "Deleted 3 rate-limit buckets that are full again." in out.getvalue()
    assert store.inspect(full).tats == [None, None, None]
