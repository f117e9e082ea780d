"""The demo serves with DEBUG off only with a secret key of its own; ``make demo`` (DEBUG on
by default) still starts without one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def manage_check(**env: str) -> subprocess.CompletedProcess[str]:
    """``manage.py check`` on the demo's own settings (SQLite, local-memory cache) with
    ``env`` on top of an environment holding none of the demo's variables."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("DJANGO_") and k not in ("DATABASE_URL", "REDIS_URL")}
    return subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, capture_output=True, text=True,
        timeout=120, env={**clean, "DJANGO_SETTINGS_MODULE": "crm_demo.settings", **env},
    )


def test_debug_off_without_a_secret_key_refuses_to_start():
    result = manage_check(DJANGO_DEBUG="0")
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "DJANGO_SECRET_KEY is not set" in result.stderr


@pytest.mark.parametrize("env", [
    {"DJANGO_DEBUG": "0", "DJANGO_SECRET_KEY": "x" * 50},
    {},  # make demo: DEBUG on, the built-in development key
], ids=["own-key", "make-demo"])
def test_the_demo_starts_with_its_key_or_in_debug(env):
    result = manage_check(**env)
    assert result.returncode == 0, result.stderr
