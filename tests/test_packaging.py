"""The wheel carries resilience_crm alone, with its data files, and works in a project that
installs nothing else: built, installed into a clean virtualenv, checked by Django."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = """
SECRET_KEY = "packaging-test"
DEBUG = True  # a developer's first project: one process, the local-memory cache
INSTALLED_APPS = [
    "django.contrib.admin", "django.contrib.auth", "django.contrib.contenttypes",
    "django.contrib.sessions", "django.contrib.messages", "rest_framework", "resilience_crm",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True,
              "OPTIONS": {"context_processors": [
                  "django.template.context_processors.request",
                  "django.contrib.auth.context_processors.auth",
                  "django.contrib.messages.context_processors.messages"]}}]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "db.sqlite3"}}
ROOT_URLCONF = "urls"
USE_TZ = True
"""
URLS = """
from django.contrib import admin
from django.urls import include, path

urlpatterns = [path("admin/", admin.site.urls),
               path("resilience/", include("resilience_crm.urls"))]
"""


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out),
                    str(ROOT)], check=True, capture_output=True, timeout=600)
    return out


def test_the_wheel_carries_the_app_alone_with_its_data_files(dist):
    (wheel,) = dist.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"resilience_crm", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1]
                   + ".dist-info"}
    for data in ("resilience_crm/breakers/stores/step.lua",
                 "resilience_crm/ratelimit/stores/gcra.lua",
                 "resilience_crm/provider/enqueue.lua", "resilience_crm/py.typed",
                 "resilience_crm/migrations/0001_initial.py"):
        assert data in names
    assert not [name for name in names if name.startswith(("crm_demo", "tests"))]


def test_the_metadata_names_the_library_and_its_dependencies_only(dist):
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        meta_name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(archive.read(meta_name).decode())
    assert meta["Name"] == "django-resilience-crm"
    assert meta["License-Expression"] == "BSD-3-Clause"
    requires = meta.get_all("Requires-Dist")
    unconditional = " ".join(r for r in requires if "extra ==" not in r)
    for dependency in ("Django", "djangorestframework", "django-redis", "redis",
                       "prometheus-client"):
        assert dependency in unconditional
    # The project chooses its PostgreSQL driver build and whether it uses Sentry.
    for optional in ("psycopg", "sentry-sdk"):
        assert optional not in unconditional
    assert set(meta.get_all("Provides-Extra")) >= {"postgres", "sentry"}
    assert any(r.startswith("psycopg[pool]") and 'extra == "postgres"' in r for r in requires)
    assert not any("binary" in r for r in requires)
    assert any(r.startswith("sentry-sdk") and 'extra == "sentry"' in r for r in requires)
    for demo_only in ("dj-database-url", "gunicorn", "pytest"):
        assert demo_only not in " ".join(requires)
    (sdist,) = dist.glob("*.tar.gz")
    assert sdist.name.startswith("django_resilience_crm-")


def test_a_clean_project_using_the_wheel_passes_django_check(dist, tmp_path):
    (wheel,) = dist.glob("*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(wheel)], check=True,
                   capture_output=True, timeout=900)
    project = tmp_path / "project"
    project.mkdir()
    (project / "settings.py").write_text(SETTINGS)
    (project / "urls.py").write_text(URLS)

    check = subprocess.run(
        [str(python), "-m", "django", "check", "--settings=settings", "--pythonpath=."],
        cwd=project, capture_output=True, text=True, timeout=300)
    where = subprocess.run(
        [str(python), "-c", "import resilience_crm; print(resilience_crm.__file__)"],
        cwd=project, capture_output=True, text=True, check=True)

    assert check.returncode == 0, check.stderr
    assert "System check identified no issues" in check.stdout + check.stderr
    assert str(env_dir) in where.stdout  # the installed wheel, not this checkout

    # Without the extras: no driver, no Sentry; settings that need them are told so.
    missing = subprocess.run(
        [str(python), "-c", "import importlib.util as u; "
         "print([m for m in ('psycopg', 'psycopg2', 'sentry_sdk') if u.find_spec(m)])"],
        cwd=project, capture_output=True, text=True, check=True)
    assert missing.stdout.strip() == "[]"
    (project / "settings_needs_extras.py").write_text(
        "from settings import *\n"
        # Django refuses to start without a driver for the default database itself; for
        # another alias it would say so only at the first query: the check says it now.
        'DATABASES["reports"] = {"ENGINE": "django.db.backends.postgresql", "NAME": "crm"}\n'
        'RESILIENCE_CRM = {"SENTRY_ALERTS": True}\n')
    told = subprocess.run(
        [str(python), "-m", "django", "check", "--settings=settings_needs_extras",
         "--pythonpath=."], cwd=project, capture_output=True, text=True, timeout=300)
    assert told.returncode == 1, told.stdout + told.stderr
    assert "resilience_crm.E060" in told.stderr and "[postgres]" in told.stderr
    assert "resilience_crm.W060" in told.stderr and "[sentry]" in told.stderr
