"""The README's tour runs as written: its curls, against the demo served by gunicorn on the
real PostgreSQL and Redis, with an API token and the environment ``make demo`` remembers
(only the host's port and the token it prints are filled in)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db import connection
from rest_framework.authtoken.models import Token

from crm_demo import demo_env
from tests.databases import database_url
from tests.demo_server import serving

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow,
              pytest.mark.django_db(transaction=True)]

README = Path(__file__).resolve().parent.parent / "README.md"
DEMO = "http://127.0.0.1:8000"
BETWEEN = "=== next block ==="


def tour_blocks() -> list[str]:
    """The tour's shell blocks that call curl, as written."""
    text = README.read_text(encoding="utf-8")
    tour = text[text.index("## A five-minute tour"):text.index("## Install it in a project")]
    return [block for block in re.findall(r"```sh\n(.*?)```", tour, re.S) if "curl" in block]


def test_the_readme_tour_runs_as_written(postgres, redis_url, tmp_path):
    blocks = tour_blocks()
    assert len(blocks) == 3, blocks  # the API, the CSV import, metrics and health
    user = User.objects.create_user("tour")
    api_token = Token.objects.create(user=user).key
    monitoring = "tour-monitoring-token-0123456789"
    demo_env.write(tmp_path / ".demo.env", {"RESILIENCE_MONITORING_TOKEN": monitoring})
    env = {"DATABASE_URL": database_url(connection.settings_dict), "REDIS_URL": redis_url,
           "CACHE_KEY_PREFIX": "rcrm-tour", "RESILIENCE_MONITORING_TOKEN": monitoring}
    shell_env = {k: v for k, v in os.environ.items() if k not in demo_env.REMEMBERED}
    # One shell, as a reader's terminal: a variable set in one block serves the next.
    script = f"\necho '{BETWEEN}'\n".join(blocks).replace("TOKEN=...", f"TOKEN={api_token}", 1)
    with serving(env, workers=1) as server:
        done = subprocess.run(
            ["sh", "-e", "-c", script.replace(DEMO, f"http://127.0.0.1:{server.port}")],
            cwd=tmp_path, env=shell_env, capture_output=True, text=True, timeout=120,
            check=False)
    assert done.returncode == 0, (script, done.stderr)

    api, imported, monitored = done.stdout.split(f"{BETWEEN}\n")
    statuses = re.findall(r"HTTP/1\.[01] (\d{3}) ", api)  # a body may end without a newline
    assert statuses == ["200", "201"], api[:2000]
    assert "ratelimit-policy:" in api.lower()
    report = json.loads(imported)
    assert (report["totals"]["created"], report["totals"]["invalid"]) == (1, 1), report
    assert "resilience_circuit_state" in monitored and "# EOF" in monitored
    assert '"score"' in monitored
