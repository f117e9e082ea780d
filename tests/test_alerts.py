"""Sentry alerts, counted where Sentry would count them: at a local ingest endpoint.

sentry-sdk is initialised the way a project would (the app never does it), pointed at
:class:`tests.sentry_server.SentryServer`, with its logging integration on as in every
default setup, so a log line of the app's that became a second event would be counted too.
Each test flushes before counting and tears the client down after, leaving sentry-sdk
uninitialised for the tests that follow.
"""

from __future__ import annotations

import logging

import pytest
import sentry_sdk

from resilience_crm.breakers import events, registry
from resilience_crm.breakers import machine as core
from resilience_crm.breakers.breaker import Breaker
from resilience_crm.breakers.control import steer
from resilience_crm.breakers.stores.failover import FailoverStore
from resilience_crm.breakers.stores.memory import MemoryStore
from resilience_crm.breakers.stores.redis import RedisStore
from resilience_crm.exceptions import CircuitOpenError
from resilience_crm.models import CircuitEvent
from resilience_crm.observability import alerts
from tests.clock import Clock
from tests.failing import boom
from tests.sentry_server import SentryServer, received, sentry_sending_to
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db  # every transition also writes its CircuitEvent

CIRCUIT = "test.alerts"
CONFIG = {
    "failure_threshold": 2,
    "failure_rate_threshold": 0,
    "reset_timeout": 10,
    "max_reset_timeout": 60,
    "half_open_max_calls": 1,
    "success_threshold": 1,
}


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def breaker(clock):
    return Breaker(CIRCUIT, core.Config.from_mapping(CONFIG), MemoryStore(clock), clock=clock,
                   monotonic=clock, rand=lambda: 0.5)


def trip(breaker) -> None:
    for _ in range(CONFIG["failure_threshold"]):
        with pytest.raises(ConnectionError):
            breaker.call(boom)
    assert breaker.state == core.OPEN


def recover(breaker, clock) -> None:
    clock.now += 60  # past any reset timeout: the next call is the half-open trial
    assert breaker.call(lambda: "ok") == "ok"
    assert breaker.state == core.CLOSED


def recorded() -> list[tuple[str, str]]:
    events.flush()  # what the background flusher would have written by now
    return list(CircuitEvent.objects.filter(circuit__name=CIRCUIT).order_by("generation")
                .values_list("from_state", "to_state"))


def test_opening_a_circuit_sends_one_error_event(sentry, breaker, clock):
    trip(breaker)
    for _ in range(5):  # rejected, locally and after store steps: the same incident
        with pytest.raises(CircuitOpenError):
            breaker.call(boom)
        clock.now += 1

    events = received(sentry)
    assert len(events) == 1
    event = events[0]
    assert event["level"] == "error"
    assert event["tags"]["circuit"] == CIRCUIT
    assert event["tags"]["circuit_state"] == "open"
    assert event["tags"]["store"] == "shared"
    assert event["fingerprint"] == ["resilience-circuit", CIRCUIT, "open"]
    assert event["message"] == f"Circuit {CIRCUIT} opened (consecutive_failures)"
    assert event["contexts"]["circuit"]["generation"] == 1


def test_recovery_sends_one_info_event(sentry, breaker, clock):
    trip(breaker)
    recover(breaker, clock)

    events = received(sentry)
    assert [e["level"] for e in events] == ["error", "info"]
    recovered = events[1]
    assert recovered["tags"]["circuit"] == CIRCUIT
    assert recovered["tags"]["circuit_state"] == "closed"
    assert recovered["fingerprint"] == ["resilience-circuit", CIRCUIT, "recovered"]
    assert recovered["message"] == f"Circuit {CIRCUIT} recovered"


def test_a_failed_trial_is_the_same_incident_and_sends_nothing(sentry, breaker, clock):
    trip(breaker)
    clock.now += 60
    with pytest.raises(ConnectionError):
        breaker.call(boom)  # the half-open trial fails: open again
    assert breaker.state == core.OPEN
    assert [e["level"] for e in received(sentry)] == ["error"]

    recover(breaker, clock)

    assert recorded() == [("closed", "open"), ("open", "half_open"), ("half_open", "open"),
                          ("open", "half_open"), ("half_open", "closed")]
    assert [e["level"] for e in received(sentry)] == ["error", "info"]


def test_a_new_incident_after_recovery_sends_a_new_error(sentry, breaker, clock):
    trip(breaker)
    recover(breaker, clock)
    trip(breaker)

    events = received(sentry)
    assert [e["level"] for e in events] == ["error", "info", "error"]
    assert events[2]["contexts"]["circuit"]["generation"] == 4


def test_manual_changes_send_nothing(sentry, breaker):
    breaker.force(core.FORCED_OPEN, reason="maintenance")
    breaker.reset()
    breaker.force(core.FORCED_CLOSED)
    breaker.reset()

    assert received(sentry) == []
    assert len(recorded()) == 4


def test_an_incident_opened_by_a_workers_own_breaker_says_so(sentry, clock, settings):
    settings.CACHES = {
        **settings.CACHES,
        "redis_down": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens there
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.25, "SOCKET_TIMEOUT": 0.25},
        },
    }
    store = FailoverStore(RedisStore("redis_down"), clock=clock, monotonic=clock)
    breaker = Breaker(CIRCUIT, core.Config.from_mapping(CONFIG), store,
                      clock=clock, monotonic=clock, rand=lambda: 0.5)
    trip(breaker)
    assert breaker.using_fallback

    events = received(sentry)
    assert [e["level"] for e in events] == ["error"]
    assert events[0]["tags"]["store"] == "local"
    assert events[0]["tags"]["circuit"] == CIRCUIT


