"""System checks on ``RESILIENCE_CRM``: one or more tests per check id."""

from __future__ import annotations

import math
import sys
import warnings
from typing import Any

import pytest
from django.core.checks import ERROR, CheckMessage, run_checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import connection

from resilience_crm import checks, conf, database_checks, drf
from resilience_crm.breakers.stores.memory import MemoryStore
from resilience_crm.ratelimit import checks as ratelimit_checks
from resilience_crm.ratelimit.stores.memory import MemoryLimiterStore
from resilience_crm.throttling import TierRateThrottle
from tests.databases import extra_database

LOCMEM = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
DUMMY = {"default": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}}
REDIS = {"default": {"BACKEND": "django_redis.cache.RedisCache",
                     "LOCATION": "redis://127.0.0.1:1/0"}}  # never connected to by a check


def run(settings: Any, **config: Any) -> list[CheckMessage]:
    """Every resilience_crm check's messages with ``RESILIENCE_CRM = config``."""
    settings.RESILIENCE_CRM = config
    return run_checks(tags=[checks.TAG])


def ids(messages: list[CheckMessage]) -> set[str]:
    return {message.id for message in messages if message.id}


def error_ids(messages: list[CheckMessage]) -> set[str]:
    return {message.id for message in messages if message.level >= ERROR and message.id}


def only(messages: list[CheckMessage], code: str) -> CheckMessage:
    """The single message with id ``code``."""
    found = [message for message in messages if message.id == code]
    assert len(found) == 1, messages
    return found[0]


class NotSharedStore(MemoryStore):
    shared = False


class NotAStore:
    pass


# The defaults ------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [None, {}, dict(conf.DEFAULTS)])
def test_default_configuration_has_no_errors(settings: Any, config: Any) -> None:
    settings.CACHES = LOCMEM
    settings.RESILIENCE_CRM = config
    assert error_ids(run_checks(tags=[checks.TAG])) == set()


def test_default_configuration_has_no_warnings_with_redis_in_production(settings: Any) -> None:
    settings.CACHES = REDIS
    settings.DEBUG = False
    assert run(settings) == []


def test_unset_setting_is_fine(settings: Any) -> None:
    del settings.RESILIENCE_CRM
    assert error_ids(run_checks(tags=[checks.TAG])) == set()


def test_checks_run_with_manage_py_check(settings: Any) -> None:
    settings.RESILIENCE_CRM = {"TIERS": {"free": {"read": "lots/min"}}}
    with pytest.raises(SystemCheckError) as info:
        call_command("check")
    text = str(info.value)
    assert checks.Codes.RATE_INVALID in text
    assert 'RESILIENCE_CRM["TIERS"]["free"]["read"]' in text
    assert "'lots/min' is not a rate" in text


def test_manage_py_check_with_the_tag(settings: Any) -> None:
    settings.RESILIENCE_CRM = {"STORE": "postgres"}
    with pytest.raises(SystemCheckError, match=r'RESILIENCE_CRM\["STORE"\]'):
        call_command("check", "--tag", checks.TAG)


# E001 / E002: the dict and its keys --------------------------------------------------------


@pytest.mark.parametrize("value", [["STORE", "redis"], "redis", 42])
def test_e001_setting_not_a_dict(settings: Any, value: Any) -> None:
    settings.RESILIENCE_CRM = value
    messages = run_checks(tags=[checks.TAG])
    assert ids(messages) == {checks.Codes.SETTING_NOT_DICT}
    assert type(value).__name__ in messages[0].msg


def test_e002_unknown_key_suggests_the_closest(settings: Any) -> None:
    messages = run(settings, FAIL_OPN={"read": True}, FALLBACK_TTL=10)
    assert error_ids(messages) == {checks.Codes.UNKNOWN_KEY}
    error = only(messages, checks.Codes.UNKNOWN_KEY)
    assert error.msg == 'RESILIENCE_CRM["FAIL_OPN"] is not a resilience_crm setting.'
    assert error.hint.startswith("Did you mean 'FAIL_OPEN'? Valid keys: STORE, CACHE_ALIAS,")


def test_e002_unknown_key_in_lower_case(settings: Any) -> None:
    error = only(run(settings, store="redis"), checks.Codes.UNKNOWN_KEY)
    assert "Did you mean 'STORE'?" in error.hint


def test_e002_unknown_key_without_a_close_match(settings: Any) -> None:
    error = only(run(settings, ZEBRA=1), checks.Codes.UNKNOWN_KEY)
    assert error.hint.startswith("Valid keys: STORE,")
    assert "SNAPSHOT_TTL" in error.hint


# E003 - E006: rate limits ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"TIERS": ["free", "pro"]}, 'RESILIENCE_CRM["TIERS"] must be a dict'),
        ({"TIERS": None}, 'RESILIENCE_CRM["TIERS"] must be a dict'),
        ({"TIERS": {"free": "100/min", "anonymous": {}}}, 'RESILIENCE_CRM["TIERS"]["free"]'),
        ({"TIERS": {1: {}, "free": {}, "anonymous": {}}},
         'RESILIENCE_CRM["TIERS"] must be keyed by strings, not the int key 1.'),
        ({"ENDPOINTS": "contact-list"}, 'RESILIENCE_CRM["ENDPOINTS"] must be a dict'),
        ({"ENDPOINTS": {"contact-list": ["10/s"]}}, 'RESILIENCE_CRM["ENDPOINTS"]["contact-list"]'),
    ],
)
def test_e003_limits_shape(settings: Any, config: dict[str, Any], path: str) -> None:
    messages = run(settings, **config)
    assert checks.Codes.LIMITS_SHAPE in error_ids(messages)
    assert any(path in message.msg for message in messages if message.id.endswith("E003"))


def test_e003_tiers_not_a_dict_skips_the_tier_names(settings: Any) -> None:
    assert error_ids(run(settings, TIERS=["free"])) == {checks.Codes.LIMITS_SHAPE}


