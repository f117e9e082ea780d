"""``protected``: reads with fallbacks, retries, deadlines and error classes, against the real
Redis (cache and breaker store) and PostgreSQL."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import (
    DataError,
    IntegrityError,
    OperationalError,
    connection,
    connections,
    transaction,
)
from rest_framework.exceptions import ValidationError as DRFValidationError

from crm_demo.crm.models import Contact, Conversation
from resilience_crm import buckets, get_breaker, metrics
from resilience_crm.exceptions import (
    CircuitOpenError,
    DependencyUnavailable,
    IdempotencyInFlight,
    InvalidWrite,
    OperationTimeout,
    RateLimited,
    RetriesExhausted,
)
from resilience_crm.models import CircuitMetric
from resilience_crm.provider import cache, labels, retries
from resilience_crm.provider.classify import classify, is_conflict, is_permanent, rebuild
from resilience_crm.provider.facade import Provider
from tests.clock import Clock
from tests.proxy import PROXY_SOCKET_TIMEOUT, Proxy

# The breakers live in Redis; a circuit new to it is seeded from its durable row.
pytestmark = [pytest.mark.redis, pytest.mark.django_db]

TTL, STALE_TTL = 60, 600


@pytest.fixture
def provider(settings, redis_cache):
    settings.RESILIENCE_CRM = {
        "STORE": "redis", "CACHE_ALIAS": "redis", "FALLBACK_TTL": TTL,
        "FALLBACK_STALE_TTL": STALE_TTL,
        "CIRCUITS": {"crm.read": {"call_timeout": 2.0}, "crm.rpc": {"call_timeout": 2.0}},
    }
    clock = Clock()
    pauses: list[float] = []
    made = Provider(clock=clock, sleep=pauses.append, rand=lambda: 1.0)
    made.clock, made.pauses = clock, pauses  # type: ignore[attr-defined]
    labels.begin()
    return made


class Source:
    """A function to protect that counts its calls and can fail a number of times."""

    def __init__(self, value="fresh", failures=0, error=None):
        self.value, self.failures, self.calls = value, failures, 0
        self.error = error or ConnectionError("connection reset by peer")

    def __call__(self):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return self.value


def open_circuit(name="crm.read"):
    get_breaker(name).force("forced_open", reason="test")


# Read fallbacks ------------------------------------------------------------------------------

def test_a_fresh_read_comes_from_the_cache(provider):
    source = Source()
    assert provider.read("contacts:list", source, using=None) == "fresh"
    provider.cache.forget_local()  # from Redis, not just this process's layer
    assert provider.read("contacts:list", source, using=None) == "fresh"
    assert source.calls == 1
    assert labels.headers() == {}


def test_an_open_circuit_serves_stale_data_labelled_with_its_age(provider):
    provider.read("contacts:list", Source("v1"), using=None)
    provider.clock.now += TTL + 30
    open_circuit()
    source = Source("v2")
    assert provider.read("contacts:list", source, using=None) == "v1"
    assert source.calls == 0
    assert labels.headers() == {"X-Resilience-Fallback": "stale", "Age": str(TTL + 30)}
    assert metrics.value("calls", circuit="crm.read", outcome="fallback") == 1


def test_stale_data_is_never_served_past_the_bound(provider):
    provider.read("contacts:list", Source("v1"), using=None)
    provider.clock.now += TTL + STALE_TTL + 1
    open_circuit()
    with pytest.raises(CircuitOpenError) as raised:
        provider.read("contacts:list", Source(), using=None)
    assert raised.value.code == "CIRCUIT_OPEN"
    assert labels.headers() == {}


def test_a_degraded_fallback_answers_when_nothing_cached_is_usable(provider):
    open_circuit()
    assert provider.read("contacts:list", Source(), fallback=list, using=None) == []
    assert labels.headers() == {"X-Resilience-Fallback": "degraded"}


def test_a_failing_call_serves_stale_data_after_its_retries(provider):
    provider.read("contacts:list", Source("v1"), using=None)
    provider.clock.now += TTL + 1
    source = Source(failures=99)
    assert provider.read("contacts:list", source, using=None) == "v1"
    assert source.calls == retries.MAX_ATTEMPTS
    assert labels.headers()[labels.FALLBACK_HEADER] == labels.STALE


def test_a_write_makes_its_key_space_stale_everywhere(provider):
    contacts, agents = Source("c1"), Source("a1")
    provider.read("contacts:list", contacts, using=None)
    provider.read("agents:list", agents, using=None)
    provider.write("contacts:detail:7", lambda: None, using=None)
    other_process = Provider(clock=provider.clock)  # its own local layer, same Redis
    assert other_process.read("contacts:list", contacts, using=None) == "c1"
    assert other_process.read("agents:list", agents, using=None) == "a1"
    assert (contacts.calls, agents.calls) == (2, 1)


def test_one_process_refreshes_a_stale_key_while_the_others_serve_it(provider, redis_cache):
    provider.read("contacts:list", Source("v1"), using=None)
    provider.clock.now += TTL + 1
    provider.cache.forget_local()
    assert provider.cache.take_lease("contacts:list", "another process", 5)
    source = Source("v2")
    assert provider.read("contacts:list", source, using=None) == "v1"
    assert source.calls == 0 and labels.headers()[labels.FALLBACK_HEADER] == labels.STALE
    provider.cache.release_lease("contacts:list", "another process")
    provider.cache.forget_local()
    assert provider.read("contacts:list", source, using=None) == "v2"
    assert source.calls == 1


def test_no_refresh_while_the_circuit_is_open(provider):
    provider.read("contacts:list", Source("v1"), using=None)
    provider.clock.now += TTL + 1
    provider.cache.forget_local()
    open_circuit()
    source = Source("v2")
    assert provider.read("contacts:list", source, using=None) == "v1"
    assert source.calls == 0


class Refused(LookupError):
    """The dependency's "no": the token, the user or the permission is gone."""


