"""/resilience/metrics sums every gunicorn worker's counts, whichever worker answers."""

from __future__ import annotations

import http.client
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from resilience_crm.models import Tier
from tests.gunicorn_server import get, gunicorn
from tests.waiting import wait_until

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]

REQUESTS = 200
TOKEN = "metrics-test-token"


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    client = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        client.request("GET", "/resilience/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        response = client.getresponse()
        text = response.read().decode()
        assert response.status == 200, text
    finally:
        client.close()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_every_workers_decisions_are_counted_once(postgres, redis_cache, transactional_db):
    Tier.objects.update_or_create(name="anonymous", defaults={"limits": {"read": "100000/hour"}})
    name = connection.settings_dict["NAME"]
    with gunicorn("tests.metrics_settings", workers=4, threads=4,
                  env={"RCRM_TEST_DATABASE": name}) as port:
        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(lambda _: get(port, "/things/", {}), range(REQUESTS)))
        assert statuses == [200] * REQUESTS
        allowed = ("resilience_ratelimit_decisions_total",
                   (("decision", "allowed"), ("op_class", "read")))
        # Each worker pushes its counts every flusher round (10 s) and when it is scraped.
        seen: list[float] = []

        def all_counted() -> bool:
            seen.append(scrape(port).get(allowed, 0))
            return seen[-1] >= REQUESTS

        wait_until(all_counted, f"all {REQUESTS} decisions counted", timeout=60, interval=0.5)
        assert seen[-1] == REQUESTS  # and none counted twice
        time.sleep(1)
        assert scrape(port)[allowed] == REQUESTS