@pytest.mark.parametrize(
    ("config", "path", "detail"),
    [
        ({"TIERS": {"free": {"read": "100/fortnight"}, "anonymous": {}}},
         'RESILIENCE_CRM["TIERS"]["free"]["read"]', "unknown unit 'fortnight'"),
        ({"TIERS": {"free": {"write": ["5/s", "0/min"]}, "anonymous": {}}},
         'RESILIENCE_CRM["TIERS"]["free"]["write"]', "'0/min': the number of requests"),
        ({"TIERS": {"free": {"rpc": 100}, "anonymous": {}}},
         'RESILIENCE_CRM["TIERS"]["free"]["rpc"]', "rates must be a string"),
        ({"ENDPOINTS": {"contact-list": {"read": "ten/s"}}},
         'RESILIENCE_CRM["ENDPOINTS"]["contact-list"]["read"]', "'ten/s' is not a rate"),
        ({"ENDPOINTS": {"contact-list": {"auth": ["1/s", {"n": 1}]}}},
         'RESILIENCE_CRM["ENDPOINTS"]["contact-list"]["auth"]', "a rate must be a string"),
    ],
)
def test_e004_malformed_rate(settings: Any, config: dict[str, Any], path: str,
                             detail: str) -> None:
    messages = run(settings, **config)
    assert error_ids(messages) == {checks.Codes.RATE_INVALID}
    error = only(messages, checks.Codes.RATE_INVALID)
    assert error.msg.startswith(f"{path} is not a valid rate: ")
    assert detail in error.msg


def test_e004_good_rates_pass(settings: Any) -> None:
    messages = run(settings,
                   TIERS={"free": {"read": ["10/s", "100/5min"], "write": None},
                          "anonymous": {"auth": "10/hour"}},
                   ENDPOINTS={"contact-list": {"read": "1/day"}})
    assert error_ids(messages) == set()


@pytest.mark.parametrize(
    ("config", "path", "hint"),
    [
        ({"TIERS": {"free": {"reads": "1/s"}, "anonymous": {}}}, 'RESILIENCE_CRM["TIERS"]["free"]',
         "Did you mean 'read'?"),
        ({"ENDPOINTS": {"login": {"login": "5/min"}}}, 'RESILIENCE_CRM["ENDPOINTS"]["login"]',
         "Operation classes: read, write, rpc, auth."),
        ({"FAIL_OPEN": {"read": True, "writes": False}}, 'RESILIENCE_CRM["FAIL_OPEN"]',
         "Did you mean 'write'?"),
    ],
)
def test_e005_unknown_op_class(settings: Any, config: dict[str, Any], path: str,
                               hint: str) -> None:
    messages = run(settings, **config)
    assert error_ids(messages) == {checks.Codes.OP_CLASS_UNKNOWN}
    error = only(messages, checks.Codes.OP_CLASS_UNKNOWN)
    assert error.msg.startswith(f"{path}: ")
    assert hint in error.hint


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"DEFAULT_TIER": "gold"}, "DEFAULT_TIER"),
        ({"ANONYMOUS_TIER": "guest"}, "ANONYMOUS_TIER"),
        ({"ANONYMOUS_TIER": ["anonymous"]}, "ANONYMOUS_TIER"),
        ({"TIERS": {"free": {}}}, "ANONYMOUS_TIER"),
    ],
)
def test_e006_tier_not_in_tiers(settings: Any, config: dict[str, Any], key: str) -> None:
    messages = run(settings, **config)
    assert error_ids(messages) == {checks.Codes.TIER_UNKNOWN}
    error = only(messages, checks.Codes.TIER_UNKNOWN)
    assert error.msg.startswith(f'RESILIENCE_CRM["{key}"] is ')
    assert error.hint.startswith("Tiers: ")


# E007 / E008: circuits ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"CIRCUIT_DEFAULTS": "fast"}, 'RESILIENCE_CRM["CIRCUIT_DEFAULTS"] must be a dict'),
        ({"CIRCUITS": ["crm.read"]}, 'RESILIENCE_CRM["CIRCUITS"] must be a dict'),
        ({"CIRCUITS": {"crm.read": 5}}, 'RESILIENCE_CRM["CIRCUITS"]["crm.read"] must be a dict'),
        ({"CIRCUITS": {("a", "b"): {}}},
         "RESILIENCE_CRM[\"CIRCUITS\"] must be keyed by strings, not the tuple key ('a', 'b')."),
    ],
)
def test_e007_circuits_shape(settings: Any, config: dict[str, Any], path: str) -> None:
    messages = run(settings, **config)
    assert error_ids(messages) == {checks.Codes.CIRCUITS_SHAPE}
    assert only(messages, checks.Codes.CIRCUITS_SHAPE).msg.startswith(path)


def test_e008_names_the_circuit_and_the_key(settings: Any) -> None:
    messages = run(settings, CIRCUITS={"crm.read": {"failure_rate_threshold": 1.5}})
    assert error_ids(messages) == {checks.Codes.BREAKER_INVALID}
    assert only(messages, checks.Codes.BREAKER_INVALID).msg == (
        'RESILIENCE_CRM["CIRCUITS"]["crm.read"]["failure_rate_threshold"] must be between 0 and'
        " 1, not 1.5."
    )


