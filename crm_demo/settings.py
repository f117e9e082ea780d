"""The demo CRM's settings: SQLite and the local-memory cache unless the environment says
otherwise (``DATABASE_URL``, ``REDIS_URL``, ``SENTRY_DSN``, ``DJANGO_SECRET_KEY``,
``DJANGO_DEBUG``, ``DJANGO_ALLOWED_HOSTS``)."""

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = os.environ.get("DJANGO_DEBUG", "1").lower() in ("1", "true", "yes", "on")
# Sessions, password resets and the cache's entries are signed with this key: a built-in one
# serves development only (``make demo``); with DEBUG off the demo refuses to start without
# one of its own.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_DEBUG is off and DJANGO_SECRET_KEY is not set: set DJANGO_SECRET_KEY to a "
            "long random value, e.g. python -c 'import secrets; print(secrets.token_urlsafe(50))'."
        )
    SECRET_KEY = "demo-only-insecure-secret-key"  # noqa: S105  (DEBUG only)
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",")

INSTALLED_APPS = [
    "resilience_crm",  # before the admin: its admin/index.html adds the dashboard link
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI and Redoc served from static files, no CDN
    "crm_demo.crm",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Rate-limit headers and problem bodies for what TierRateThrottle decided.
    "resilience_crm.middleware.ResilienceMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "crm_demo.urls"
WSGI_APPLICATION = "crm_demo.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        conn_max_age=0,
    )
}
#: Django's backends and the query guard's versions of them (resilience_crm/guard/backends).
GUARD_BACKENDS = {
    "django.db.backends.postgresql": "resilience_crm.guard.backends.postgresql",
    "django.db.backends.sqlite3": "resilience_crm.guard.backends.sqlite3",
}


def guarded_engine(engine: str) -> str:
    """The query guard's backend for Django's ``engine`` (``engine`` if it has none)."""
    return GUARD_BACKENDS.get(engine, engine)


if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Bound every wait on the database (docs/provider.md, "Deadlines"): a dead or blackholed
    # server costs seconds, not the OS's minutes. libpq gives up connecting after 2 s, probes
    # an idle connection after 5 s (every 2 s, twice) and drops one whose sent data goes
    # unacknowledged for 5 s; Django's psycopg pool hands out a connection or fails within a
    # second, and gives up a failed connect's retries (backing off 1, 2, 4 s...) after 2 s,
    # so the next request tries at once: a pool still backing off when the database comes
    # back would fail the circuits' half-open trials long after the outage (W085).
    DATABASES["default"]["OPTIONS"] = {
        "connect_timeout": int(os.environ.get("DATABASE_CONNECT_TIMEOUT", "2")),
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 2,
        "tcp_user_timeout": 5000,
        "pool": {
            "min_size": 1,
            "max_size": int(os.environ.get("DATABASE_POOL_SIZE", "4")),
            "timeout": float(os.environ.get("DATABASE_POOL_TIMEOUT", "1.0")),
            "reconnect_timeout": float(os.environ.get("DATABASE_POOL_RECONNECT_TIMEOUT", "2.0")),
        },
    }

# Every statement on the default database passes the circuit "crm.db" (docs/provider.md, "The
# query guard"): the admin and any view that does not call protected fail fast with a 503
# while the database is known to be down, instead of waiting for a connection.
DATABASES["default"]["ENGINE"] = guarded_engine(DATABASES["default"]["ENGINE"])

REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "crm-demo",
            "OPTIONS": {
                "SOCKET_CONNECT_TIMEOUT": 0.25, "SOCKET_TIMEOUT": 0.25,
                # Signed JSON, not pickle: whoever can write to Redis cannot run code here
                # or plant a cached user (resilience_crm/cache_serializer.py).
                "SERIALIZER": "resilience_crm.cache_serializer.SignedJSONSerializer",
            },
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

RESILIENCE_CRM: dict = {"PROTECT_QUERIES": {"default": "crm.db"}}
# W040: the app's own tables share the guarded database. The demo keeps one database on
# purpose: its events and metrics are written off the request path, so the guard refusing
# them during an outage only makes them wait for the flusher's next round.
SILENCED_SYSTEM_CHECKS = ["resilience_crm.W040"]
# The token monitoring sends to /resilience/metrics and /resilience/health/ready for their
# details (``Authorization: Bearer <token>``); ``make demo`` makes one and prints it.
if os.environ.get("RESILIENCE_MONITORING_TOKEN"):
    RESILIENCE_CRM["MONITORING_TOKEN"] = os.environ["RESILIENCE_MONITORING_TOKEN"]

# A streaming replica of the database, asked when the primary fails before the stale cache
# is (docs/provider.md, "Read replicas"). The router sends no write there.
DATABASE_REPLICA_URL = os.environ.get("DATABASE_REPLICA_URL", "")
if DATABASE_REPLICA_URL:
    DATABASES["replica"] = {
        **dj_database_url.parse(DATABASE_REPLICA_URL, conn_max_age=0),
        "OPTIONS": {key: value for key, value in DATABASES["default"].get("OPTIONS", {}).items()
                    if key != "pool"},
        "TEST": {"MIRROR": "default"},
    }
    DATABASE_ROUTERS = ["resilience_crm.routers.ResilienceRouter"]
    RESILIENCE_CRM["READ_REPLICAS"] = ["replica"]

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "crm_demo.crm.authentication.ProtectedTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_THROTTLE_CLASSES": ["resilience_crm.throttling.TierRateThrottle"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 25,
    "EXCEPTION_HANDLER": "resilience_crm.drf.problem_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

# The OpenAPI 3 schema at /api/schema/, browsable at /api/docs/ (docs/provider.md).
SPECTACULAR_SETTINGS = {
    "TITLE": "CRM demo API",
    "DESCRIPTION": "Contacts, agents and conversations, every data access through the"
                   " resilience_crm protected provider: answers 429 when rate limited, 503"
                   " while a circuit is open and nothing cached can serve, 202 when a create"
                   " is queued during an outage.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Request bodies get their own components, so required text says minLength: 1.
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": "/api/",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "crm_demo.crm.schema.document_resilience",
    ],
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"resilience_crm": {"handlers": ["console"], "level": "INFO"}},
}

SENTRY_DSN = os.environ.get("SENTRY_DSN", "")
if SENTRY_DSN:
    import sentry_sdk
    from sentry_sdk.integrations.django import DjangoIntegration

    sentry_sdk.init(dsn=SENTRY_DSN, integrations=[DjangoIntegration()])