def test_a_refusal_takes_the_stale_entry_away(provider):
    provider.read("authtokens:abc", Source("ada"), using=None)
    provider.clock.now += TTL + 1  # stale: the next read refreshes it
    with pytest.raises(Refused):
        provider.read("authtokens:abc", Source(failures=1, error=Refused()), using=None)
    for outage in (Source(failures=99), Source(failures=99, error=Refused())):
        with pytest.raises((RetriesExhausted, Refused)):
            provider.read("authtokens:abc", outage, using=None)
    open_circuit()
    with pytest.raises(CircuitOpenError):
        provider.read("authtokens:abc", Source("ada"), using=None)
    assert labels.headers() == {}


def test_refusals_of_keys_never_cached_leave_nothing_in_the_shared_cache(provider,
                                                                        redis_cache):
    """A flood of guessed tokens costs the cache nothing."""
    for guess in range(20):
        with pytest.raises(Refused):
            provider.read(f"authtokens:{guess}", Source(failures=1, error=Refused()),
                          using=None)
    for prefix in (cache.PREFIX, cache.REMOVED_PREFIX):
        assert redis_cache.keys(prefix + "*") == []


def test_revoke_removes_one_key_fresh_and_stale_in_every_process(provider):
    tokens, others = Source("ada"), Source("grace")
    provider.read("authtokens:abc", tokens, using=None)
    provider.read("authtokens:def", others, using=None)
    other_process = Provider(clock=provider.clock)  # its own local layer, same Redis
    assert other_process.read("authtokens:abc", tokens, using=None) == "ada"
    provider.revoke("authtokens:abc", using=None)
    other_process.cache.forget_local()  # its layer's LOCAL_TTL has passed
    open_circuit()
    with pytest.raises(CircuitOpenError):
        other_process.read("authtokens:abc", tokens, using=None)
    assert other_process.read("authtokens:def", others, using=None) == "grace"  # still fresh
    assert (tokens.calls, others.calls) == (1, 1)


