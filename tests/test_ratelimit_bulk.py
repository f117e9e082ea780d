"""The bulk helper spends the caller's budget row by row, waits out Retry-After when short,
and reports each row instead of failing the batch."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import RequestFactory

from resilience_crm.ratelimit.principals import Principal
from resilience_crm.throttling import bulk
from tests.ratelimit_helpers import on_clock, set_tier

pytestmark = pytest.mark.django_db


@pytest.fixture
def clock(settings: Any):
    settings.RESILIENCE_CRM = {"RATELIMIT_STORE": "memory"}
    set_tier("free", {"write": "3/min"})
    return on_clock()


def importer(row: dict[str, str]) -> str:
    if "@" not in row["email"]:
        raise ValueError(f"{row['email']!r} is not an email address")
    return row["email"]


def test_rows_wait_for_the_budget_and_bad_rows_fail_alone(clock, caplog) -> None:
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds

    rows = [{"email": f"p{i}@example.com"} for i in range(5)]
    rows[1]["email"] = "nope"
    results = bulk(Principal(key="u:1", tier="free"), rows, importer, sleep=sleep, max_wait=60)
    assert [r.status for r in results] == ["done", "failed", "done", "done", "done"]
    # The error's text goes to the log; the row says only a stable code and message.
    assert (results[1].code, results[1].error) == ("ROW_FAILED", "The row could not be saved.")
    assert "not an email" in caplog.text
    assert results[4].value == "p4@example.com"
    assert slept == [20.0, 20.0]  # 3/min: one row every 20 s after the burst of 3


def test_rows_past_the_longest_wait_are_reported_rate_limited(clock) -> None:
    def sleep(seconds: float) -> None:
        clock.now += seconds

    rows = [{"email": f"p{i}@example.com"} for i in range(6)]
    results = bulk(Principal(key="u:2", tier="free"), rows, importer, sleep=sleep, max_wait=30)
    assert [r.status for r in results] == ["done"] * 4 + ["rate_limited"] * 2
    assert results[4].retry_after == pytest.approx(20, abs=1)


def test_bulk_takes_the_request_and_spends_its_principals_budget(clock, django_user_model):
    user = django_user_model.objects.create_user("bulk", password="pw")
    request = RequestFactory().post("/import/")
    request.user = user
    results = bulk(request, [{"email": "a@example.com"}] * 4, importer, max_wait=0)
    assert [r.status for r in results] == ["done"] * 3 + ["rate_limited"]
    again = bulk(Principal(key=f"u:{user.pk}", tier="free"), [{"email": "b@example.com"}],
                 importer, max_wait=0)
    assert again[0].status == "rate_limited"  # the same bucket
