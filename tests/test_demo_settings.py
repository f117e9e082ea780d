"""The demo's PostgreSQL gives up on a dead or blackholed server in seconds."""

from __future__ import annotations

import importlib

import psycopg
from django.db import connection

import crm_demo.settings
from tests.databases import database_url

LIBPQ_OPTIONS = {"connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval",
                 "keepalives_count", "tcp_user_timeout"}


def demo_databases(monkeypatch, url: str) -> dict:
    monkeypatch.setenv("DATABASE_URL", url)
    try:
        return importlib.reload(crm_demo.settings).DATABASES
    finally:
        monkeypatch.undo()
        importlib.reload(crm_demo.settings)


def test_postgresql_gets_a_connect_timeout_and_keepalives(monkeypatch):
    databases = demo_databases(monkeypatch, "postgres://demo@db.example:5432/crm")
    options = databases["default"]["OPTIONS"]
    assert set(options) == LIBPQ_OPTIONS | {"pool"}
    assert options["connect_timeout"] <= 5
    assert options["pool"]["timeout"] <= 2  # a connection from the pool, or a failure, fast


def test_sqlite_gets_no_libpq_options(monkeypatch):
    databases = demo_databases(monkeypatch, "sqlite:///demo.sqlite3")
    assert "OPTIONS" not in databases["default"] or not databases["default"]["OPTIONS"]


def test_libpq_takes_every_option(monkeypatch, postgres, django_db_setup):
    """The real server (the test database's) accepts the connection and reports the options
    back."""
    url = database_url(connection.settings_dict)
    options = demo_databases(monkeypatch, url)["default"]["OPTIONS"]
    options = {k: v for k, v in options.items() if k in LIBPQ_OPTIONS}  # "pool" is Django's
    with psycopg.connect(url, **options) as server:
        parameters = server.info.get_parameters()
    assert {k: parameters[k] for k in LIBPQ_OPTIONS} == {k: str(v) for k, v in options.items()}
