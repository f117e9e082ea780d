"""System checks for the ``RESILIENCE_CRM`` settings dict: the shared machinery, and the
checks on what every feature shares (the dict itself, the cache, the databases).

They run on ``manage.py check``, ``runserver``, ``migrate`` and the test runner, under the
tag ``resilience_crm`` (``manage.py check --tag resilience_crm`` runs only these). Ids are
stable: silence one with ``SILENCED_SYSTEM_CHECKS``. A check never raises on a malformed
configuration; it reports it.

Each feature checks its own settings in its ``checks.py`` (``breakers/``, ``ratelimit/``,
``provider/``, ``observability/``), with its messages in a :func:`table`; ``AppConfig.ready``
imports them all in one place. ``database_checks`` holds those on the app's databases.
"""

from __future__ import annotations

import difflib
import importlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from django.conf import settings as django_settings
from django.core.checks import CheckMessage, Error, Tags, register
from django.core.checks import Warning as CheckWarning
from django.utils.module_loading import import_string

from resilience_crm import conf

TAG = "resilience_crm"
SETTING = conf.SETTING_NAME

#: Settings that take a number of seconds (or days) and must not be negative.
DURATION_KEYS = (
    "FALLBACK_TTL", "FALLBACK_STALE_TTL", "MAX_REPLICA_LAG", "METRICS_RETENTION_DAYS",
    "SNAPSHOT_TTL", "STORE_RETRY_INTERVAL", "TIER_CACHE_TTL",
)
#: Cache backends whose contents one process cannot share with another.
PER_PROCESS_CACHES = {
    "django.core.cache.backends.locmem.LocMemCache": "keeps its data inside each process",
    "django.core.cache.backends.dummy.DummyCache": "keeps no data at all",
}
#: Parts of an ENGINE path that mark a PostgreSQL backend, whose pool is psycopg_pool.
POSTGRES_ENGINES = ("postgresql", "postgis")
#: The longest ``SNAPSHOT_TTL`` or ``TIER_CACHE_TTL`` that keeps the promise "an admin change
#: reaches every worker within one second".
MAX_SNAPSHOT_TTL = 1
#: django-redis's serializer when a cache's OPTIONS name none.
PICKLE_SERIALIZER = "django_redis.serializers.pickle.PickleSerializer"


@dataclass(frozen=True)
class Check:
    """One message a check can give: its stable id, its text and its hint."""

    id: str
    message: str
    hint: str | None = None
    warning: bool = False

    def hint_for(self, **fields: Any) -> str:
        """The usual hint, formatted with ``fields``."""
        return (self.hint or "").format(**fields)

    def __call__(self, *, hint: str | None = None, **fields: Any) -> CheckMessage:
        """The message, its text formatted with ``fields``; ``hint`` replaces the usual one."""
        level = CheckWarning if self.warning else Error
        return level(self.message.format(**fields), hint=self.hint if hint is None else hint,
                     id=self.id)


#: Every message the checks give, by key, from every feature's :func:`table`; ids never
#: change (silence them by id).
CHECKS: dict[str, Check] = {}
#: The ids by key, for ``SILENCED_SYSTEM_CHECKS`` lists and tests: ``Codes.UNKNOWN_KEY``.
Codes = SimpleNamespace()


def table(checks: dict[str, Check]) -> dict[str, Check]:
    """Add a module's messages to :data:`CHECKS` and :data:`Codes`; a key or an id given
    twice is a bug, refused at import."""
    for key, check in checks.items():
        if key in CHECKS or any(known.id == check.id for known in CHECKS.values()):
            raise ValueError(f"check {key} ({check.id}) is defined twice")
        CHECKS[key] = check
        setattr(Codes, key, check.id)
    return checks