@pytest.mark.parametrize(
    ("overrides", "key", "detail"),
    [
        ({"failure_threshold": -1}, "failure_threshold", "must be at least 0, not -1"),
        ({"minimum_calls": 2.5}, "minimum_calls", "must be a whole number, not 2.5"),
        ({"window": 0}, "window", "must be above 0, not 0"),
        ({"reset_timeout": "30s"}, "reset_timeout", "must be a number, not '30s'"),
        ({"call_timeout": math.nan}, "call_timeout", "must be a number"),
        ({"half_open_max_calls": True}, "half_open_max_calls", "must be a number, not True"),
        ({"reset_timeout": 900}, "max_reset_timeout",
         "must be at least reset_timeout (max_reset_timeout is 600, reset_timeout is 900)"),
        ({"success_threshold": 3}, "success_threshold",
         "must not exceed half_open_max_calls (success_threshold is 3, half_open_max_calls is 1)"),
        ({"record_exceptions": "builtins.OSError"}, "record_exceptions", "must be a list"),
        ({"record_exceptions": 5}, "record_exceptions", "must be a list"),
        ({"slow_call_duration": 0}, "slow_call_duration", "must be above 0, not 0"),
        ({"record_exceptions": ["no.such.module.Error"]}, "record_exceptions",
         "cannot use 'no.such.module.Error': No module named 'no'"),
        ({"ignore_exceptions": ["builtins.NoSuchError"]}, "ignore_exceptions",
         "cannot use 'builtins.NoSuchError': module 'builtins' has no attribute"),
        ({"record_exceptions": ["builtins.len"]}, "record_exceptions",
         "cannot use 'builtins.len': 'builtins.len' is not an exception class"),
        ({"ignore_exceptions": ["OSError"]}, "ignore_exceptions",
         "cannot use 'OSError': 'OSError' is not a dotted path"),
    ],
)
def test_e008_breaker_setting_out_of_range(settings: Any, overrides: dict[str, Any], key: str,
                                           detail: str) -> None:
    messages = run(settings, CIRCUITS={"crm.rpc": overrides})
    assert error_ids(messages) == {checks.Codes.BREAKER_INVALID}
    error = only(messages, checks.Codes.BREAKER_INVALID)
    assert error.msg.startswith(f'RESILIENCE_CRM["CIRCUITS"]["crm.rpc"]["{key}"] ')
    assert detail in error.msg


def test_e008_unknown_breaker_setting_suggests_the_closest(settings: Any) -> None:
    error = only(run(settings, CIRCUITS={"crm.read": {"reset_timout": 5}}),
                 checks.Codes.BREAKER_INVALID)
    assert error.msg == (
        'RESILIENCE_CRM["CIRCUITS"]["crm.read"]["reset_timout"] is not a breaker setting.'
    )
    assert error.hint.startswith("Did you mean 'reset_timeout'? Breaker settings: ")


def test_e008_circuit_defaults_are_reported_once(settings: Any) -> None:
    messages = run(settings, CIRCUIT_DEFAULTS={"failure_rate_threshold": 2},
                   CIRCUITS={"crm.read": {"window": 30}, "crm.write": {}})
    expected = ('RESILIENCE_CRM["CIRCUIT_DEFAULTS"]["failure_rate_threshold"] must be between'
                " 0 and 1, not 2.")
    assert [message.msg for message in messages if message.level >= ERROR] == [expected]


def test_e008_a_circuit_that_repeats_a_bad_default_is_reported_too(settings: Any) -> None:
    messages = run(settings, CIRCUIT_DEFAULTS={"window": -1}, CIRCUITS={"crm.read": {"window": -1}})
    assert sorted(message.msg for message in messages if message.level >= ERROR) == [
        'RESILIENCE_CRM["CIRCUITS"]["crm.read"]["window"] must be above 0, not -1.',
        'RESILIENCE_CRM["CIRCUIT_DEFAULTS"]["window"] must be above 0, not -1.',
    ]


def test_e008_overrides_can_fix_what_defaults_break(settings: Any) -> None:
    # Defaults raise reset_timeout past max_reset_timeout; the circuit raises the cap too.
    messages = run(settings, CIRCUIT_DEFAULTS={"reset_timeout": 60, "max_reset_timeout": 60},
                   CIRCUITS={"crm.read": {"reset_timeout": 700, "max_reset_timeout": 900}})
    assert error_ids(messages) == set()


def test_e008_a_circuit_override_breaks_a_rule_between_keys(settings: Any) -> None:
    messages = run(settings, CIRCUIT_DEFAULTS={"half_open_max_calls": 3, "success_threshold": 3},
                   CIRCUITS={"crm.auth": {"half_open_max_calls": 2}})
    error = only(messages, checks.Codes.BREAKER_INVALID)
    assert error.msg.startswith('RESILIENCE_CRM["CIRCUITS"]["crm.auth"]["success_threshold"]')


# E009 - E012: store, cache and database ----------------------------------------------------


@pytest.mark.parametrize(
    ("store", "reason"),
    [
        ("postgres", "cannot import it"),
        ("no.such.module.Store", "cannot import it"),
        ("resilience_crm.breakers.stores.memory.NoSuchStore", "cannot import it"),
        ("collections.OrderedDict",
         "not a subclass of resilience_crm.breakers.stores.base.BaseStore"),
        ("tests.test_checks.NotAStore", "not a subclass"),
        ("resilience_crm.conf.DEFAULTS", "not a subclass"),
        (42, "it is a int"),
        (None, "it is a NoneType"),
    ],
)
def test_e009_unknown_store(settings: Any, store: Any, reason: str) -> None:
    settings.CACHES = LOCMEM
    messages = run(settings, STORE=store)
    assert error_ids(messages) == {checks.Codes.STORE_INVALID}
    error = only(messages, checks.Codes.STORE_INVALID)
    assert error.msg.startswith(f'RESILIENCE_CRM["STORE"] is {store!r}, which is neither')
    assert reason in error.msg


@pytest.mark.parametrize(
    "store",
    ["auto", "database", "memory", "resilience_crm.breakers.stores.memory.MemoryStore",
     "tests.test_checks.NotSharedStore"],
)
def test_e009_known_stores_pass(settings: Any, store: str) -> None:
    settings.CACHES = LOCMEM
    assert error_ids(run(settings, STORE=store)) == set()


