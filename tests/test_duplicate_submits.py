"""The same write submitted at once from several processes, with the database up: every
handler runs, each holding its effect in its own transaction, and only one transaction
commits. The key's row, written last, is the arbiter: the first commits, the others wait on
its key, fail and roll their effects back, then answer with the first write's result (or a
conflict, for another payload)."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connections

from crm_demo.crm.models import Contact
from resilience_crm.exceptions import IdempotencyConflict
from resilience_crm.models import QueuedWrite
from resilience_crm.provider.facade import protected
from tests.processes import ctx, run_processes
from tests.waiting import PATIENCE

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

PROCESSES = 4
#: In each process: the barrier its handler waits at once its effect is in, so that every
#: process has applied the write in its own transaction before any of them writes the key.
all_applied: Any = None


@protected.write_handler("test.duplicated", key="contacts")
def create_contact(payload: dict[str, str]) -> dict[str, int]:
    pk = Contact.objects.create(**payload).pk
    all_applied.wait(PATIENCE)
    return {"id": pk}


def submitter(index: int, start: Any, payloads: list[dict[str, str]], results: Any) -> None:
    start.wait(PATIENCE)
    try:
        receipt = protected.submit("test.duplicated", payloads[index], idempotency_key="dup")
        results.put((receipt.status, receipt.result))
    except IdempotencyConflict:
        results.put(("conflict", None))
    finally:
        connections.close_all()


@pytest.fixture
def database_up(settings, redis_cache, postgres, transactional_db):
    global all_applied
    settings.RESILIENCE_CRM = {"STORE": "redis", "CACHE_ALIAS": "redis"}
    all_applied = ctx.Barrier(PROCESSES)
    connections.close_all()  # the submitters open their own
    yield
    all_applied = None


def submit_at_once(payloads: list[dict[str, str]]) -> list[tuple[str, Any]]:
    results = ctx.SimpleQueue()
    run_processes(submitter, ctx.Barrier(PROCESSES), payloads, results, count=PROCESSES)
    return [results.get() for _ in range(PROCESSES)]


def test_the_same_write_from_several_processes_at_once_is_applied_once(database_up):
    payload = {"name": "Ada", "email": "ada@example.com"}
    answers = submit_at_once([payload] * PROCESSES)
    contact = Contact.objects.get()  # one, the others rolled back
    assert answers == [("applied", {"id": contact.pk})] * PROCESSES
    row = QueuedWrite.objects.get(idempotency_key="dup")
    assert row.state == QueuedWrite.State.APPLIED and row.result == {"id": contact.pk}


def test_the_same_key_with_other_payloads_at_once_applies_one_the_rest_conflict(database_up):
    payloads = [{"name": f"C{n}", "email": f"c{n}@example.com"} for n in range(PROCESSES)]
    answers = submit_at_once(payloads)
    contact = Contact.objects.get()
    assert sorted(answers, key=str) == sorted(
        [("applied", {"id": contact.pk})] + [("conflict", None)] * (PROCESSES - 1), key=str)
    assert QueuedWrite.objects.get(idempotency_key="dup").result == {"id": contact.pk}