def test_revoke_waits_for_the_transaction_to_commit(provider, transactional_db):
    provider.read("authtokens:abc", Source("ada"))
    with transaction.atomic():
        provider.revoke("authtokens:abc")
        assert provider.cache.get("authtokens:abc").entry is not None
    assert provider.cache.get("authtokens:abc").entry is None


def test_a_result_stored_with_the_version_before_a_revocation_is_never_read(provider):
    """What another process reads between a late store and its own check."""
    provider.revoke("authtokens:abc", using=None)
    provider.cache.set_many({"authtokens:abc": "ada"}, TTL, STALE_TTL, 0, key_version=0)
    assert provider.cache.get("authtokens:abc").entry is None
    provider.cache.set_many({"authtokens:abc": "ada"}, TTL, STALE_TTL, 0, key_version=1)
    assert provider.cache.get("authtokens:abc").entry.value == "ada"


def test_a_read_in_flight_when_its_key_is_revoked_stores_nothing(provider, redis_cache):
    """Its answer was given before the revocation: it must not stand in for a later one."""
    inside, release = threading.Event(), threading.Event()

    def slow():
        inside.set()
        assert release.wait(30)
        return "ada"

    def read():
        try:
            provider.read("authtokens:abc", slow, using=None)
        finally:
            connections.close_all()  # the breaker read its overrides in this thread

    reader = threading.Thread(target=read)
    reader.start()
    assert inside.wait(30)
    provider.revoke("authtokens:abc", using=None)
    release.set()
    reader.join(30)
    provider.cache.forget_local()
    assert provider.cache.get("authtokens:abc").entry is None
    redis_cache.delete(cache.REMOVED_PREFIX + "authtokens:abc")  # its version expires
    assert provider.cache.get("authtokens:abc").entry is None  # the result itself is gone
    open_circuit()
    with pytest.raises(CircuitOpenError):
        provider.read("authtokens:abc", Source("ada"), using=None)


def test_load_many_fetches_only_what_is_not_cached_one_call_per_batch(provider):
    batches = []

    def fetch_many(ids):
        batches.append(list(ids))
        return {i: i * 10 for i in ids if i != 13}

    ids = [i % 250 for i in range(1000)]  # 250 unique
    result = provider.load_many("numbers", ids, fetch_many, batch_size=100, using=None)
    assert [len(batch) for batch in batches] == [100, 100, 50]
    assert len(result) == 249 and result[7] == 70 and 13 not in result
    batches.clear()
    result = provider.load_many("numbers", range(300), fetch_many, batch_size=100, using=None)
    assert [len(batch) for batch in batches] == [51]  # 250..299, and 13 asked for again
    assert 13 in batches[0] and len(result) == 299


def test_load_many_serves_stale_items_when_the_circuit_is_open(provider):
    provider.load_many("numbers", [1, 2], lambda ids: {i: i for i in ids}, using=None)
    provider.clock.now += TTL + 1
    open_circuit()
    assert provider.load_many("numbers", [1, 2], dict, using=None) == {1: 1, 2: 2}
    assert labels.headers()[labels.FALLBACK_HEADER] == labels.STALE
    with pytest.raises(CircuitOpenError):
        provider.load_many("numbers", [1, 3], dict, using=None)


def test_load_many_falls_back_for_the_ids_nothing_cached_can_serve(provider):
    provider.load_many("numbers", [1, 2], lambda ids: {i: i for i in ids}, using=None)
    provider.clock.now += TTL + 1
    open_circuit()
    asked = []

    def degraded(ids):
        asked.append(list(ids))
        return {i: None for i in ids}

    assert provider.load_many("numbers", [1, 3, 4], dict, using=None, fallback=degraded) == {
        1: 1, 3: None, 4: None}
    assert asked == [[3, 4]]  # not the id its stale entry served
    assert labels.headers() == {labels.FALLBACK_HEADER: labels.DEGRADED}


# Retries ---------------------------------------------------------------------------------------