@pytest.mark.parametrize("store", ["redis", "resilience_crm.breakers.stores.redis.RedisStore"])
def test_e010_redis_store_without_redis_cache(settings: Any, store: str) -> None:
    settings.CACHES = LOCMEM
    messages = run(settings, STORE=store)
    assert error_ids(messages) == {checks.Codes.STORE_REDIS_WITHOUT_REDIS_CACHE}
    error = only(messages, checks.Codes.STORE_REDIS_WITHOUT_REDIS_CACHE)
    assert error.msg.startswith('RESILIENCE_CRM["STORE"] selects the Redis store but the cache'
                                " 'default'")
    assert "'django.core.cache.backends.locmem.LocMemCache', not django-redis" in error.msg


def test_e010_redis_store_with_redis_cache(settings: Any) -> None:
    settings.CACHES = REDIS
    assert error_ids(run(settings, STORE="redis")) == set()


@pytest.mark.parametrize("alias", ["resilience", None, ["default"]])
def test_e011_cache_alias_unknown(settings: Any, alias: Any) -> None:
    settings.CACHES = LOCMEM
    messages = run(settings, CACHE_ALIAS=alias)
    assert error_ids(messages) == {checks.Codes.CACHE_ALIAS_UNKNOWN}
    error = only(messages, checks.Codes.CACHE_ALIAS_UNKNOWN)
    assert error.msg.startswith('RESILIENCE_CRM["CACHE_ALIAS"]')
    assert error.hint == "Caches: default."


def test_e011_cache_alias_known(settings: Any) -> None:
    settings.CACHES = LOCMEM | {"resilience": LOCMEM["default"]}
    assert error_ids(run(settings, CACHE_ALIAS="resilience")) == set()


@pytest.mark.parametrize("alias", ["reporting", 0])
def test_e012_database_alias_unknown(settings: Any, alias: Any) -> None:
    messages = run(settings, DATABASE_ALIAS=alias)
    assert error_ids(messages) == {checks.Codes.DATABASE_ALIAS_UNKNOWN}
    error = only(messages, checks.Codes.DATABASE_ALIAS_UNKNOWN)
    assert error.msg.startswith('RESILIENCE_CRM["DATABASE_ALIAS"]')
    assert "default" in error.hint


@pytest.mark.parametrize("alias", [None, "default"])
def test_e012_database_alias_known(settings: Any, alias: Any) -> None:
    assert error_ids(run(settings, DATABASE_ALIAS=alias)) == set()


# E013 - E016: single values ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fail_open", "path"),
    [
        (True, 'RESILIENCE_CRM["FAIL_OPEN"] must be a dict'),
        (["read"], 'RESILIENCE_CRM["FAIL_OPEN"] must be a dict'),
        ({"read": "yes"}, 'RESILIENCE_CRM["FAIL_OPEN"]["read"] must be True or False'),
        ({"auth": 0}, 'RESILIENCE_CRM["FAIL_OPEN"]["auth"] must be True or False'),
    ],
)
def test_e013_fail_open_invalid(settings: Any, fail_open: Any, path: str) -> None:
    messages = run(settings, FAIL_OPEN=fail_open)
    assert error_ids(messages) == {checks.Codes.FAIL_OPEN_INVALID}
    assert only(messages, checks.Codes.FAIL_OPEN_INVALID).msg.startswith(path)


@pytest.mark.parametrize("value", [-1, "2", True, 1.5, None])
def test_e014_trusted_proxies_invalid(settings: Any, value: Any) -> None:
    messages = run(settings, TRUSTED_PROXIES=value)
    assert error_ids(messages) == {checks.Codes.TRUSTED_PROXIES_INVALID}
    assert only(messages, checks.Codes.TRUSTED_PROXIES_INVALID).msg == (
        f'RESILIENCE_CRM["TRUSTED_PROXIES"] must be a whole number of at least 0, not {value!r}.'
    )


@pytest.mark.parametrize("value", [0, 2])
def test_e014_trusted_proxies_valid(settings: Any, value: int) -> None:
    assert error_ids(run(settings, TRUSTED_PROXIES=value)) == set()


@pytest.mark.parametrize("key", checks.DURATION_KEYS)
@pytest.mark.parametrize("value", [-1, -0.5, "60", None, True, math.nan, math.inf, [60]])
def test_e015_durations_invalid(settings: Any, key: str, value: Any) -> None:
    messages = run(settings, **{key: value})
    assert error_ids(messages) == {checks.Codes.DURATION_INVALID}
    assert only(messages, checks.Codes.DURATION_INVALID).msg == (
        f'RESILIENCE_CRM["{key}"] must be a number of at least 0, not {value!r}.'
    )


@pytest.mark.parametrize("key", checks.DURATION_KEYS)
@pytest.mark.parametrize("value", [0, 0.25, 1])
def test_e015_durations_valid(settings: Any, key: str, value: float) -> None:
    assert ids(run(settings, **{key: value})) & {checks.Codes.DURATION_INVALID,
                                                  checks.Codes.SNAPSHOT_TTL_SLOW} == set()


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_e016_sentry_alerts_not_a_bool(settings: Any, value: Any) -> None:
    messages = run(settings, SENTRY_ALERTS=value)
    assert error_ids(messages) == {checks.Codes.SENTRY_ALERTS_INVALID}
    error = only(messages, checks.Codes.SENTRY_ALERTS_INVALID)
    assert error.msg.startswith('RESILIENCE_CRM["SENTRY_ALERTS"] must be True or False')


# E017: the PostgreSQL pool ------------------------------------------------------------------


