"""``resilience_limits USER|IP``: why is this principal limited? Each policy with remaining,
reset and the last refusal, on the database store and on the Redis store alike."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from django.core.management import CommandError, call_command

import resilience_crm.ratelimit.limiter as limiter
from resilience_crm.models import Tier, TierAssignment
from resilience_crm.ratelimit import principals

pytestmark = pytest.mark.postgres


def limits(*args: str) -> str:
    out = io.StringIO()
    call_command("resilience_limits", *args, stdout=out)
    return out.getvalue()


@pytest.fixture(params=["database", pytest.param("redis", marks=pytest.mark.redis)])
def shared_store(request: Any, settings: Any, postgres: Any, db: Any) -> str:
    if request.param == "redis":
        request.getfixturevalue("redis_cache")
        settings.RESILIENCE_CRM = {"RATELIMIT_STORE": "redis", "CACHE_ALIAS": "redis"}
    else:
        settings.RESILIENCE_CRM = {"RATELIMIT_STORE": "database"}
    Tier.objects.update_or_create(name="free", defaults={"limits": {
        "read": "2/min", "write": ["5/min", "100/day"]}})
    Tier.objects.update_or_create(name="anonymous", defaults={"limits": {"read": "1/min"}})
    return str(request.param)


def test_a_refused_user_shows_the_spent_policy_and_when_it_refused(
        shared_store, django_user_model) -> None:
    ada = django_user_model.objects.create_user("ada")
    who = principals.of_user(ada)
    decisions = [limiter.decide(who, "read").allowed for _ in range(3)]
    assert decisions == [True, True, False]
    limiter.decide(who, "write")

    report = json.loads(limits("ada", "--json"))
    assert report["principal"] == f"u:{ada.pk}" and report["tier"] == "free"
    policies = {p["policy"]: p for p in report["policies"]}
    assert set(policies) == {"free.read.60s", "free.write.60s", "free.write.86400s"}
    read, write = policies["free.read.60s"], policies["free.write.60s"]
    assert (read["remaining"], read["limit"]) == (0, 2)
    assert 59 < read["reset"] <= 60
    assert read["last_refusal"] is not None and write["last_refusal"] is None
    assert (write["remaining"], policies["free.write.86400s"]["remaining"]) == (4, 99)

    table = limits(str(ada.pk), "--id")
    assert "free.read.60s" in table and "2/60s" in table
    line = next(row for row in table.splitlines() if row.startswith("free.write.60s"))
    assert line.split()[2] == "4" and line.split()[-1] == "none"


def test_an_address_is_grouped_as_the_limiter_groups_it(shared_store) -> None:
    def address(text: str) -> principals.Principal:
        return principals.of_address(principals.grouped_address(text) or "")

    assert address("2001:db8::1").key == "ip:2001:db8::/64"
    limiter.decide(address("2001:db8::1"), "read")
    limiter.decide(address("2001:db8::2"), "read")  # the same /64: refused
    report = json.loads(limits("2001:db8::9", "--json"))
    [read] = [p for p in report["policies"] if p["op_class"] == "read"]
    assert report["principal"] == "ip:2001:db8::/64"
    assert read["remaining"] == 0 and read["last_refusal"] is not None


def test_an_unknown_principal_is_a_clear_error(shared_store) -> None:
    with pytest.raises(CommandError, match="No user 'nobody'"):
        limits("nobody")
    with pytest.raises(CommandError, match="No user with id"):
        limits("x" * 10_000, "--id")


def test_the_tier_assignment_admin_shows_the_users_limits_now(
        shared_store, django_user_model, admin_client) -> None:
    ada = django_user_model.objects.create_user("ada")
    assignment = TierAssignment.objects.create(user=ada, tier=Tier.objects.get(name="free"))
    who = principals.of_user(ada)
    for _ in range(3):
        limiter.decide(who, "read")
    page = admin_client.get(f"/admin/resilience_crm/tierassignment/{assignment.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    row = html[html.index("<td>free.read.60s</td>"):]
    row = row[:row.index("</tr>")]
    assert "<td>2/60s</td><td>0</td>" in row and "none" not in row  # spent, and refused
    assert "<td>free.write.60s</td><td>5/60s</td><td>5</td>" in html
