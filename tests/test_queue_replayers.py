"""Two replayers at once over the same queue, in real processes: each queued write is moved
into the database once and applied once, and both replayers apply writes side by side."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from django.db import connections

from crm_demo.crm.models import Contact
from resilience_crm import get_breaker, queue
from resilience_crm.models import QueuedWrite
from resilience_crm.provider import protected
from tests.processes import ctx, run_processes
from tests.waiting import PATIENCE

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

WRITES = 40
#: In each replayer process: the barrier its first write waits at, so that neither finishes
#: the queue alone.
first_write_waits_at: Any = None


@protected.write_handler("test.replayed", key="contacts")
def create_contact(payload: dict[str, str]) -> dict[str, int]:
    global first_write_waits_at
    if first_write_waits_at is not None:
        barrier, first_write_waits_at = first_write_waits_at, None
        barrier.wait(PATIENCE)  # the other replayer holds a write of its own meanwhile
    return {"id": Contact.objects.create(**payload).pk}


def replayer(index: int, start: Any, applying: Any) -> None:
    global first_write_waits_at
    first_write_waits_at = applying
    start.wait(PATIENCE)
    queue.replay()
    connections.close_all()


def test_two_replayers_at_once_apply_each_write_exactly_once(settings, redis_cache,
                                                             postgres, transactional_db):
    settings.RESILIENCE_CRM = {"STORE": "redis", "CACHE_ALIAS": "redis"}
    get_breaker("crm.write").force("forced_open", reason="database outage")
    for n in range(WRITES):
        receipt = protected.submit("test.replayed", {"name": f"C{n}", "email": f"c{n}@x.org"},
                                   idempotency_key=f"k{n}")
        assert receipt.queued
    get_breaker("crm.write").force("forced_closed", reason="database back")
    assert queue.stream_length() == WRITES
    connections.close_all()  # the replayers open their own

    run_processes(replayer, ctx.Barrier(2), ctx.Barrier(2), count=2)

    assert queue.stream_length() == 0
    rows = QueuedWrite.objects.filter(name="test.replayed")
    assert rows.count() == WRITES
    assert set(rows.values_list("state", flat=True)) == {QueuedWrite.State.APPLIED}
    assert set(rows.values_list("attempts", flat=True)) == {1}
    emails = Counter(Contact.objects.values_list("email", flat=True))
    assert emails == Counter(f"c{n}@x.org" for n in range(WRITES))
