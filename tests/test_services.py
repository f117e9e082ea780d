import pytest

from tests.services import require_service


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
