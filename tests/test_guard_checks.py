"""System checks on the query guard's settings (``PROTECT_QUERIES``, ``QUERY_TIMEOUT``)."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from django.core.checks import run_checks

from crm_demo import settings as demo
from resilience_crm import checks, conf
from tests.test_checks import LOCMEM, ids, only, run

GUARDED = "resilience_crm.guard.backends.postgresql"


@pytest.fixture
def databases(settings: Any) -> Any:
    """The test database (``default``, on the guard's backend) and three more aliases."""
    settings.CACHES = LOCMEM
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Overriding setting DATABASES can lead to ..."
        settings.DATABASES = settings.DATABASES | {
            "app": {"ENGINE": GUARDED, "NAME": "crm"},
            "plain": {"ENGINE": "django.db.backends.postgresql", "NAME": "crm"},
            "lite": {"ENGINE": "resilience_crm.guard.backends.sqlite3", "NAME": ":memory:"},
        }
    return settings


def test_the_guard_is_off_by_default(databases: Any) -> None:
    assert conf.DEFAULTS["PROTECT_QUERIES"] == {} and conf.DEFAULTS["QUERY_TIMEOUT"] == {}
    assert not ids(run(databases)) & {"resilience_crm.E040", "resilience_crm.E041",
                                     "resilience_crm.E042", "resilience_crm.W040"}


def test_a_guarded_alias_with_its_own_tables_elsewhere_is_clean(databases: Any) -> None:
    messages = run(databases, PROTECT_QUERIES={"default": "crm.db"}, DATABASE_ALIAS="app",
                   QUERY_TIMEOUT={"default": 5})
    assert not {m.id for m in messages} & {"resilience_crm.E040", "resilience_crm.E041",
                                           "resilience_crm.E042", "resilience_crm.W040"}


@pytest.mark.parametrize("value", [["default"], {"default": ""}, {"default": 3}, "crm.db"])
def test_e040_protect_queries_maps_aliases_to_circuit_names(databases: Any, value: Any) -> None:
    error = only(run(databases, PROTECT_QUERIES=value), "resilience_crm.E040")
    assert 'RESILIENCE_CRM["PROTECT_QUERIES"]' in error.msg


def test_e041_the_alias_must_be_a_database(databases: Any) -> None:
    error = only(run(databases, PROTECT_QUERIES={"defualt": "crm.db"}), "resilience_crm.E041")
    assert "'defualt'" in error.msg
    assert "default" in error.hint


def test_e042_the_alias_must_use_a_guard_backend(databases: Any) -> None:
    error = only(run(databases, PROTECT_QUERIES={"plain": "crm.db"}), "resilience_crm.E042")
    assert "django.db.backends.postgresql" in error.msg
    assert "resilience_crm.guard.backends.postgresql" in error.hint
    assert "resilience_crm.E042" not in ids(run(databases, PROTECT_QUERIES={"lite": "crm.db"}))


@pytest.mark.parametrize("value", [{"default": 0}, {"default": "5s"}, {"lite": 5}, [5]])
def test_e040_query_timeout_gives_seconds_to_postgresql_aliases(databases: Any,
                                                                 value: Any) -> None:
    error = only(run(databases, QUERY_TIMEOUT=value), "resilience_crm.E040")
    assert 'RESILIENCE_CRM["QUERY_TIMEOUT"]' in error.msg


def test_e041_query_timeout_names_a_database(databases: Any) -> None:
    only(run(databases, QUERY_TIMEOUT={"nope": 5}), "resilience_crm.E041")


@pytest.mark.parametrize("alias", [None, "default"])
def test_w040_the_apps_own_tables_on_the_guarded_alias(databases: Any, alias: Any) -> None:
    warning = only(run(databases, PROTECT_QUERIES={"default": "crm.db"}, DATABASE_ALIAS=alias),
                   "resilience_crm.W040")
    assert "'crm.db'" in warning.msg
    assert "DATABASE_ALIAS" in warning.hint


def test_a_circuit_not_in_circuits_is_made_with_the_defaults(databases: Any) -> None:
    databases.RESILIENCE_CRM = {"PROTECT_QUERIES": {"default": "crm.db"},
                                "DATABASE_ALIAS": "app", "CIRCUIT_DEFAULTS": {"reset_timeout": 7}}
    assert "crm.db" in conf.settings.circuit_names()
    assert conf.settings.circuit_config("crm.db")["reset_timeout"] == 7
    assert not [m for m in run_checks(tags=[checks.TAG]) if "crm.db" in m.msg]


def test_the_demo_and_the_suite_guard_their_default_database() -> None:
    assert demo.RESILIENCE_CRM["PROTECT_QUERIES"] == {"default": "crm.db"}
    assert demo.DATABASES["default"]["ENGINE"].startswith("resilience_crm.guard.backends.")
    assert "resilience_crm.W040" in demo.SILENCED_SYSTEM_CHECKS
