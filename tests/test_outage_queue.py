"""A poison write among good ones through a real PostgreSQL outage (the demo under gunicorn,
its database behind a proxy that cuts every connection): what the database would refuse is
refused before the 202, what it refuses on replay becomes a dead letter, and every good
write acknowledged during the outage is applied exactly once after it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from crm_demo.crm.models import Contact, Message
from resilience_crm.models import QueuedWrite
from tests.gunicorn_server import ROOT
from tests.test_outage import outage, served  # noqa: F401  (the fixtures: the demo, its proxy)
from tests.waiting import wait_until

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]

#: A conversation id that fits the column but names no conversation.
MISSING = 10**12


def test_a_poison_write_between_good_ones_blocks_none_of_them(outage):  # noqa: F811
    server, token = outage.server, outage.token
    outage.proxy.stalled = True
    outage.proxy.drop()  # reset every open connection; new ones are never answered

    def post(path, body, key):
        return server.request("POST", path, token=token, body=body,
                              headers={"Idempotency-Key": key})

    first = post("/api/contacts/", {"name": "Good 1", "email": "good1@example.com"}, "good-1")
    assert first.status == 202, first.body
    too_long = post(f"/api/conversations/{'9' * 250}/messages/",
                    {"sender": "contact", "body": "Hello"}, "poison-1")
    assert too_long.status == 400, too_long.body  # the database would refuse it
    assert too_long.headers["content-type"] == "application/problem+json"
    assert too_long.body["code"] == "INVALID_WRITE"
    refused = post(f"/api/conversations/{MISSING}/messages/",
                   {"sender": "contact", "body": "Hello"}, "poison-2")
    assert refused.status == 202, refused.body  # no one can tell while the database is down
    second = post("/api/contacts/", {"name": "Good 2", "email": "good2@example.com"}, "good-2")
    assert second.status == 202, second.body

    outage.proxy.stalled = False  # the database is back: an operator replays the queue

    def replay():
        return subprocess.run(
            [sys.executable, "manage.py", "resilience_replay"], cwd=ROOT, timeout=60,
            env={**os.environ, **outage.env}, capture_output=True, text=True, check=False)

    wait_until(lambda: replay().returncode == 0, "a complete replay", timeout=60)
    for email in ("good1@example.com", "good2@example.com"):
        assert Contact.objects.filter(email=email).count() == 1
    dead = QueuedWrite.objects.get(state=QueuedWrite.State.DEAD)
    assert dead.name == "messages.create" and dead.attempts == 1
    assert f"No conversation with id {MISSING}" in dead.last_error
    assert not QueuedWrite.objects.exclude(
        state__in=[QueuedWrite.State.APPLIED, QueuedWrite.State.DEAD]).exists()
    assert not Message.objects.exists()
