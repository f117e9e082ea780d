"""Every error of the demo API is ``application/problem+json`` with a stable ``code``
(``resilience_crm.drf.problem_exception_handler``), and an answer that went through a limiter
carries its rate-limit headers, a refused token's ``401`` included."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from tests.demo_api import problem

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


def test_a_body_that_fails_validation_is_invalid_with_its_fields(api):
    body = problem(api.post("/api/contacts/", {"name": "No email"}, format="json"), 400,
                   "INVALID")
    assert body["type"] == "urn:resilience-crm:problem:invalid"
    assert body["title"] == "Bad Request" and "email" in body["errors"]


def test_a_body_that_is_not_json_is_a_parse_error(api):
    problem(api.post("/api/contacts/", "{", content_type="application/json"), 400,
            "PARSE_ERROR")


def test_a_body_of_a_type_the_view_cannot_read_is_415(api):
    problem(api.post("/api/contacts/", "name=x", content_type="text/plain"), 415,
            "UNSUPPORTED_MEDIA_TYPE")


def test_no_token_is_401_not_authenticated_with_its_challenge():
    response = APIClient().get("/api/contacts/")
    problem(response, 401, "NOT_AUTHENTICATED")
    assert response["WWW-Authenticate"] == "Token"


def test_a_refused_token_is_401_and_counts_down_the_address_failures(db, settings):
    settings.RESILIENCE_CRM = {**getattr(settings, "RESILIENCE_CRM", {}),
                               "AUTH_FAILURES": "5/min", "RATELIMIT_STORE": "memory"}
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-token")
    remaining = []
    for _ in range(3):
        response = client.get("/api/contacts/")
        problem(response, 401, "AUTHENTICATION_FAILED")
        assert '"auth_failures.60s"' in response["RateLimit-Policy"]
        remaining.append(int(response["X-RateLimit-Remaining"]))
    assert remaining == [4, 3, 2]


def test_an_unknown_object_is_404_not_found(api):
    problem(api.get("/api/contacts/999999/"), 404, "NOT_FOUND")


def test_an_unknown_path_under_the_api_is_404_not_found(api, settings):
    settings.DEBUG = False  # Django calls handler404 only then
    problem(api.get("/api/no-such-thing/"), 404, "NOT_FOUND")


def test_a_method_the_view_does_not_take_is_405_with_allow(api):
    response = api.put("/api/contacts/", {}, format="json")
    problem(response, 405, "METHOD_NOT_ALLOWED")
    assert "GET" in response["Allow"]
    assert "RateLimit" in response  # the throttle decided it before the method was refused