MESSAGES = table({
    "SETTING_NOT_DICT": Check(
        "resilience_crm.E001",
        "settings.RESILIENCE_CRM must be a dict, not {type}.",
        "Set RESILIENCE_CRM = {...} with the keys described in docs/settings.md.",
    ),
    "UNKNOWN_KEY": Check(
        "resilience_crm.E002",
        "{path} is not a resilience_crm setting.",
        "Valid keys: {valid}.",
    ),
    "CACHE_ALIAS_UNKNOWN": Check(
        "resilience_crm.E011",
        "{path} is {value!r}, which is not a cache in settings.CACHES.",
        "Caches: {valid}.",
    ),
    "DATABASE_ALIAS_UNKNOWN": Check(
        "resilience_crm.E012",
        "{path} is {value!r}, which is not a database in settings.DATABASES.",
        "Use None for the default database, or one of: {valid}.",
    ),
    "DURATION_INVALID": Check(
        "resilience_crm.E015",
        "{path} must be a number of at least 0, not {value!r}.",
        "Use 0 to turn it off, where that is meaningful.",
    ),
    "POOL_WITHOUT_PSYCOPG_POOL": Check(
        "resilience_crm.E017",
        (
            'settings.DATABASES["{alias}"]["OPTIONS"]["pool"] is set but psycopg_pool cannot be '
            "imported."
        ),
        'pip install "django-resilience-crm[postgres]" (psycopg[pool] and psycopg-pool).',
    ),
    "CHECK_FAILED": Check(
        "resilience_crm.E099",
        "{check} could not check settings.RESILIENCE_CRM: {error!r}.",
        "This is a bug in resilience_crm; please report it with your settings.",
    ),
    "CACHE_PER_PROCESS": Check(
        "resilience_crm.W003",
        (
            'The cache {alias!r} that RESILIENCE_CRM["CACHE_ALIAS"] names uses {backend!r}, which '
            "{why}: with more than one worker, rate limits and fallback data are not shared."
        ),
        (
            'Point RESILIENCE_CRM["CACHE_ALIAS"] at a Redis cache (django-redis) when the app runs '
            "in more than one process. Silence this warning if it never does."
        ), warning=True,
    ),
    "CACHE_PICKLES": Check(
        "resilience_crm.W014",
        (
            "The cache {alias!r} that RESILIENCE_CRM[\"CACHE_ALIAS\"] names pickles its values: "
            "whoever can write to that Redis can run code in every worker that reads them, or "
            "plant a cached value such as a token's user."
        ),
        (
            'Add "SERIALIZER": "resilience_crm.cache_serializer.SignedJSONSerializer" to the '
            "cache's OPTIONS."
        ),
        warning=True,
    ),
})

#: Hints that replace a check's usual one where there is something closer to say.
HINT_UNKNOWN_KEY_CLOSE = "Did you mean {close!r}? Valid keys: {valid}."


# Helpers for every feature's checks ----------------------------------------------------------


def setting_path(*keys: Any) -> str:
    """``RESILIENCE_CRM["CIRCUITS"]["crm.read"]`` for keys ``("CIRCUITS", "crm.read")``."""
    return SETTING + "".join(f'["{key}"]' if isinstance(key, str) else f"[{key!r}]"
                             for key in keys)


def type_name(value: Any) -> str:
    return type(value).__name__


def listing(values: Iterable[Any]) -> str:
    """``values`` as the comma-separated list a hint shows."""
    return ", ".join(str(value) for value in values) or "(none)"


def _closest(word: Any, choices: Iterable[str]) -> str | None:
    if not isinstance(word, str):
        return None
    matches = difflib.get_close_matches(word, list(choices), n=1)
    if not matches:
        upper = {choice.upper(): choice for choice in choices}
        return upper.get(word.upper())
    return matches[0]


def choice_hint(word: Any, choices: Iterable[str], plain: str | None, close: str) -> str:
    """``close`` when ``word`` looks like a misspelt choice, else ``plain``."""
    choices = list(choices)
    match = _closest(word, choices)
    valid = listing(choices)
    return close.format(close=match, valid=valid) if match else (plain or "").format(valid=valid)


def is_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def subclass_at(path: str, base: type) -> tuple[type | None, str]:
    """The subclass of ``base`` that the dotted ``path`` names, or ``None`` and why not."""
    try:
        cls = import_string(path)
    except ImportError as err:
        return None, f"cannot import it: {err}"
    except Exception as err:  # noqa: BLE001  (importing user code may raise anything)
        return None, f"importing it raised {err!r}"
    if not (isinstance(cls, type) and issubclass(cls, base)):
        return None, f"it is not a subclass of {base.__module__}.{base.__qualname__}"
    return cls, ""


def merged_settings() -> dict[str, Any] | None:
    """``DEFAULTS`` overlaid with the user's settings, or ``None`` when those are not a dict."""
    user = getattr(django_settings, SETTING, None)
    if user is None:
        return dict(conf.DEFAULTS)
    return conf.DEFAULTS | user if isinstance(user, dict) else None


def redis_cache_alias() -> str | None:
    """``CACHE_ALIAS`` when it names a django-redis cache of ``CACHES``, else ``None``."""
    config = merged_settings()
    alias = None if config is None else config["CACHE_ALIAS"]
    if (not isinstance(alias, str) or alias not in django_settings.CACHES
            or not conf.cache_is_redis(alias)):
        return None
    return alias