def test_transient_errors_are_retried_with_full_jitter_backoff(provider):
    source = Source(failures=2)
    assert provider.rpc("crm.vendor", source) == "fresh"
    assert source.calls == 3
    assert provider.pauses == [retries.BASE_DELAY, retries.BASE_DELAY * 2]
    assert metrics.value("operations", circuit="crm.rpc", operation="crm.vendor") == 1
    assert metrics.value("retries", circuit="crm.rpc", operation="crm.vendor") == 2


def test_backoff_is_uniform_below_the_exponential_cap():
    assert retries.backoff(1, rand=lambda: 0.0) == 0.0
    assert retries.backoff(3, rand=lambda: 0.5) == 0.5 * retries.BASE_DELAY * 4
    assert retries.backoff(30, rand=lambda: 1.0) == retries.MAX_DELAY
    assert retries.backoff(1, retry_after=0.7, rand=lambda: 0.0) == 0.7


def test_errors_that_persist_end_in_retries_exhausted(provider):
    source = Source(failures=99)
    with pytest.raises(RetriesExhausted) as raised:
        provider.rpc("crm.vendor", source)
    assert source.calls == retries.MAX_ATTEMPTS
    assert isinstance(raised.value.__cause__, ConnectionError)


def test_the_callers_own_errors_are_not_retried_and_propagate(provider):
    source = Source(failures=99, error=ValueError("bad input"))
    with pytest.raises(ValueError, match="bad input"):
        provider.rpc("crm.vendor", source)
    assert source.calls == 1
    assert get_breaker("crm.rpc").snapshot()["failures"] == 0


def test_an_open_circuit_is_never_retried(provider):
    open_circuit("crm.rpc")
    source = Source()
    with pytest.raises(CircuitOpenError):
        provider.rpc("crm.vendor", source)
    assert source.calls == 0 and provider.pauses == []


class UpstreamError(Exception):
    """The shape of requests' HTTPError: the response carries the status and headers."""

    class Response:
        def __init__(self, status_code, headers):
            self.status_code, self.headers = status_code, headers

    def __init__(self, status_code, headers=None):
        super().__init__(status_code)
        self.response = self.Response(status_code, headers or {})


def test_retry_after_from_an_upstream_429_is_honoured(provider):
    source = Source(failures=1, error=UpstreamError(429, {"Retry-After": "0.5"}))
    assert provider.rpc("crm.vendor", source) == "fresh"
    assert provider.pauses == [0.5]


def test_no_retry_when_retry_after_is_beyond_the_deadline(provider):
    source = Source(failures=1, error=UpstreamError(429, {"Retry-After": "30"}))
    with pytest.raises(RateLimited) as raised:
        provider.rpc("crm.vendor", source)
    assert source.calls == 1 and raised.value.retry_after == 30
    assert raised.value.status == 429


def test_the_retry_budget_stops_retries_during_an_outage():
    clock = Clock(0)
    budget = retries.RetryBudget(ratio=0.25, capacity=2, refill_per_second=0.5,
                                 monotonic=clock)
    budget.deposit()
    assert budget.withdraw() and budget.withdraw()
    assert not budget.withdraw()  # 4 calls must deposit a token first
    for _ in range(4):
        budget.deposit()
    assert budget.withdraw() and not budget.withdraw()
    clock.now += 2  # a quiet process refills slowly
    assert budget.withdraw()


def test_a_dry_retry_budget_means_one_attempt_per_call(provider):
    budget = retries.budget_for("crm.rpc")
    budget.tokens, budget.refill_per_second = 0, 0
    source = Source(failures=99)
    with pytest.raises(DependencyUnavailable):
        provider.rpc("crm.vendor", source)
    assert source.calls == 1


# Error classes ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("error", "retryable", "dependency", "cls"), [
    (ConnectionResetError(), True, True, DependencyUnavailable),
    (TimeoutError(), False, True, OperationTimeout),
    (UpstreamError(503), True, True, DependencyUnavailable),
    (UpstreamError(429), True, True, RateLimited),
    (UpstreamError(401), False, False, None),
    (UpstreamError(500), False, True, DependencyUnavailable),
    (CircuitOpenError(), False, False, CircuitOpenError),
    (KeyError("x"), False, False, None),
])
def test_the_classifier(error, retryable, dependency, cls):
    kind = classify(error)
    assert (kind.retryable, kind.dependency, kind.error) == (retryable, dependency, cls)


