import pytest

from tests.services import LOCAL_REDIS, Service, find, header, require_service


def test_missing_service_skips_by_default(monkeypatch):
    monkeypatch.delenv("RESILIENCE_CRM_REQUIRE_SERVICES", raising=False)
    with pytest.raises(pytest.skip.Exception, match="Redis unavailable: not set"):
        require_service("Redis", False, "not set")


def test_missing_service_fails_when_required(monkeypatch):
    monkeypatch.setenv("RESILIENCE_CRM_REQUIRE_SERVICES", "1")
    with pytest.raises(pytest.fail.Exception, match="Redis unavailable"):
        require_service("Redis", False, "not set")


def test_present_service_passes(monkeypatch):
    monkeypatch.setenv("RESILIENCE_CRM_REQUIRE_SERVICES", "1")
    require_service("Redis", True, "")


def test_a_named_service_is_used_as_named(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6390/3")
    service = find("REDIS_URL", "Redis", LOCAL_REDIS)
    assert (service.url, service.why) == ("redis://127.0.0.1:6390/3", "from REDIS_URL")


def test_the_header_says_what_was_used_and_why():
    text = header([Service("PostgreSQL", "", "DATABASE_URL is not set and nothing answers on "
                                             "the default port"),
                   Service("Redis", LOCAL_REDIS, "REDIS_URL is not set; found on the default "
                                                 "port")])
    assert text.splitlines() == [
        "resilience_crm services: PostgreSQL: not used (DATABASE_URL is not set and nothing "
        "answers on the default port)",
        f"resilience_crm services: Redis: {LOCAL_REDIS} (REDIS_URL is not set; found on the "
        "default port)",
    ]