def pooled_databases(settings: Any, engine: str = "django.db.backends.postgresql") -> None:
    pooled = {"ENGINE": engine, "NAME": "crm", "OPTIONS": {"pool": {"min_size": 2}}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Overriding setting DATABASES can lead to ..."
        settings.DATABASES = settings.DATABASES | {"pooled": pooled}


def test_e017_pool_without_psycopg_pool(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pooled_databases(settings)
    monkeypatch.setitem(sys.modules, "psycopg_pool", None)  # makes the import fail
    messages = checks.check_database_pool()
    assert ids(messages) == {checks.Codes.POOL_WITHOUT_PSYCOPG_POOL}
    assert 'settings.DATABASES["pooled"]["OPTIONS"]["pool"] is set' in messages[0].msg
    assert "psycopg[pool]" in messages[0].hint


def test_e050_a_postgresql_alias_without_a_driver(settings: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    pooled_databases(settings)  # a PostgreSQL alias "pooled"
    assert database_checks.check_postgres_driver() == []  # psycopg is installed here
    for driver in ("psycopg", "psycopg2"):
        monkeypatch.setitem(sys.modules, driver, None)  # makes the import fail
    messages = [m for m in database_checks.check_postgres_driver()
                if 'DATABASES["pooled"]' in m.msg]
    assert ids(messages) == {checks.Codes.POSTGRES_WITHOUT_DRIVER}
    assert "[postgres]" in messages[0].hint


def test_w050_sentry_alerts_asked_for_without_sentry_sdk(settings: Any,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sentry_sdk", None)  # as if not installed
    assert checks.Codes.SENTRY_WITHOUT_SDK not in ids(run(settings))  # the default just logs
    assert checks.Codes.SENTRY_WITHOUT_SDK in ids(run(settings, SENTRY_ALERTS=True))


def test_e017_pool_with_psycopg_pool(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pooled_databases(settings)
    monkeypatch.setitem(sys.modules, "psycopg_pool", type(sys)("psycopg_pool"))
    assert checks.check_database_pool() == []


def test_e017_ignores_pool_of_other_engines(settings: Any,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    pooled_databases(settings, engine="django.db.backends.oracle")
    monkeypatch.setitem(sys.modules, "psycopg_pool", None)
    assert checks.check_database_pool() == []


def test_e017_postgis_counts(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pooled_databases(settings, engine="django.contrib.gis.db.backends.postgis")
    monkeypatch.setitem(sys.modules, "psycopg_pool", None)
    assert ids(checks.check_database_pool()) == {checks.Codes.POOL_WITHOUT_PSYCOPG_POOL}


# E099: a check that fails reports instead of crashing ---------------------------------------


def test_e099_a_failing_check_is_reported(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(ratelimit_checks, "limits_errors", boom)
    failed = [m for m in run(settings) if m.id == checks.Codes.CHECK_FAILED]
    assert {m.msg.split()[0] for m in failed} == {"check_rate_limits", "check_ratelimit_values"}
    assert all("boom" in m.msg for m in failed)


GARBAGE = [None, True, -1, 1.5, math.nan, "x", b"x", ["x"], ("x",), {"x": "y"}, {1: None},
           {"read": {"x": 1}}, object()]


@pytest.mark.parametrize("key", list(conf.DEFAULTS))
@pytest.mark.parametrize("value", GARBAGE)
def test_garbage_never_crashes_a_check(settings: Any, key: str, value: Any) -> None:
    settings.CACHES = LOCMEM
    messages = run(settings, **{key: value})
    assert checks.Codes.CHECK_FAILED not in ids(messages)


@pytest.mark.parametrize("value", GARBAGE)
def test_garbage_inside_circuits_and_tiers_never_crashes(settings: Any, value: Any) -> None:
    config = {
        "CIRCUIT_DEFAULTS": {"window": value, "ignore_exceptions": value},
        "CIRCUITS": {"crm.read": {"reset_timeout": value, "record_exceptions": value}},
        "TIERS": {"free": {"read": value}, "anonymous": {"write": [value]}},
        "ENDPOINTS": {"contact-list": {"rpc": value}},
        "FAIL_OPEN": {"read": value},
    }
    assert checks.Codes.CHECK_FAILED not in ids(run(settings, **config))


# Warnings ----------------------------------------------------------------------------------


def test_w001_snapshot_ttl_above_one_second(settings: Any) -> None:
    messages = run(settings, SNAPSHOT_TTL=2)
    assert error_ids(messages) == set()
    warning = only(messages, checks.Codes.SNAPSHOT_TTL_SLOW)
    assert warning.msg.startswith('RESILIENCE_CRM["SNAPSHOT_TTL"] is 2: ')


@pytest.mark.parametrize("store", ["memory", "tests.test_checks.NotSharedStore"])
def test_w002_per_process_store_in_production(settings: Any, store: str) -> None:
    settings.CACHES = REDIS
    settings.DEBUG = False
    messages = run(settings, STORE=store)
    assert ids(messages) == {checks.Codes.STORE_PER_PROCESS}
    assert f"selects {store!r}" in messages[0].msg


@pytest.mark.parametrize("store", ["auto", "database", "redis", "postgres"])
def test_w002_not_for_shared_or_broken_stores(settings: Any, store: str) -> None:
    settings.CACHES = REDIS
    settings.DEBUG = False
    assert checks.Codes.STORE_PER_PROCESS not in ids(run(settings, STORE=store))


def test_w002_not_in_development(settings: Any) -> None:
    settings.CACHES = REDIS
    settings.DEBUG = True
    assert run(settings, STORE="memory") == []


@pytest.mark.parametrize(("caches", "why"), [(LOCMEM, "inside each process"), (DUMMY, "no data")])
def test_w003_per_process_cache_in_production(settings: Any, caches: Any, why: str) -> None:
    settings.CACHES = caches
    settings.DEBUG = False
    messages = run(settings)
    assert ids(messages) == {checks.Codes.CACHE_PER_PROCESS}
    assert why in messages[0].msg
    assert "'default'" in messages[0].msg


def test_w003_file_based_cache_is_shared_enough(settings: Any, tmp_path: Any) -> None:
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
                                   "LOCATION": str(tmp_path)}}
    settings.DEBUG = False
    assert run(settings) == []


def test_w003_not_in_development(settings: Any) -> None:
    settings.CACHES = LOCMEM
    settings.DEBUG = True
    assert run(settings) == []


def test_warnings_do_not_fail_manage_py_check(settings: Any) -> None:
    settings.CACHES = LOCMEM
    settings.DEBUG = False
    settings.RESILIENCE_CRM = {"SNAPSHOT_TTL": 5}
    call_command("check", "--tag", checks.TAG)  # warnings are printed, not raised


def with_atomic_requests(settings: Any, alias: str = "default") -> None:
    databases = {name: dict(db) for name, db in settings.DATABASES.items()}
    databases[alias] = {**databases["default"], "ATOMIC_REQUESTS": True}
    settings.DATABASES = databases


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")  # read by the check only
def test_w004_database_store_inside_atomic_requests(settings: Any) -> None:
    settings.CACHES = REDIS
    with_atomic_requests(settings)
    messages = run(settings, STORE="database")
    assert ids(messages) == {checks.Codes.STORE_IN_REQUEST_TRANSACTION}
    assert "'default'" in messages[0].msg
    assert "DATABASE_ALIAS" in messages[0].hint


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")  # read by the check only
@pytest.mark.parametrize("config", [{"STORE": "redis"}, {"STORE": "memory"}])
def test_w004_not_for_stores_outside_the_database(settings: Any, config: Any) -> None:
    settings.CACHES = REDIS
    with_atomic_requests(settings)
    assert checks.Codes.STORE_IN_REQUEST_TRANSACTION not in ids(run(settings, **config))


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")  # read by the check only
def test_w004_not_when_the_app_has_its_own_alias(settings: Any) -> None:
    with_atomic_requests(settings)
    settings.DATABASES = {**settings.DATABASES, "resilience": {
        **settings.DATABASES["default"], "ATOMIC_REQUESTS": False}}
    messages = run(settings, STORE="database", DATABASE_ALIAS="resilience")
    assert checks.Codes.STORE_IN_REQUEST_TRANSACTION not in ids(messages)


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")  # read by the check only
@pytest.mark.urls("tests.atomic_urls")
def test_w005_names_each_view_that_calls_protected_inside_atomic_requests(
        settings: Any) -> None:
    with_atomic_requests(settings)
    messages = [message for message in run(settings)
                if message.id == checks.Codes.VIEW_IN_REQUEST_TRANSACTION]
    routes = [message.msg.split("'")[1] for message in messages]
    # Not the marked ones (decorated, or with the mixin), nor the one without protected.
    assert routes == ["contacts/<int:pk>/", "report/", "^reports/$"]
    assert "'default'" in messages[0].msg
    assert "non_atomic" in messages[0].hint


@pytest.mark.urls("tests.atomic_urls")
def test_w005_not_without_atomic_requests(settings: Any) -> None:
    assert checks.Codes.VIEW_IN_REQUEST_TRANSACTION not in ids(run(settings))


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")  # read by the check only
def test_w005_not_for_the_demo_whose_views_are_marked(settings: Any) -> None:
    with_atomic_requests(settings)
    assert checks.Codes.VIEW_IN_REQUEST_TRANSACTION not in ids(run(settings))


def test_e008_importable_exception_classes_pass(settings: Any) -> None:
    messages = run(settings, CIRCUITS={"crm.rpc": {
        "record_exceptions": ["builtins.OSError", "django.db.OperationalError"],
        "ignore_exceptions": ["resilience_crm.exceptions.RateLimited"]}})
    assert error_ids(messages) == set()


@pytest.mark.parametrize("token", ["", 42, ["a"]])
def test_e018_monitoring_token(settings: Any, token: Any) -> None:
    error = only(run(settings, MONITORING_TOKEN=token), checks.Codes.MONITORING_ACCESS_INVALID)
    assert error.msg == (
        f'RESILIENCE_CRM["MONITORING_TOKEN"] must be None or a non-empty string, not {token!r}.')
    assert error_ids(run(settings, MONITORING_TOKEN="s3cret")) == set()
# E030 - E036, W020 - W022: rate limiting ---------------------------------------------------


class PerProcessLimiter(MemoryLimiterStore):
    pass


def not_callable_resolver() -> None:  # the module attribute below is what E032 sees
    pass


NOT_CALLABLE = 42


@pytest.mark.parametrize(("store", "reason"), [
    ("nowhere.Store", "cannot import"),
    ("tests.test_checks.NotAStore", "not a subclass"),
    (3, "it is a int"),
])
def test_e030_ratelimit_store_invalid(settings: Any, store: Any, reason: str) -> None:
    error = only(run(settings, **{"RATELIMIT_STORE": store}), checks.Codes.RATELIMIT_STORE_INVALID)
    assert reason in error.msg


@pytest.mark.parametrize("store", ["auto", "memory", "tests.test_checks.PerProcessLimiter"])
def test_e030_known_limiter_stores_pass(settings: Any, store: str) -> None:
    assert checks.Codes.RATELIMIT_STORE_INVALID not in ids(run(settings,
                                                                **{"RATELIMIT_STORE": store}))


def test_e031_redis_limiter_store_without_redis_cache(settings: Any) -> None:
    only(run(settings, **{"RATELIMIT_STORE": "redis"}),
         checks.Codes.RATELIMIT_STORE_REDIS_WITHOUT_REDIS_CACHE)


class OwnThrottle(TierRateThrottle):
    pass


MIDDLEWARE_PATH = "resilience_crm.middleware.ResilienceMiddleware"


@pytest.mark.parametrize("throttle", ["resilience_crm.throttling.TierRateThrottle",
                                      "tests.test_checks.OwnThrottle", OwnThrottle])
def test_w024_a_refusal_without_the_middleware_nor_the_handler(settings: Any,
                                                               throttle: Any) -> None:
    settings.MIDDLEWARE = [name for name in settings.MIDDLEWARE if name != MIDDLEWARE_PATH]
    settings.REST_FRAMEWORK = {"DEFAULT_THROTTLE_CLASSES": [throttle]}
    warning = only(run(settings), checks.Codes.REFUSAL_WITHOUT_SHAPE)
    assert "plain 429" in warning.msg and MIDDLEWARE_PATH in warning.hint


@pytest.mark.parametrize(("middleware", "rest"), [
    (True, {}),  # the middleware answers the refusal
    (False, {"EXCEPTION_HANDLER": "resilience_crm.drf.exception_handler"}),
    (False, {"EXCEPTION_HANDLER": drf.exception_handler}),
])
def test_w024_either_one_keeps_the_shape(settings: Any, middleware: bool,
                                         rest: dict[str, Any]) -> None:
    settings.MIDDLEWARE = [name for name in settings.MIDDLEWARE if name != MIDDLEWARE_PATH] + (
        [MIDDLEWARE_PATH] if middleware else [])
    settings.REST_FRAMEWORK = {
        "DEFAULT_THROTTLE_CLASSES": ["resilience_crm.throttling.TierRateThrottle"], **rest}
    assert checks.Codes.REFUSAL_WITHOUT_SHAPE not in ids(run(settings))


def test_w024_not_without_the_throttle(settings: Any) -> None:
    settings.MIDDLEWARE = [name for name in settings.MIDDLEWARE if name != MIDDLEWARE_PATH]
    settings.REST_FRAMEWORK = {"DEFAULT_THROTTLE_CLASSES": ["nowhere.Throttle"]}
    assert checks.Codes.REFUSAL_WITHOUT_SHAPE not in ids(run(settings))


@pytest.mark.parametrize(("resolver", "reason"), [
    ("nowhere.resolve", "cannot import"),
    ("tests.test_checks.NOT_CALLABLE", "not callable"),
    (42, "it is a int"),
])
def test_e032_tier_resolver_invalid(settings: Any, resolver: Any, reason: str) -> None:
    error = only(run(settings, **{"TIER_RESOLVER": resolver}), checks.Codes.TIER_RESOLVER_INVALID)
    assert reason in error.msg


def test_e032_tier_resolver_valid(settings: Any) -> None:
    config = {"TIER_RESOLVER": "tests.test_checks.not_callable_resolver"}
    assert not error_ids(run(settings, **config))


@pytest.mark.parametrize(("key", "value"), [
    ("SHADOW_TIERS", "free"), ("SHADOW_TIERS", [1]), ("SHADOW_ENDPOINTS", None),
])
def test_e033_shadow_invalid(settings: Any, key: str, value: Any) -> None:
    only(run(settings, **{key: value}), checks.Codes.SHADOW_INVALID)


@pytest.mark.parametrize("value", [0, -0.5, 1.5, "0.5", None, math.nan])
def test_e034_adaptive_factor_invalid(settings: Any, value: Any) -> None:
    only(run(settings, **{"ADAPTIVE_FACTOR": value}), checks.Codes.ADAPTIVE_FACTOR_INVALID)


@pytest.mark.parametrize("value", [0.1, 0.5, 1])
def test_e034_adaptive_factor_valid(settings: Any, value: float) -> None:
    assert not error_ids(run(settings, **{"ADAPTIVE_FACTOR": value}))


@pytest.mark.parametrize("config", [
    {"EXEMPT_STAFF": "yes"}, {"EXEMPT_PERMISSION": "nodot"}, {"EXEMPT_PERMISSION": "a.b.c"},
    {"EXEMPT_PERMISSION": ".x"}, {"EXEMPT_PERMISSION": 1},
])
def test_e035_exemption_invalid(settings: Any, config: dict[str, Any]) -> None:
    only(run(settings, **config), checks.Codes.EXEMPTION_INVALID)


def test_e035_exemption_valid(settings: Any) -> None:
    config = {"EXEMPT_STAFF": True, "EXEMPT_PERMISSION": "crm.unlimited_api"}
    assert not error_ids(run(settings, **config))


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "4"])
def test_e036_expected_processes_invalid(settings: Any, value: Any) -> None:
    only(run(settings, **{"EXPECTED_PROCESSES": value}), checks.Codes.EXPECTED_PROCESSES_INVALID)


@pytest.mark.parametrize("config", [
    {"EXPECTED_PROCESSES": 4, "RATELIMIT_STORE": "memory"},
    {"EXPECTED_PROCESSES": 2, "RATELIMIT_STORE": "tests.test_checks.PerProcessLimiter"},
])
def test_w020_per_process_limiter_with_several_processes(settings: Any,
                                                          config: dict[str, Any]) -> None:
    only(run(settings, **config), checks.Codes.RATELIMIT_STORE_PER_PROCESS)


@pytest.mark.parametrize("store", ["database",
                                   "resilience_crm.ratelimit.stores.database.DatabaseLimiterStore"])
def test_e037_database_limiter_store_on_sqlite(settings: Any, store: str) -> None:
    lite = {**connection.settings_dict, "ENGINE": "django.db.backends.sqlite3",
            "NAME": ":memory:", "OPTIONS": {}}
    with extra_database("lite", lite):
        error = only(run(settings, **{"RATELIMIT_STORE": store, "DATABASE_ALIAS": "lite"}),
                     checks.Codes.RATELIMIT_STORE_DATABASE_NOT_POSTGRESQL)
        assert "'lite' the app's tables live on is SQLite" in error.msg
        # auto never picks it there.
        assert checks.Codes.RATELIMIT_STORE_DATABASE_NOT_POSTGRESQL not in ids(
            run(settings, **{"DATABASE_ALIAS": "lite"}))


def test_e037_not_on_postgresql(settings: Any) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the test database is not PostgreSQL")
    assert checks.Codes.RATELIMIT_STORE_DATABASE_NOT_POSTGRESQL not in ids(
        run(settings, **{"RATELIMIT_STORE": "database"}))


@pytest.mark.parametrize("value", [0, -1, 31, True, "0.5", float("nan"), None])
def test_e038_ratelimit_store_timeout_invalid(settings: Any, value: Any) -> None:
    only(run(settings, **{"RATELIMIT_STORE_TIMEOUT": value}),
         checks.Codes.RATELIMIT_STORE_TIMEOUT_INVALID)


def test_w020_with_auto_exactly_when_no_store_is_shared(settings: Any) -> None:
    """``auto`` without Redis keeps the limits in PostgreSQL, shared by every process; on
    another database, in each process: the warning says so exactly then."""
    messages = ids(run(settings, **{"EXPECTED_PROCESSES": 4}))
    per_process = connection.vendor != "postgresql"
    assert (checks.Codes.RATELIMIT_STORE_PER_PROCESS in messages) is per_process


def test_w020_not_with_one_process(settings: Any) -> None:
    assert checks.Codes.RATELIMIT_STORE_PER_PROCESS not in ids(run(settings, **{}))


def test_w020_not_with_redis(settings: Any) -> None:
    settings.CACHES = {"default": {"BACKEND": "django_redis.cache.RedisCache",
                                   "LOCATION": "redis://127.0.0.1:1/0"}}
    assert checks.Codes.RATELIMIT_STORE_PER_PROCESS not in ids(
        run(settings, **{"EXPECTED_PROCESSES": 8}))


def test_w021_tier_cache_ttl_above_one_second(settings: Any) -> None:
    only(run(settings, **{"TIER_CACHE_TTL": 5}), checks.Codes.TIER_CACHE_TTL_SLOW)


def test_e015_tier_cache_ttl_negative(settings: Any) -> None:
    error = only(run(settings, **{"TIER_CACHE_TTL": -1}), checks.Codes.DURATION_INVALID)
    assert "TIER_CACHE_TTL" in error.msg


def test_w022_shadow_tier_unknown(settings: Any) -> None:
    warning = only(run(settings, **{"SHADOW_TIERS": ["free", "platinum"]}),
                   checks.Codes.SHADOW_TIER_UNKNOWN)
    assert "platinum" in warning.msg


@pytest.mark.parametrize(("value", "code"), [
    ("1000/s", checks.Codes.LIMITS_SHAPE),
    ({"write": "lots"}, checks.Codes.RATE_INVALID),
    ({"wirte": "10/s"}, checks.Codes.OP_CLASS_UNKNOWN),
])
def test_global_limits_are_validated_like_tiers(settings: Any, value: Any, code: str) -> None:
    error = only(run(settings, **{"GLOBAL_LIMITS": value}), code)
    assert "GLOBAL_LIMITS" in error.msg
# The app's database alias (W030, W031) -----------------------------------------------------


def with_app_alias(settings: Any, routers: tuple[str, ...] = ("resilience_crm.routers."
                                                             "ResilienceRouter",),
                   **changes: Any) -> list[CheckMessage]:
    settings.DATABASES = {**settings.DATABASES,
                          "app": {**settings.DATABASES["default"], **changes}}
    settings.DATABASE_ROUTERS = list(routers)
    return run(settings, DATABASE_ALIAS="app")


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")  # read by the check only
def test_a_second_alias_of_the_same_database_with_the_router_is_fine(settings: Any) -> None:
    messages = with_app_alias(settings, ATOMIC_REQUESTS=False)
    assert not ids(messages) & {checks.Codes.DATABASE_ALIAS_OTHER_DATABASE,
                                checks.Codes.DATABASE_ALIAS_WITHOUT_ROUTER}


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")  # read by the check only
def test_w030_an_alias_of_another_database(settings: Any) -> None:
    messages = with_app_alias(settings, NAME="another_database", HOST="db2.example")
    message = only(messages, checks.Codes.DATABASE_ALIAS_OTHER_DATABASE)
    assert "cannot cross databases" in message.msg
    assert "'app'" in message.hint


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")  # read by the check only
def test_w031_an_alias_without_the_router(settings: Any) -> None:
    message = only(with_app_alias(settings, routers=()), checks.Codes.DATABASE_ALIAS_WITHOUT_ROUTER)
    assert "DATABASE_ROUTERS" in message.hint


@pytest.mark.parametrize("value", ["30/fortnight", 30, "0/min", ["30/min"]])
def test_auth_failures_must_be_one_rate_or_none(settings, value) -> None:
    messages = run(settings, AUTH_FAILURES=value)
    assert error_ids(messages) == {checks.Codes.RATE_INVALID}
    assert only(messages, checks.Codes.RATE_INVALID).msg.startswith(
        'RESILIENCE_CRM["AUTH_FAILURES"] is not a valid rate')
    assert not error_ids(run(settings, AUTH_FAILURES=None))
    assert not error_ids(run(settings, AUTH_FAILURES="5/10s"))


# E050, W050: read replicas -------------------------------------------------------------------


@pytest.mark.parametrize(("replicas", "reason"), [
    ("replica", "it is a str"), (["nowhere"], "nowhere is not one"),
])
def test_e050_read_replicas_must_name_databases(settings: Any, replicas: Any,
                                                reason: str) -> None:
    error = only(run(settings, READ_REPLICAS=replicas), checks.Codes.READ_REPLICAS_INVALID)
    assert reason in error.msg and "default" in error.hint


def test_w050_read_replicas_need_the_router_first(settings: Any) -> None:
    replica = ["resilience"]  # the suite's second alias (tests/settings.py)
    settings.DATABASE_ROUTERS = ["tests.test_replicas.OnTheTestPrimary",
                                 "resilience_crm.routers.ResilienceRouter"]
    only(run(settings, READ_REPLICAS=replica), checks.Codes.READ_REPLICAS_WITHOUT_ROUTER)
    settings.DATABASE_ROUTERS = ["resilience_crm.routers.ResilienceRouter"]
    assert checks.Codes.READ_REPLICAS_WITHOUT_ROUTER not in ids(
        run(settings, READ_REPLICAS=replica))


def test_e015_max_replica_lag_is_a_duration(settings: Any) -> None:
    only(run(settings, MAX_REPLICA_LAG=-1), checks.Codes.DURATION_INVALID)