def settings_check(*tags: str) -> Callable[[Callable[[dict[str, Any]], list[CheckMessage]]],
                                           Any]:
    """Register a check on the merged settings; it is skipped when they are not a dict, and
    anything it raises is reported (E099) rather than breaking ``manage.py``."""

    def decorate(func: Callable[[dict[str, Any]], list[CheckMessage]]) -> Any:
        def check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
            config = merged_settings()
            if config is None:
                return []
            try:
                return func(config)
            except Exception as err:  # noqa: BLE001  (a check must report, never crash)
                return [CHECKS["CHECK_FAILED"](check=func.__name__, error=err)]

        # Not functools.wraps: Django inspects the signature, which must take **kwargs.
        check.__name__, check.__qualname__ = func.__name__, func.__qualname__
        check.__doc__, check.__module__ = func.__doc__, func.__module__
        return register(TAG, *tags)(check)

    return decorate


def pooled_databases() -> Iterator[tuple[str, Any]]:
    """``(alias, OPTIONS["pool"])`` of each PostgreSQL database in ``DATABASES`` that pools
    its connections (psycopg_pool)."""
    for alias, database in django_settings.DATABASES.items():
        if not isinstance(database, dict):
            continue
        options = database.get("OPTIONS")
        pool = options.get("pool") if isinstance(options, dict) else None
        if pool and is_postgres(database):
            yield alias, pool


def is_postgres(database: Mapping[str, Any]) -> bool:
    """Whether a ``DATABASES`` entry's ``ENGINE`` is PostgreSQL's (or a backend built on it)."""
    engine = str(database.get("ENGINE", ""))
    return any(name in engine for name in POSTGRES_ENGINES)


# Checks ---------------------------------------------------------------------------------


@register(TAG)
def check_setting_type(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    value = getattr(django_settings, SETTING, None)
    if value is None or isinstance(value, dict):
        return []
    return [CHECKS["SETTING_NOT_DICT"](type=type_name(value))]


@settings_check()
def check_unknown_keys(config: dict[str, Any]) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    for key in config:
        if key not in conf.DEFAULTS:
            hint = choice_hint(key, conf.DEFAULTS, CHECKS["UNKNOWN_KEY"].hint,
                               HINT_UNKNOWN_KEY_CLOSE)
            errors.append(CHECKS["UNKNOWN_KEY"](path=setting_path(key), hint=hint))
    return errors


@settings_check()
def check_durations(config: dict[str, Any]) -> list[CheckMessage]:
    """Durations are numbers of at least 0 (what each one means is its feature's check)."""
    return [CHECKS["DURATION_INVALID"](path=setting_path(key), value=config[key])
            for key in DURATION_KEYS if not is_number(config[key]) or config[key] < 0]


@settings_check(Tags.caches)
def check_aliases(config: dict[str, Any]) -> list[CheckMessage]:
    """``CACHE_ALIAS`` names a cache; ``DATABASE_ALIAS`` a database, or ``None``."""
    errors: list[CheckMessage] = []
    for key, check, known in (
            ("CACHE_ALIAS", "CACHE_ALIAS_UNKNOWN", django_settings.CACHES),
            ("DATABASE_ALIAS", "DATABASE_ALIAS_UNKNOWN", django_settings.DATABASES)):
        value = config[key]
        if (value is None and key == "DATABASE_ALIAS") or (
                isinstance(value, str) and value in known):
            continue
        errors.append(CHECKS[check](path=setting_path(key), value=value,
                                    hint=CHECKS[check].hint_for(valid=listing(known))))
    return errors


@settings_check(Tags.caches)
def check_cache_shared(config: dict[str, Any]) -> list[CheckMessage]:
    """Warn when the cache is per process outside development (``DEBUG = False``)."""
    alias = config["CACHE_ALIAS"]
    if django_settings.DEBUG or not isinstance(alias, str) or alias not in (
            django_settings.CACHES):
        return []
    backend = conf.cache_backend(alias)
    if backend not in PER_PROCESS_CACHES:
        return []
    return [CHECKS["CACHE_PER_PROCESS"](alias=alias, backend=backend,
                                        why=PER_PROCESS_CACHES[backend])]


@register(TAG, Tags.caches, Tags.security, deploy=True)
def check_cache_serializer(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Deployment check: a Redis cache that pickles runs code whoever writes to it chose."""
    alias = redis_cache_alias()
    if alias is None:
        return []
    options = django_settings.CACHES[alias].get("OPTIONS")
    serializer = options.get("SERIALIZER") if isinstance(options, dict) else None
    if (serializer or PICKLE_SERIALIZER) != PICKLE_SERIALIZER:
        return []
    return [CHECKS["CACHE_PICKLES"](alias=alias)]


@register(TAG, Tags.database)
def check_database_pool(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """PostgreSQL's ``OPTIONS["pool"]`` needs psycopg_pool, which Django imports only on the
    first connection; say so at start-up instead."""
    pooled = [alias for alias, _ in pooled_databases()]
    if not pooled:
        return []
    try:
        importlib.import_module("psycopg_pool")
    except ImportError:
        return [CHECKS["POOL_WITHOUT_PSYCOPG_POOL"](alias=alias) for alias in pooled]
    return []