@pytest.mark.postgres
def test_the_classifier_on_real_database_errors(postgres, db):
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect("postgresql://postgres@127.0.0.1:1/x", connect_timeout=2)
    assert classify(refused.value)[:3] == (True, True, DependencyUnavailable)
    with pytest.raises(OperationalError) as cancelled, transaction.atomic(), \
            connection.cursor() as cursor:
        cursor.execute("SET LOCAL statement_timeout = 50")
        cursor.execute("SELECT pg_sleep(2)")
    assert classify(cancelled.value).error is OperationTimeout
    with pytest.raises(Exception) as bad_sql, connection.cursor() as cursor:
        cursor.execute("SELECT no_such_column FROM auth_user")
    assert classify(bad_sql.value)[:3] == (False, False, None)


def test_the_guards_refusal_is_rebuilt_as_the_circuits_own_error():
    """Another process's CIRCUIT_OPEN is a CircuitOpenError, not the guard's subclass, though
    both share the code."""
    rebuilt = rebuild({"code": "CIRCUIT_OPEN", "retry_after": 3}, "crm.read")
    assert type(rebuilt) is CircuitOpenError
    assert rebuilt.retry_after == 3


@pytest.mark.parametrize(("error", "permanent"), [
    (InvalidWrite({"entity": ["Too long."]}), True),
    (DjangoValidationError("No such id."), True),
    (DRFValidationError({"contact": ["No such id."]}), True),
    (UpstreamError(400), True),
    (UpstreamError(429), False),
    (UpstreamError(503), False),
    (IdempotencyInFlight(), False),
    (RateLimited(), False),
    (DependencyUnavailable(), False),
    (ValueError("anything else"), False),  # tried again, up to replay.MAX_ATTEMPTS
])
def test_what_no_attempt_can_fix(error, permanent):
    assert is_permanent(error) is permanent


@pytest.mark.postgres
def test_what_no_attempt_can_fix_among_real_database_errors(postgres, unreachable_database):
    with pytest.raises(DataError) as too_long, transaction.atomic():
        Contact.objects.create(name="n" * 201, email="a@example.com")
    assert is_permanent(too_long.value)
    with pytest.raises(IntegrityError) as missing, transaction.atomic():
        Conversation.objects.create(contact_id=10**12, subject="No such contact")
    assert is_permanent(missing.value)
    with pytest.raises(OperationalError) as refused:
        connections[unreachable_database].ensure_connection()
    assert not is_permanent(refused.value)


# Deadlines -------------------------------------------------------------------------------------

@pytest.mark.postgres
def test_a_slow_query_is_stopped_by_the_remaining_budget(settings, redis_cache, postgres, db):
    settings.RESILIENCE_CRM = {"STORE": "redis", "CACHE_ALIAS": "redis",
                               "CIRCUITS": {"crm.read": {"call_timeout": 0.5}}}
    provider = Provider()

    def slow():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(5)")

    started = time.monotonic()
    with pytest.raises(OperationTimeout) as raised:
        provider.read("contacts:slow", slow)
    assert time.monotonic() - started < 3  # 0.5 s on an idle machine; bounded by the server
    assert raised.value.status == 504 and raised.value.code == "TIMEOUT"
    assert metrics.value("calls", circuit="crm.read", outcome="timeout") == 1
    assert get_breaker("crm.read").snapshot()["failures"] == 1
    buckets.flush_buckets()  # a timeout is one call, and one of its failures
    row = CircuitMetric.objects.get(circuit__name="crm.read")
    assert (row.calls, row.failures, row.timeouts) == (1, 1, 1)


