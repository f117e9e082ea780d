"""Two replayers at once over the same queue, in real processes: each queued write is moved
into the database once and applied once, and both replayers apply writes side by side; one
that claims while the other is claiming takes the next write instead of stopping."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from django.db import connections, transaction

from crm_demo.crm.models import Contact
from resilience_crm import get_breaker
from resilience_crm.models import QueuedWrite
from resilience_crm.provider import probe, queue, replay
from resilience_crm.provider.facade import protected
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


@pytest.fixture
def queued(settings, redis_cache, postgres, transactional_db):
    """``WRITES`` writes queued in Redis during an outage, the database back."""
    settings.RESILIENCE_CRM = {"STORE": "redis", "CACHE_ALIAS": "redis"}
    get_breaker("crm.write").force("forced_open", reason="database outage")
    for n in range(WRITES):
        receipt = protected.submit("test.replayed", {"name": f"C{n}", "email": f"c{n}@x.org"},
                                   idempotency_key=f"k{n}")
        assert receipt.queued
    get_breaker("crm.write").force("forced_closed", reason="database back")
    assert probe.stream_length() == WRITES


def test_two_replayers_at_once_apply_each_write_exactly_once(queued):
    connections.close_all()  # the replayers open their own

    run_processes(replayer, ctx.Barrier(2), ctx.Barrier(2), count=2)

    assert probe.stream_length() == 0
    rows = QueuedWrite.objects.filter(name="test.replayed")
    assert rows.count() == WRITES
    assert set(rows.values_list("state", flat=True)) == {QueuedWrite.State.APPLIED}, list(
        rows.exclude(state=QueuedWrite.State.APPLIED).values_list("state", "last_error"))
    assert set(rows.values_list("attempts", flat=True)) == {1}
    emails = Counter(Contact.objects.values_list("email", flat=True))
    assert emails == Counter(f"c{n}@x.org" for n in range(WRITES))


def claimer(index: int, holding: Any, done: Any) -> None:
    """Replayer 0 claims the first write and holds its claim's transaction open; replayer 1
    claims meanwhile."""
    if index == 0:
        with transaction.atomic():  # the claim's own transaction, kept open
            assert replay.claim("first").idempotency_key == "k0"
            holding.wait(PATIENCE)
            done.wait(PATIENCE)
    else:
        holding.wait(PATIENCE)
        row = replay.claim("second")
        done.wait(PATIENCE)
        assert row is not None, "the second replayer found nothing to do"
        assert row.idempotency_key == "k1"
    connections.close_all()


def test_a_replayer_claiming_while_another_claims_takes_the_next_write(queued):
    assert replay.drain() == WRITES
    connections.close_all()
    run_processes(claimer, ctx.Barrier(2), ctx.Barrier(2), count=2)
