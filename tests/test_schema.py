"""The demo API's OpenAPI schema: served, valid, documenting every answer of the resilience
layer, browsable without a CDN; and schemathesis fuzzing every operation against it on the
real PostgreSQL and Redis, with the circuits closed, open, and the rate limit used up,
finds no server error and no answer the schema does not describe."""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from django.contrib.auth.models import User
from django.contrib.staticfiles import finders
from django.core.management import call_command
from django.core.wsgi import get_wsgi_application
from drf_spectacular.validation import validate_schema
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from model_bakery import baker
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient
from schemathesis import checks

from crm_demo.crm.models import Agent, Contact, Conversation
from crm_demo.crm.schema import METHODS
from resilience_crm import get_breaker
from tests.ratelimit_helpers import set_tier

SCHEMA_URL = "/api/schema/?format=json"
#: Examples per operation and run: small, so the whole file stays well under a minute
#: (``FUZZ_MAX_EXAMPLES=200`` for a deeper run by hand).
MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "12"))
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]


def operations(document: dict[str, Any]) -> Iterable[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        kind, name = node["$ref"].split("/")[-2:]
        node = document["components"][kind][name]
    return node


@pytest.fixture
def document(db) -> dict[str, Any]:
    response = APIClient().get(SCHEMA_URL)
    assert response.status_code == 200, response.content
    return response.json()


def test_the_schema_is_valid_openapi_3(document):
    assert document["openapi"].startswith("3.")
    validate_schema(document)
    assert {"/api/auth/token/", "/api/contacts/", "/api/contacts/{id}/", "/api/agents/",
            "/api/agents/{id}/", "/api/conversations/", "/api/conversations/{id}/",
            "/api/conversations/{id}/messages/", "/api/platforms/", "/api/platforms/{id}/",
            "/api/analytics/summary/", "/api/contacts/import/"} <= set(document["paths"])


def test_every_view_is_described_without_a_guess(tmp_path):
    """drf-spectacular warns where it has to guess (a view without a serializer, a field it
    cannot type); a guess is a schema that may not match the answers."""
    call_command("spectacular", "--validate", "--fail-on-warn",
                 "--file", str(tmp_path / "schema.yaml"))
    assert (tmp_path / "schema.yaml").read_text().startswith("openapi: 3.")


def test_every_operation_documents_429_and_503_problems_with_retry_after(document):
    """A 503 is any problem (CIRCUIT_OPEN among its codes); a 429 is a problem whose code can
    only be RATE_LIMITED."""
    problem_ref = {"$ref": "#/components/schemas/Problem"}
    problem = document["components"]["schemas"]["Problem"]
    assert "code" in problem["required"]
    assert "CIRCUIT_OPEN" in problem["properties"]["code"]["description"]
    for path, method, operation in operations(document):
        schemas = {}
        for status in ("429", "503"):
            response = resolve(document, operation["responses"][status])
            assert list(response["content"]) == ["application/problem+json"], (path, method)
            assert resolve(document, response["headers"]["Retry-After"])["required"]
            schemas[status] = response["content"]["application/problem+json"]["schema"]
        assert schemas["503"] == problem_ref, (path, method)
        parts = resolve(document, schemas["429"]).get("allOf", [])
        assert problem_ref in parts, (path, method)
        codes = [part["properties"]["code"].get("enum") for part in parts
                 if "code" in part.get("properties", {})]
        assert codes == [["RATE_LIMITED"]], (path, method)
        for status, response in operation["responses"].items():
            if status.startswith("2") or status == "429":  # not repeated on every error
                headers = resolve(document, response).get("headers", {})
                assert {"RateLimit", "RateLimit-Policy", "X-RateLimit-Remaining"} <= set(
                    headers), (path, method, status)


def test_each_problem_answer_shows_one_example_per_code_and_no_repeated_headers(document):
    """Swagger UI shows each code's own example (not CIRCUIT_OPEN on every error), and the
    five rate-limit headers only where they matter, so an operation fits on a page."""
    expected = {"RateLimited": {"RATE_LIMITED"}, "Timeout": {"TIMEOUT"},
                "IdempotencyInFlight": {"IDEMPOTENCY_IN_FLIGHT"},
                "IdempotencyConflict": {"IDEMPOTENCY_CONFLICT"},
                "Unauthorized": {"NOT_AUTHENTICATED", "AUTHENTICATION_FAILED"},
                "NotFound": {"NOT_FOUND"}, "PayloadTooLarge": {"PAYLOAD_TOO_LARGE"}}
    for name, response in document["components"]["responses"].items():
        content = response["content"].get("application/problem+json")
        if content is None:
            continue
        examples = content["examples"]
        for key, example in examples.items():
            assert example["value"]["code"] == key, (name, key)
            assert example["value"]["type"].endswith(key.lower().replace("_", "-"))
        if name in expected:
            assert set(examples) == expected[name], name
        if name != "RateLimited":
            assert "RateLimit" not in response["headers"], name
    assert "CIRCUIT_OPEN" in document["components"]["responses"]["Unavailable"]["content"][
        "application/problem+json"]["examples"]
    assert "example" not in document["components"]["schemas"]["Problem"]["properties"]["code"]


def test_reads_document_the_fallback_label_and_creates_their_receipt(document):
    creates = []
    for path, method, operation in operations(document):
        if method == "get":
            headers = operation["responses"]["200"]["headers"]
            assert {"X-Resilience-Fallback", "Age"} <= set(headers), path
        names = {p["name"] for p in operation.get("parameters", []) if p["in"] == "header"}
        if "Idempotency-Key" in names and "201" in operation["responses"]:
            creates.append(path)
            queued = resolve(document, operation["responses"]["202"])
            schema = resolve(document, queued["content"]["application/json"]["schema"])
            assert schema["properties"]["status"]["enum"] == ["queued"]
            assert {"409", "422"} <= set(operation["responses"])
    assert sorted(creates) == ["/api/agents/", "/api/contacts/", "/api/conversations/",
                               "/api/conversations/{id}/messages/", "/api/platforms/"]


def test_the_browsable_docs_are_served_without_a_cdn(db):
    response = APIClient().get("/api/docs/")
    assert response.status_code == 200
    page = response.content.decode()
    for asset in ("swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "swagger-ui.css"):
        path = f"drf_spectacular_sidecar/swagger-ui-dist/{asset}"
        assert f"/static/{path}" in page
        assert finders.find(path), f"{path} is not among the static files"
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "an outside asset"
    assert "/api/schema/" in page


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_swagger_ui_renders_the_operations_in_a_browser(live_server, page):
    outside: list[str] = []
    page.on("request", lambda request: None if request.url.startswith(live_server.url)
            else outside.append(request.url))
    page.goto(f"{live_server.url}/api/docs/")
    operation = page.locator("#operations-contacts-contacts_create")
    operation.wait_for()
    operation.locator(".opblock-summary").click()
    responses = operation.locator(".responses-table .response-col_status")
    responses.first.wait_for()
    assert {"201", "202", "409", "422", "429", "503"} <= {
        code.strip() for code in responses.all_inner_texts()}
    assert outside == [], "the page fetched something from outside"


# Fuzzing, on the real services -------------------------------------------------------------


def no_internal_error(ctx: Any, response: Any, case: schemathesis.Case) -> None:
    """Like ``not_a_server_error``, for a run where the documented 503 and 504 are expected."""
    assert response.status_code < 500 or response.status_code in (503, 504), (
        f"{case.operation.label} answered {response.status_code}")


@dataclass
class Report:
    failures: list[str] = field(default_factory=list)
    #: (operation label, status) -> how many answers.
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)

    def saw(self, label: str, status: int) -> bool:
        return self.statuses[(label, status)] > 0


@pytest.fixture
def fuzz(settings, redis_cache, postgres, transactional_db):
    """Runs schemathesis over the demo API as a staff user's token (rate limits exempt
    unless a test says otherwise), on the real PostgreSQL and Redis; reports the failures
    and the statuses seen."""
    settings.RESILIENCE_CRM = {"STORE": "redis", "CACHE_ALIAS": "redis", "EXEMPT_STAFF": True}
    user = User.objects.create_user("fuzz", password="secret", is_staff=True)
    token = Token.objects.create(user=user).key
    schema = schemathesis.openapi.from_wsgi(SCHEMA_URL, get_wsgi_application())

    def run(paths: Iterable[str] = (), fixed: dict[str, Any] | None = None,
            max_examples: int = MAX_EXAMPLES, checks: list[Any] = CHECKS,
            mode: schemathesis.GenerationMode = schemathesis.GenerationMode.POSITIVE,
            ) -> Report:
        report = Report()

        def record(ctx: Any, response: Any, case: schemathesis.Case) -> None:
            report.statuses[(case.operation.label, response.status_code)] += 1

        seen = 0
        for result in schema.get_all_operations():
            operation = result.ok()
            if paths and operation.path not in paths:
                continue
            seen += 1
            path_parameters = {name: value for name, value in (fixed or {}).items()
                               if "{" + name + "}" in operation.path}
            strategy = operation.as_strategy(mode, path_parameters=path_parameters or None)

            @hypothesis_settings(max_examples=max_examples, deadline=None, database=None,
                                 suppress_health_check=list(HealthCheck))
            @given(case=strategy)
            def call(case: schemathesis.Case) -> None:
                case.call_and_validate(headers={"Authorization": f"Token {token}"},
                                       checks=[record, *checks])

            try:
                call()
            except Unsatisfiable:
                # Nothing in the operation can be made invalid (a GET without parameters).
                if mode is not schemathesis.GenerationMode.NEGATIVE:
                    report.failures.append(f"{operation.label}: no case could be generated")
            except Exception as err:  # every operation's failure, not only the first
                report.failures.append(f"{operation.label}: {err}")
        assert seen, f"no operation under {paths}"
        return report

    return run


@pytest.fixture
def rows(transactional_db) -> dict[str, int]:
    contact, agent = baker.make(Contact, email="ada@example.com"), baker.make(Agent, kind="ai")
    conversation = baker.make(Conversation, contact=contact, agent=agent, subject="Hello")
    return {"contact": contact.pk, "agent": agent.pk, "conversation": conversation.pk}


@pytest.mark.redis
@pytest.mark.postgres
def test_fuzzing_finds_no_server_error_and_no_schema_violation(fuzz, rows):
    # First on objects that exist, so that details, updates and messages get past the 404
    # (until a fuzzed DELETE removes them).
    for path, pk in (("/api/conversations/{id}/messages/", rows["conversation"]),
                     ("/api/conversations/{id}/", rows["conversation"]),
                     ("/api/contacts/{id}/", rows["contact"]),
                     ("/api/agents/{id}/", rows["agent"])):
        report = fuzz([path], {"id": pk})
        assert report.failures == []
        assert report.saw(f"GET {path}", 200), report.statuses
    # Then everything, with ids and bodies as they come.
    report = fuzz()
    assert report.failures == []
    for resource in ("contacts", "agents"):
        assert report.saw(f"POST /api/{resource}/", 201), report.statuses
        assert report.saw(f"GET /api/{resource}/", 200), report.statuses
    assert report.saw("POST /api/auth/token/", 400), report.statuses


@pytest.mark.redis
@pytest.mark.postgres
def test_requests_that_break_the_schema_get_no_server_error(fuzz, rows):
    """Negative cases: wrong types, missing fields, out-of-range values. Their answers are
    whatever Django gives a path that does not resolve, so only the 500s are checked."""
    report = fuzz(checks=[checks.not_a_server_error],
                  mode=schemathesis.GenerationMode.NEGATIVE)
    assert report.failures == []
    assert report.saw("POST /api/contacts/", 400), report.statuses


@pytest.mark.redis
@pytest.mark.postgres
def test_answers_during_an_outage_match_the_schema(fuzz, rows):
    client = APIClient()
    client.force_authenticate(User.objects.get(username="fuzz"))
    assert client.get("/api/contacts/").status_code == 200  # cached: served stale below
    for name in ("crm.read", "crm.write"):
        get_breaker(name).force("forced_open", reason="database outage")
    checks = [no_internal_error, *CHECKS[1:]]
    report = fuzz(max_examples=8, checks=checks)
    assert report.failures == []
    assert report.saw("GET /api/agents/", 503), report.statuses
    assert report.saw("POST /api/contacts/", 202), report.statuses
    report = fuzz(["/api/conversations/{id}/", "/api/conversations/{id}/messages/"],
                  {"id": rows["conversation"]}, max_examples=8, checks=checks)
    assert report.failures == []
    assert report.saw("PATCH /api/conversations/{id}/", 503), report.statuses


@pytest.mark.redis
@pytest.mark.postgres
def test_rate_limited_answers_match_the_schema(fuzz, settings):
    settings.RESILIENCE_CRM = {**settings.RESILIENCE_CRM, "EXEMPT_STAFF": False}
    for tier in ("free", "anonymous"):  # the token's user, and clients asking for a token
        set_tier(tier, {"read": "2/min", "write": "2/min", "rpc": "2/min", "auth": "2/min"})
    report = fuzz(["/api/contacts/", "/api/auth/token/"], max_examples=8)
    assert report.failures == []
    assert report.saw("GET /api/contacts/", 429), report.statuses
    assert report.saw("POST /api/auth/token/", 429), report.statuses


# What fuzzing turned up, pinned ------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.parametrize("query, param", [
    ("search=%00", "search"), ("company=a%00b", "company"), ("search=" + "x" * 201, "search"),
    ("contact=99999999999999999999", "contact"), ("agent=%C2%B2", "agent"),
])
def test_query_values_the_database_cannot_take_are_a_400_not_a_failure(api, query, param):
    url = "/api/conversations/" if param in ("contact", "agent") else "/api/contacts/"
    response = api.get(f"{url}?{query}")
    assert response.status_code == 400, response.content
    assert param in response.json()["errors"]
    assert get_breaker("crm.read").snapshot()["failures"] == 0


@pytest.mark.redis
@pytest.mark.postgres
def test_an_idempotency_key_longer_than_documented_is_a_400(api):
    payload = {"name": "Ada", "email": "ada@example.com"}
    for length in (201, 300):  # past 255 with its scope, the database refused it: a 500
        response = api.post("/api/contacts/", payload, format="json",
                            HTTP_IDEMPOTENCY_KEY="k" * length)
        assert response.status_code == 400 and "Idempotency-Key" in response.json()["errors"]
    assert not Contact.objects.exists()
    assert api.post("/api/contacts/", payload, format="json",
                    HTTP_IDEMPOTENCY_KEY="k" * 200).status_code == 201