@pytest.mark.postgres
def test_the_statement_timeout_ends_with_the_call_in_the_callers_transaction(
        provider, postgres, db):
    def show():
        with connection.cursor() as cursor:
            cursor.execute("SHOW statement_timeout")
            return cursor.fetchone()[0]

    with transaction.atomic():
        before = show()
        inside = provider.read("settings:timeout", show)
        assert show() == before
    milliseconds = int(inside[:-2]) if inside.endswith("ms") else int(inside[:-1]) * 1000
    assert 0 < milliseconds <= 2000  # what was left of the 2 s call_timeout
    assert inside != before


def test_a_call_that_returns_after_its_budget_counts_as_a_timeout(settings, redis_cache):
    settings.RESILIENCE_CRM = {"STORE": "redis", "CACHE_ALIAS": "redis",
                               "CIRCUITS": {"crm.rpc": {"call_timeout": 1.0}}}
    now = Clock(0)
    provider = Provider(monotonic=now)

    def takes_two_seconds():
        now.now += 2
        return "late"

    with pytest.raises(OperationTimeout):
        provider.rpc("crm.vendor", takes_two_seconds)
    assert metrics.value("calls", circuit="crm.rpc", outcome="timeout") == 1
    settings.RESILIENCE_CRM = {"STORE": "redis", "CACHE_ALIAS": "redis",
                               "CIRCUITS": {"crm.write": {"call_timeout": 1.0}}}
    assert provider.write("contacts:1", takes_two_seconds, using=None) == "late"
    assert metrics.value("calls", circuit="crm.write", outcome="timeout") == 1


@pytest.mark.postgres
def test_a_stalled_server_is_bounded_by_the_connect_timeout(provider, postgres):
    """A server that accepts and never answers: libpq's connect_timeout ends the wait."""
    dsn = connection.settings_dict
    with Proxy(dsn["HOST"] or "127.0.0.1", int(dsn["PORT"] or 5432)) as proxy:
        proxy.stalled = True

        def connect():
            psycopg.connect(host="127.0.0.1", port=proxy.port, user=dsn["USER"],
                            dbname=dsn["NAME"], connect_timeout=1).close()

        started = time.monotonic()
        with pytest.raises(OperationTimeout):
            provider.rpc("crm.db", connect)
        assert time.monotonic() - started < 2.0 + 1.5  # connect_timeout is at least 2 s
        assert proxy.connections == 1  # a timeout is not retried


def test_reads_work_without_the_cache_when_redis_is_down(settings, redis_proxy):
    settings.RESILIENCE_CRM = {"STORE": "memory", "CACHE_ALIAS": "proxied"}
    redis_proxy.stalled = True
    redis_proxy.drop()
    provider = Provider()
    source = Source("live")
    started = time.monotonic()
    assert provider.read("contacts:list", source, using=None) == "live"
    assert provider.read("contacts:list", source, using=None) == "live"  # this process's layer
    provider.cache.forget_local()
    assert provider.read("contacts:list", source, using=None) == "live"
    assert source.calls == 2  # nothing reached Redis
    # The first cache call waits out one socket timeout; the cache is then left alone (no
    # lease, no store, no second lookup, not even for the third read) for a while.
    assert time.monotonic() - started < 3 * PROXY_SOCKET_TIMEOUT + 0.5


@pytest.mark.postgres
def test_a_real_serialization_failure_is_retryable(postgres, transactional_db):
    pk = Contact.objects.create(name="Ada", email="ada@example.com").pk
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    first, second = psycopg.connect(**params), psycopg.connect(**params)
    try:
        for conn in (first, second):
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        second.execute("SELECT name FROM crm_contact WHERE id = %s", [pk])  # its snapshot
        first.execute("UPDATE crm_contact SET name = 'Grace' WHERE id = %s", [pk])
        first.commit()
        with pytest.raises(psycopg.errors.SerializationFailure) as raised:
            second.execute("UPDATE crm_contact SET name = 'Alan' WHERE id = %s", [pk])
    finally:
        first.close()
        second.close()
    kind = classify(raised.value)
    assert (kind.retryable, kind.dependency, kind.error) == (True, True, DependencyUnavailable)
    assert is_conflict(raised.value)  # so protected.write retries it
