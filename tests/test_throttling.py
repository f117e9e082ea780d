"""Rate limiting through real DRF views and the middleware: headers, problem bodies, op
classes, endpoints, clients, tiers, exemptions, shadow mode, adaptive limits, async."""

from __future__ import annotations

import json
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.core.cache import caches
from django.test import AsyncClient, RequestFactory, TestCase
from rest_framework.request import Request

from resilience_crm import get_breaker, metrics
from resilience_crm.breakers.stores.redis import SCRIPT as breaker_script
from resilience_crm.models import Tier, TierAssignment
from resilience_crm.ratelimit import headers, tiers
from resilience_crm.ratelimit.stores.redis import SCRIPT as limiter_script
from resilience_crm.throttling import TierRateThrottle
from tests.ratelimit_helpers import on_clock, set_tier, structured

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.ratelimit_urls")]


@pytest.fixture
def limits(settings: Any):
    """Configure ``RESILIENCE_CRM`` (memory limiter unless told)."""

    def configure(**config: Any) -> None:
        settings.RESILIENCE_CRM = {"RATELIMIT_STORE": "memory", **config}

    configure()
    return configure


@pytest.fixture
def redis_limits(settings: Any, redis_cache: Any):

    def configure(**config: Any) -> None:
        settings.RESILIENCE_CRM = {"CACHE_ALIAS": "redis", **config}

    configure()
    return configure