def test_without_sentry_sdk_initialised_nothing_is_sent(breaker, clock, monkeypatch, caplog):
    with SentryServer() as server:
        # Were the app to initialise sentry-sdk itself, this is where it would send.
        monkeypatch.setenv("SENTRY_DSN", server.dsn)
        assert not sentry_sdk.is_initialized()
        with caplog.at_level(logging.WARNING, logger="resilience_crm"):
            trip(breaker)
            recover(breaker, clock)
        sentry_sdk.flush(timeout=5)
        assert server.events() == []

    assert not sentry_sdk.is_initialized()
    assert recorded() == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert alerts.send_alert(CIRCUIT, core.CLOSED, core.OPEN, 9, "consecutive_failures") is False


def test_sentry_alerts_off_sends_nothing(sentry, breaker, clock, settings):
    settings.RESILIENCE_CRM = {"SENTRY_ALERTS": False}
    trip(breaker)
    recover(breaker, clock)

    assert received(sentry) == []
    assert recorded() == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def raise_runtime_error(*args, **kwargs):
    raise RuntimeError("the alert path is broken")


@pytest.mark.parametrize(
    ("target", "attribute", "logged", "failures"),
    [
        # alerts' own guard: the opening and the recovery each try to send
        (sentry_sdk, "capture_message", "Sending the Sentry alert for circuit test.alerts failed",
         2),
        # the breaker's guard around its receivers: every transition calls this one
        (alerts, "send_alert", "circuit_transition receiver", 3),
    ],
    ids=["capture-raises", "receiver-raises"],
)
def test_a_broken_alert_path_never_breaks_the_call(sentry, breaker, clock, monkeypatch, caplog,
                                                   target, attribute, logged, failures):
    monkeypatch.setattr(target, attribute, raise_runtime_error)

    with pytest.raises(ConnectionError):
        breaker.call(boom)
    with pytest.raises(ConnectionError):  # the backend's own error, not the alert's
        breaker.call(boom)
    with pytest.raises(CircuitOpenError):
        breaker.call(boom)
    clock.now += 60
    assert breaker.call(lambda: "ok") == "ok"

    assert recorded() == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    errors = [r for r in caplog.records
              if r.levelno == logging.ERROR and r.name.startswith("resilience_crm")]
    assert len(errors) == failures
    assert all(logged in r.getMessage() for r in errors)
    assert all(r.exc_info and r.exc_info[0] is RuntimeError for r in errors)


def test_an_unreachable_ingest_endpoint_never_breaks_the_call(breaker, clock):
    with sentry_sending_to("http://public@127.0.0.1:1/1"):  # nothing listens there
        with pytest.raises(ConnectionError):
            breaker.call(boom)
        with pytest.raises(ConnectionError):
            breaker.call(boom)
        with pytest.raises(CircuitOpenError):
            breaker.call(boom)
        clock.now += 60
        assert breaker.call(lambda: "ok") == "ok"
        sentry_sdk.flush(timeout=5)

    assert recorded() == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


@pytest.mark.redis
def test_local_breakers_send_one_alert_per_process_per_store_outage(sentry, settings,
                                                                     redis_proxy):
    """Every circuit of a worker whose Redis is gone may open on its own: that is one alert,
    grouped apart from the cluster's, and the next outage may send one again."""
    proxy = redis_proxy
    settings.RESILIENCE_CRM = {
        "STORE": "redis", "CACHE_ALIAS": "proxied", "SNAPSHOT_TTL": 0,
        "STORE_RETRY_INTERVAL": 0.2, "CIRCUIT_DEFAULTS": CONFIG,
    }
    first, second = registry.get_breaker("crm.read"), registry.get_breaker("crm.write")
    first.call(lambda: "warm")
    proxy.stalled = True
    proxy.drop()
    trip(first)
    trip(second)
    assert first.using_fallback and second.using_fallback

    events = received(sentry)
    assert len(events) == 1
    assert events[0]["tags"]["store"] == "local"
    assert events[0]["fingerprint"] == alerts.LOCAL_FINGERPRINT

    proxy.stalled = False
    wait_until(lambda: registry.get_breaker("crm.rpc").snapshot()["store"] == "shared",
             "the worker to find Redis again")
    proxy.stalled = True
    proxy.drop()
    third = registry.get_breaker("crm.auth")
    trip(third)
    assert third.using_fallback
    assert [e["fingerprint"] for e in received(sentry)] == [alerts.LOCAL_FINGERPRINT] * 2


def test_an_operators_reset_of_an_open_circuit_sends_the_recovery_with_the_actor(
        sentry, settings, django_user_model):
    settings.RESILIENCE_CRM = {"STORE": "memory", "CIRCUITS": {CIRCUIT: CONFIG}}
    operator = django_user_model.objects.create_user("ops-lead")
    trip(registry.get_breaker(CIRCUIT))

    steer(CIRCUIT, core.CLOSED, actor=operator, reason="backend fixed", source="admin")

    events = received(sentry)
    assert [e["level"] for e in events] == ["error", "info"]
    assert events[1]["tags"]["actor"] == "ops-lead"
    assert events[1]["message"] == f"Circuit {CIRCUIT} recovered (reset by ops-lead)"
    assert events[1]["fingerprint"] == ["resilience-circuit", CIRCUIT, "recovered"]
