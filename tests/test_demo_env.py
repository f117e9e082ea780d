"""``make demo`` remembers its environment for ``make drill``, ``make status`` and a second
shell, and the demo reads the monitoring token it prints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection

from crm_demo import demo_env
from tests.databases import database_url
from tests.demo_server import serving

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(sys.executable).parent.parent


def shell(command: str, env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(["sh", "-c", command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def bare_environment() -> dict[str, str]:
    """This process's environment without what the demo remembers or the tests set."""
    drop = {*demo_env.REMEMBERED, "DJANGO_SETTINGS_MODULE"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def test_the_file_gives_a_shell_the_demo_environment_unless_it_has_its_own(tmp_path):
    path = tmp_path / ".demo.env"
    remembered = demo_env.write(path, {"DATABASE_URL": "postgres://u:p@db:5432/crm",
                                       "REDIS_URL": "redis://127.0.0.1:6379/0",
                                       "UNRELATED": "x"})
    assert len(remembered["RESILIENCE_MONITORING_TOKEN"]) >= 24
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    show = 'echo "$DATABASE_URL|$REDIS_URL|$RESILIENCE_MONITORING_TOKEN|${UNRELATED-unset}"'

    assert shell(f". ./.demo.env; {show}", bare_environment(), tmp_path).strip() == (
        f"postgres://u:p@db:5432/crm|redis://127.0.0.1:6379/0|"
        f"{remembered['RESILIENCE_MONITORING_TOKEN']}|unset")
    mine = {**bare_environment(), "DATABASE_URL": "", "REDIS_URL": "redis://other/1"}
    assert shell(f". ./.demo.env; {show}", mine, tmp_path).startswith("|redis://other/1|")
    # Written again, the token is kept: the one make demo printed stays good.
    again = demo_env.write(path, {**remembered, "REDIS_URL": "redis://127.0.0.1:6379/2"})
    assert again["RESILIENCE_MONITORING_TOKEN"] == remembered["RESILIENCE_MONITORING_TOKEN"]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_make_status_uses_the_remembered_database(postgres, tmp_path):
    env_file = tmp_path / "demo.env"
    demo_env.write(env_file, {"DATABASE_URL": database_url(connection.settings_dict)})
    stamp = tmp_path / "installed"
    stamp.touch()  # newer than pyproject.toml: make installs nothing

    out = shell(f"make -s status VENV={VENV} STAMP={stamp} DEMO_ENV={env_file}",
                bare_environment(), ROOT)

    db = connection.settings_dict
    assert out.splitlines()[0] == (
        f"Database: postgresql {db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']} "
        "· store: DatabaseStore")
    assert "crm.read" in out


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_demo_answers_metrics_to_the_token_make_demo_prints(postgres, redis_url):
    token = "tour-token-0123456789abcdef"
    env = {"DATABASE_URL": database_url(connection.settings_dict), "REDIS_URL": redis_url,
           "CACHE_KEY_PREFIX": "rcrm-demo-env", "RESILIENCE_MONITORING_TOKEN": token}
    with serving(env, workers=1) as server:
        assert server.get("/resilience/metrics").status == 401
        reply = server.get("/resilience/metrics",
                           headers={"Authorization": f"Bearer {token}"})
        assert reply.status == 200
        assert "resilience_circuit_state" in str(reply.body)