@pytest.fixture
def user(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("ana", password="pw")


def remaining(response: Any) -> int:
    return int(response["X-RateLimit-Remaining"])


# Headers and quota, on the real Redis --------------------------------------------------------


@pytest.mark.redis
def test_ratelimit_remaining_equals_the_real_quota(client, user, redis_limits) -> None:
    set_tier("free", {"read": "5/min"})
    client.force_login(user)
    seen = []
    for _ in range(5):
        response = client.get("/things/")
        assert response.status_code == 200
        seen.append(remaining(response))
        policy = structured(response["RateLimit-Policy"])
        assert policy == {"free.read.60s": {"q": 5, "w": 60}}
        assert structured(response["RateLimit"])["free.read.60s"]["r"] == seen[-1]
    assert seen == [4, 3, 2, 1, 0]
    assert client.get("/things/").status_code == 429


@pytest.mark.redis
def test_429_is_a_problem_with_retry_after(client, user, redis_limits) -> None:
    set_tier("free", {"read": "3/min"})
    client.force_login(user)
    for _ in range(3):
        client.get("/things/")
    response = client.get("/things/")
    assert response.status_code == 429
    assert response["Content-Type"] == "application/problem+json"
    body = json.loads(response.content)
    assert body["code"] == "RATE_LIMITED"
    assert body["status"] == 429
    assert body["type"] and body["title"] and body["detail"]
    assert body["violated_policies"] == ["free.read.60s"]
    # 3/min refills one request every 20 s; the first was sent just now.
    assert abs(int(response["Retry-After"]) - 20) <= 1
    assert response["X-RateLimit-Limit"] == "3" and response["X-RateLimit-Remaining"] == "0"
    assert abs(int(response["X-RateLimit-Reset"]) - 60) <= 1


@pytest.mark.redis
def test_burst_rejections_leave_the_hourly_remaining_unchanged(client, user,
                                                               redis_limits) -> None:
    set_tier("free", {"read": ["2/10s", "100/hour"]})
    client.force_login(user)
    assert client.get("/things/").status_code == 200
    assert client.get("/things/").status_code == 200
    for _ in range(10):
        response = client.get("/things/")
        assert response.status_code == 429
        assert json.loads(response.content)["violated_policies"] == ["free.read.10s"]
        assert structured(response["RateLimit"])["free.read.3600s"]["r"] == 98


def test_retry_after_is_exactly_when_the_next_request_is_allowed(client, user,
                                                                 limits) -> None:
    set_tier("free", {"read": ["2/10s", "100/hour"]})
    clock = on_clock()
    client.force_login(user)
    client.get("/things/"), client.get("/things/")
    for _ in range(5):  # rejected by the burst: no charge to the hour
        response = client.get("/things/")
    wait = int(response["Retry-After"])
    assert wait == 5
    clock.now += wait - 0.001
    assert client.get("/things/").status_code == 429
    clock.now += 0.001
    response = client.get("/things/")
    assert response.status_code == 200
    assert structured(response["RateLimit"])["free.read.3600s"]["r"] == 97


# Op classes and endpoints -------------------------------------------------------------------


@pytest.mark.parametrize(("method", "url", "op_class"), [
    ("get", "/things/", "read"),
    ("head", "/things/", "read"),
    ("options", "/things/", "read"),
    ("post", "/things/", "write"),
    ("post", "/rpc/", "rpc"),
    ("get", "/rpc/", "rpc"),
    ("post", "/login/", "auth"),
    ("get", "/reports/", "read"),
    ("post", "/reports/rebuild/", "rpc"),
])
def test_op_class_by_method_view_and_action(client, limits, method, url, op_class) -> None:
    response = getattr(client, method)(url)
    assert response.status_code < 400
    assert list(structured(response["RateLimit-Policy"])) == [f"anonymous.{op_class}.60s"]


def test_endpoint_limits_are_per_url_name_not_per_path(client, limits) -> None:
    limits(ENDPOINTS={"thing-detail": {"read": "2/min"}})
    assert client.get("/things/1/").status_code == 200
    assert client.get("/things/2/").status_code == 200
    response = client.get("/things/3/")
    assert response.status_code == 429
    assert json.loads(response.content)["violated_policies"] == ["thing-detail.read.60s"]
    assert client.get("/things/").status_code == 200  # another endpoint
    assert "thing-detail" not in client.get("/unnamed/")["RateLimit-Policy"]


def test_global_limits_are_shared_by_every_client(client, limits) -> None:
    limits(GLOBAL_LIMITS={"write": "2/min"})
    assert client.post("/things/", REMOTE_ADDR="192.0.2.1").status_code == 201
    assert client.post("/things/", REMOTE_ADDR="192.0.2.2").status_code == 201
    response = client.post("/things/", REMOTE_ADDR="192.0.2.3")
    assert json.loads(response.content)["violated_policies"] == ["global.write.60s"]


# Clients ------------------------------------------------------------------------------------


def test_spoofed_forwarded_for_does_not_buy_a_fresh_bucket(client, limits) -> None:
    set_tier("anonymous", {"read": "3/min"})
    for i in range(3):
        assert client.get("/things/", HTTP_X_FORWARDED_FOR=f"203.0.113.{i}").status_code == 200
    response = client.get("/things/", HTTP_X_FORWARDED_FOR="198.51.100.77")
    assert response.status_code == 429


def test_trusted_proxies_count_hops_from_the_right(client, limits) -> None:
    limits(TRUSTED_PROXIES=1)
    set_tier("anonymous", {"read": "1/min"})
    # The proxy appended the client's address; anything left of it is the client's to forge.
    assert client.get("/things/", HTTP_X_FORWARDED_FOR="6.6.6.6, 203.0.113.5").status_code == 200
    assert client.get("/things/", HTTP_X_FORWARDED_FOR="7.7.7.7, 203.0.113.5").status_code == 429
    assert client.get("/things/", HTTP_X_FORWARDED_FOR="203.0.113.6").status_code == 200


def test_ipv4_clients_seen_through_ipv6_are_their_ipv4_address(client, limits) -> None:
    limits(TRUSTED_PROXIES=1)
    set_tier("anonymous", {"read": "1/min"})
    # A dual-stack listener, a proxy that writes mapped addresses, a 6to4 site (2002:cb00:7105::
    # carries 203.0.113.5): all three are the one IPv4 client 203.0.113.5.
    assert client.get("/things/", REMOTE_ADDR="::ffff:203.0.113.5").status_code == 200
    assert client.get("/things/", HTTP_X_FORWARDED_FOR="::ffff:203.0.113.5").status_code == 429
    assert client.get("/things/", REMOTE_ADDR="2002:cb00:7105:1::9").status_code == 429
    # Every other IPv4 client keeps its own bucket, though all share ::/64 as IPv6 addresses.
    assert client.get("/things/", REMOTE_ADDR="::ffff:203.0.113.6").status_code == 200
    assert client.get("/things/", HTTP_X_FORWARDED_FOR="::ffff:198.51.100.7").status_code == 200
    # Native IPv6 clients are still one bucket per /64.
    assert client.get("/things/", REMOTE_ADDR="2001:db8:0:1::1").status_code == 200
    assert client.get("/things/", REMOTE_ADDR="2001:db8:0:1::2").status_code == 429


def test_users_are_limited_by_id_not_address(client, user, limits) -> None:
    set_tier("free", {"read": "1/min"})
    client.force_login(user)
    assert client.get("/things/", REMOTE_ADDR="192.0.2.1").status_code == 200
    assert client.get("/things/", REMOTE_ADDR="192.0.2.2").status_code == 429


# Tiers, overrides, exemptions ---------------------------------------------------------------


def test_assigned_tier_and_per_user_overrides(client, user, limits) -> None:
    pro = set_tier("pro", {"read": "7/min", "write": "3/min"})
    TierAssignment.objects.create(user=user, tier=pro, limits={"write": "9/min"})
    client.force_login(user)
    assert structured(client.get("/things/")["RateLimit-Policy"]) == {
        "pro.read.60s": {"q": 7, "w": 60}}
    assert structured(client.post("/things/")["RateLimit-Policy"]) == {
        "pro.write.60s": {"q": 9, "w": 60}}


def test_a_tier_edit_applies_once_the_cache_expires(client, user, limits, monkeypatch) -> None:
    now = {"t": 0.0}
    monkeypatch.setattr(tiers, "clock", lambda: now["t"])
    set_tier("free", {"read": "5/min"})
    client.force_login(user)
    assert client.get("/things/")["X-RateLimit-Limit"] == "5"
    # Saved by another process: no signal here, only the cache's expiry brings it in.
    Tier.objects.filter(name="free").update(limits={"read": "8/min"})
    now["t"] = 0.3
    assert client.get("/things/")["X-RateLimit-Limit"] == "5"
    now["t"] = 0.5  # TIER_CACHE_TTL after the first read
    assert client.get("/things/")["X-RateLimit-Limit"] == "8"


def test_a_users_own_limits_edited_elsewhere_apply_when_the_user_is_reread(
        client, user, django_user_model, limits, monkeypatch) -> None:
    """The user's assignment expires on its own clock, not with the tier rows: new per-user
    limits must not wait for the next reload of the tiers."""
    now = {"t": 0.0}
    monkeypatch.setattr(tiers, "clock", lambda: now["t"])
    free = set_tier("free", {"read": "50/min"})
    TierAssignment.objects.create(user=user, tier=free, limits={"read": "5/min"})
    other = django_user_model.objects.create_user("bo", password="pw")
    client.force_login(other)
    assert client.get("/things/")["X-RateLimit-Limit"] == "50"  # tier rows read at 0
    client.force_login(user)
    now["t"] = 0.3
    assert client.get("/things/")["X-RateLimit-Limit"] == "5"  # the user read at 0.3
    now["t"] = 0.6
    assert client.get("/things/")["X-RateLimit-Limit"] == "5"  # tier rows read again
    TierAssignment.objects.filter(user=user).update(limits={"read": "8/min"})  # no signal
    now["t"] = 0.85  # the user is reread; the tier rows (read at 0.6) are not
    assert client.get("/things/")["X-RateLimit-Limit"] == "8"


def test_a_tier_saved_here_applies_at_once(client, user, limits) -> None:
    set_tier("free", {"read": "5/min"})
    client.force_login(user)
    assert client.get("/things/")["X-RateLimit-Limit"] == "5"
    tier = Tier.objects.get(name="free")
    tier.limits = {"read": "6/min"}
    with TestCase.captureOnCommitCallbacks(execute=True):
        tier.save()
    assert client.get("/things/")["X-RateLimit-Limit"] == "6"


def test_tier_resolver(client, limits) -> None:
    limits(TIER_RESOLVER="tests.ratelimit_urls.tier_from_api_key")
    response = client.get("/things/", HTTP_X_API_KEY="key-enterprise")
    assert list(structured(response["RateLimit-Policy"])) == ["enterprise.read.60s"]
    response = client.get("/things/", HTTP_X_API_KEY="nope")
    assert list(structured(response["RateLimit-Policy"])) == ["anonymous.read.60s"]


def test_staff_and_permission_exemptions(client, django_user_model, limits) -> None:
    from django.contrib.auth.models import Permission

    limits(EXEMPT_STAFF=True, EXEMPT_PERMISSION="resilience_crm.change_tier")
    set_tier("free", {"read": "1/min"})
    staff = django_user_model.objects.create_user("st", password="pw", is_staff=True)
    holder = django_user_model.objects.create_user("ho", password="pw")
    holder.user_permissions.add(Permission.objects.get(codename="change_tier"))
    for who in (staff, holder):
        client.force_login(who)
        for _ in range(3):
            response = client.get("/things/")
            assert response.status_code == 200 and "RateLimit" not in response
    assert metrics.value("ratelimit_decisions", op_class="read", decision="exempt") == 6


# Shadow mode and adaptive limits ------------------------------------------------------------


def test_shadow_tier_reports_but_never_rejects(client, user, limits) -> None:
    limits(SHADOW_TIERS=["free"])
    set_tier("free", {"read": "2/min"})
    client.force_login(user)
    statuses = [client.get("/things/") for _ in range(4)]
    assert [r.status_code for r in statuses] == [200] * 4
    assert [remaining(r) for r in statuses] == [1, 0, 0, 0]
    assert metrics.value("ratelimit_decisions", op_class="read", decision="shadow_rejected") == 2


def test_shadow_endpoint_keeps_the_tier_enforced(client, limits) -> None:
    limits(ENDPOINTS={"thing-list": {"read": "1/min"}}, SHADOW_ENDPOINTS=["thing-list"])
    set_tier("anonymous", {"read": "3/min"})
    codes = [client.get("/things/").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]


def test_limits_shrink_while_the_circuit_is_open_and_recover(client, limits) -> None:
    limits(ADAPTIVE_FACTOR=0.5, STORE="memory",
           CIRCUITS={"crm.read": {"failure_threshold": 1, "reset_timeout": 60}})
    set_tier("anonymous", {"read": "10/min"})
    assert client.get("/things/")["X-RateLimit-Limit"] == "10"
    breaker = get_breaker("crm.read")
    with pytest.raises(ZeroDivisionError):
        breaker.call(lambda: 1 / 0)
    assert breaker.state == "open"
    assert client.get("/things/")["X-RateLimit-Limit"] == "5"
    breaker.reset()
    assert client.get("/things/")["X-RateLimit-Limit"] == "10"


@pytest.mark.redis
def test_a_decision_is_one_script_call_and_never_steps_a_breaker(client, settings,
                                                                  redis_proxy) -> None:
    """Adaptive limits read the worker's own view of the circuit: even with breakers on the
    same Redis and no snapshot reuse at all, requests send the limiter's script alone."""
    settings.RESILIENCE_CRM = {"CACHE_ALIAS": "proxied", "STORE": "redis", "SNAPSHOT_TTL": 0,
                               "ADAPTIVE_FACTOR": 0.5, "TIER_CACHE_TTL": 60}
    set_tier("anonymous", {"read": "100/min"})
    assert get_breaker("crm.read").call(lambda: "ok") == "ok"  # the circuit is known here
    assert client.get("/things/").status_code == 200  # tiers read, scripts loaded
    sent = len(redis_proxy.upstream)

    for _ in range(5):
        assert client.get("/things/").status_code == 200

    commands = bytes(redis_proxy.upstream[sent:])
    assert commands.count(b"EVALSHA") == 5
    assert commands.count(limiter_script.sha.encode()) == 5
    assert breaker_script.sha.encode() not in commands


# Async and the middleware on its own -----------------------------------------------------------


def test_middleware_works_under_asgi(limits) -> None:
    set_tier("anonymous", {"read": "1/min"})

    async def two() -> list[Any]:
        client = AsyncClient()
        return [await client.get("/things/"), await client.get("/things/")]

    first, second = async_to_sync(two)()
    assert first.status_code == 200 and first["X-RateLimit-Remaining"] == "0"
    assert second.status_code == 429 and second["Content-Type"] == "application/problem+json"


def test_the_decision_is_left_on_the_request_for_views_to_read(limits) -> None:
    """``request.resilience_ratelimit`` is public: the Django request behind DRF's carries it."""
    set_tier("anonymous", {"read": "2/min"})
    django_request = RequestFactory().get("/things/")
    request = Request(django_request)
    throttle = TierRateThrottle()
    assert headers.decision_of(request) is None
    assert throttle.allow_request(request, object())
    assert django_request.resilience_ratelimit is throttle.decision  # type: ignore[attr-defined]
    assert headers.decision_of(request) is throttle.decision
    assert throttle.decision is not None and throttle.decision.policies[0].remaining == 1


def test_metrics_count_decisions(client, limits) -> None:
    set_tier("anonymous", {"read": "1/min"})
    client.get("/things/"), client.get("/things/")
    assert metrics.value("ratelimit_decisions", op_class="read", decision="allowed") == 1
    assert metrics.value("ratelimit_decisions", op_class="read", decision="rejected") == 1


@pytest.mark.redis
def test_tier_edits_elsewhere_apply_within_the_ttl_and_cost_no_queries_meanwhile(
        client, user, redis_limits, monkeypatch, django_assert_num_queries) -> None:
    now = {"t": 0.0}
    monkeypatch.setattr(tiers, "clock", lambda: now["t"])
    set_tier("free", {"read": "5/min"})
    client.force_login(user)
    assert client.get("/things/")["X-RateLimit-Limit"] == "5"
    now["t"] = 10.0  # long past TIER_CACHE_TTL: the stamp did not change, nothing is reread
    with django_assert_num_queries(0):
        assert tiers.assignment(user.pk) == (None, {})
        assert tiers.tier_limits("free") == {"read": "5/min"}
    # Another process saves a tier: the row changes and it announces a new stamp.
    Tier.objects.filter(name="free").update(limits={"read": "8/min"})
    caches["redis"].set(tiers.VERSION_KEY, "stamp-from-another-process")
    assert client.get("/things/")["X-RateLimit-Limit"] == "5"  # stamp read at most every TTL
    now["t"] = 10.5
    assert client.get("/things/")["X-RateLimit-Limit"] == "8"
    # An edit nobody announced (QuerySet.update) is picked up after MAX_AGE.
    Tier.objects.filter(name="free").update(limits={"read": "9/min"})
    now["t"] = 10.5 + tiers.MAX_AGE - 1
    assert client.get("/things/")["X-RateLimit-Limit"] == "8"
    now["t"] = 10.5 + tiers.MAX_AGE
    assert client.get("/things/")["X-RateLimit-Limit"] == "9"


@pytest.mark.parametrize("garbage", [{"x": 1}, ["10/s", {"x": 1}], 42, "lots"])
def test_a_malformed_rate_limits_nothing_instead_of_failing(client, limits, garbage) -> None:
    set_tier("anonymous", {"read": garbage})
    response = client.get("/things/")
    assert response.status_code == 200 and "RateLimit" not in response
