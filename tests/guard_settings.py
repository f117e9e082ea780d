"""Settings for the gunicorn workers of the query guard's outage test: the test settings, on
the test database pytest-django created (``RCRM_TEST_DATABASE``) behind the test's fault
proxy (``RCRM_DATABASE_PORT``), with the demo's kind of connection settings (psycopg's pool,
bounded connects), every statement on ``default`` through ``crm.db``, whose state lives in
the real Redis, and the guard's URLconf."""

import json
import os

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES, REST_FRAMEWORK

DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "tests.guard_urls"
DATABASES["default"].update(
    NAME=os.environ["RCRM_TEST_DATABASE"], HOST="127.0.0.1", PORT=os.environ["RCRM_DATABASE_PORT"],
    # The pool checks a connection before handing it out, so the ones the outage broke are
    # replaced, not used; it gives up a failed connect's retries after 2 s, as the demo's
    # does (W085), so a trial after the outage finds a connection.
    CONN_HEALTH_CHECKS=True,
    OPTIONS={
        "connect_timeout": 2, "keepalives": 1, "keepalives_idle": 2, "keepalives_interval": 1,
        "keepalives_count": 2, "tcp_user_timeout": 3000,
        "pool": {"min_size": 1, "max_size": 2,
                 "timeout": float(os.environ["RCRM_POOL_TIMEOUT"]),
                 "reconnect_timeout": 2.0},
    },
)
DATABASES["default"].pop("TEST", None)
REST_FRAMEWORK = {**REST_FRAMEWORK, "DEFAULT_THROTTLE_CLASSES": []}
RESILIENCE_CRM = json.loads(os.environ["RESILIENCE_CRM_JSON"])
LOGGING = {"version": 1, "disable_existing_loggers": False,
           "root": {"handlers": [], "level": "CRITICAL"}}
