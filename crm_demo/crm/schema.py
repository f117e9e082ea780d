"""The demo API's OpenAPI 3 schema (drf-spectacular): what the resilience layer in front of
every operation may answer besides its success.

drf-spectacular documents each view's own request and success response; the views mark
their creates with :data:`IDEMPOTENCY_KEY` (``extend_schema``), and the postprocessing hook
:func:`document_resilience` adds, once for every operation:

- ``429`` (``RATE_LIMITED`` problem, ``Retry-After``) and the rate-limit headers
  (``RateLimit``, ``RateLimit-Policy``, ``X-RateLimit-*``) on every answer;
- ``503`` (``CIRCUIT_OPEN`` and the other unavailable problems, ``Retry-After``) and ``504``
  (``TIMEOUT``);
- ``X-Resilience-Fallback`` and ``Age`` on reads, which may come from the fallback cache;
- on creates, ``202`` (the queued-write receipt), ``409`` and ``422`` (idempotency);
- the client errors DRF answers: ``400`` where there is input (on a list also the
  ``UNKNOWN_PARAMETER`` problem for a query parameter it does not declare), ``401``/``403``
  where a token is needed, ``404`` where a path names an object or a list is paged.
"""

from __future__ import annotations

import uuid
from typing import Any

from drf_spectacular.utils import OpenApiParameter
from rest_framework import serializers
from rest_framework.request import Request

from crm_demo.crm.filters import MAX_ID

PROBLEM = "application/problem+json"
JSON = "application/json"
#: The longest ``Idempotency-Key`` a client may send (the key is stored with its scope).
IDEMPOTENCY_KEY_MAX_LENGTH = 200

#: The request header of a create (``extend_schema(parameters=[IDEMPOTENCY_KEY])``).
IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key", {"type": "string", "minLength": 1,
                        "maxLength": IDEMPOTENCY_KEY_MAX_LENGTH},
    OpenApiParameter.HEADER,
    description="Makes a create safe to repeat: the same key (per user) with the same body"
                " gets the first answer back, with another body 422, while the first is"
                " still being applied 409. Without one, the server picks a key.")



def idempotency_key(request: Request) -> str:
    """The create's ``Idempotency-Key`` header, or a new key; a 400 when it is too long."""
    key = request.headers.get("Idempotency-Key") or uuid.uuid4().hex
    if len(key) > IDEMPOTENCY_KEY_MAX_LENGTH:
        raise serializers.ValidationError({"Idempotency-Key": [
            f"Must be at most {IDEMPOTENCY_KEY_MAX_LENGTH} characters."]})
    return key


_INTEGER = {"type": "integer"}
_STRING = {"type": "string"}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details from the resilience layer.",
        "required": ["type", "title", "status", "detail", "code"],
        "properties": {
            "type": {**_STRING, "example": "urn:resilience-crm:problem:circuit-open"},
            "title": _STRING,
            "status": _INTEGER,
            "detail": _STRING,
            "code": {**_STRING, "example": "CIRCUIT_OPEN",
                     "description": "CIRCUIT_OPEN, RATE_LIMITED, TIMEOUT, RETRIES_EXHAUSTED,"
                                    " UNAVAILABLE, STORE_UNAVAILABLE, QUEUE_UNAVAILABLE,"
                                    " IDEMPOTENCY_CONFLICT, IDEMPOTENCY_IN_FLIGHT,"
                                    " INVALID_WRITE, PAYLOAD_TOO_LARGE or UNKNOWN_PARAMETER."},
            "circuit": {**_STRING, "description": "The circuit that refused the call."},
            "retry_after": {**_INTEGER, "description": "Seconds to wait before retrying."},
        },
    },
    "RateLimitedProblem": {
        "allOf": [
            {"$ref": "#/components/schemas/Problem"},
            {"type": "object", "properties": {
                "code": {"type": "string", "enum": ["RATE_LIMITED"]},
                "violated_policies": {"type": "array", "items": _STRING,
                                      "description": "The policies this request exceeded."},
            }},
        ],
    },
    "QueuedWrite": {
        "type": "object",
        "description": "The receipt of a create queued while its circuit is open; it is"
                       " applied exactly once when the database is back.",
        "required": ["status", "idempotency_key"],
        "properties": {
            "status": {"type": "string", "enum": ["queued"]},
            "idempotency_key": _STRING,
        },
    },
    "Error": {
        "type": "object",
        "required": ["detail"],
        "properties": {"detail": _STRING},
    },
    "ValidationError": {
        "type": "object",
        "description": "Field name (or non_field_errors, detail) -> what is wrong.",
        "additionalProperties": {},
    },
}

HEADERS: dict[str, dict[str, Any]] = {
    "Retry-After": {"required": True, "schema": {**_INTEGER, "minimum": 1},
                    "description": "Seconds to wait before trying again."},
    "RateLimit-Policy": {"schema": _STRING, "description":
                         'Every limit that applies (IETF draft): "policy";q=limit;w=window.'},
    "RateLimit": {"schema": _STRING, "description":
                  'What is left of each (IETF draft): "policy";r=remaining;t=reset seconds.'},
    "X-RateLimit-Limit": {"schema": _INTEGER, "description": "The tightest limit."},
    "X-RateLimit-Remaining": {"schema": _INTEGER, "description": "What is left of it."},
    "X-RateLimit-Reset": {"schema": _INTEGER, "description": "Seconds until it is full again."},
    "X-Resilience-Fallback": {"schema": {"type": "string", "enum": ["stale", "degraded"]},
                              "description": "Present when the data came from the fallback"
                                             " cache (stale) or a degraded fallback."},
    "Age": {"schema": {**_INTEGER, "minimum": 0},
            "description": "Seconds since stale data was read from the database."},
    "Idempotency-Key": {"schema": _STRING,
                        "description": "The key this create was applied under."},
}

RATE_LIMIT_HEADERS = ("RateLimit-Policy", "RateLimit", "X-RateLimit-Limit",
                      "X-RateLimit-Remaining", "X-RateLimit-Reset")
FALLBACK_HEADERS = ("X-Resilience-Fallback", "Age")


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _response(description: str, schema: str, media_type: str = PROBLEM,
              headers: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {name: _ref("headers", name) for name in (*headers, *RATE_LIMIT_HEADERS)},
        "content": {media_type: {"schema": _ref("schemas", schema)}},
    }


def _invalid_create() -> dict[str, Any]:
    """A create's 400: a field that fails validation (JSON), or a value the database could
    not store though it passed (``INVALID_WRITE`` problem), the same with it up or down."""
    response = _response("The request is invalid, or has values the database cannot store"
                         " (INVALID_WRITE).", "ValidationError", JSON)
    response["content"][PROBLEM] = {"schema": _ref("schemas", "Problem")}
    return response


RESPONSES: dict[str, dict[str, Any]] = {
    "BadRequest": _response("The request is invalid.", "ValidationError", JSON),
    "BadQuery": {**_response("A filter's value is invalid, or the query names a parameter"
                             " the list does not declare (UNKNOWN_PARAMETER).",
                             "ValidationError", JSON),
                 "content": {JSON: {"schema": _ref("schemas", "ValidationError")},
                             PROBLEM: {"schema": _ref("schemas", "Problem")}}},
    "InvalidCreate": _invalid_create(),
    "PayloadTooLarge": _response("The body is over the upload limit (PAYLOAD_TOO_LARGE);"
                                 " nothing of it was read.", "Problem"),
    "Unauthorized": _response("No valid token (send `Authorization: Token <token>`).",
                              "Error", JSON),
    "Forbidden": _response("Not allowed (a session without its CSRF token).", "Error", JSON),
    "NotFound": _response("No such object, or no such page.", "Error", JSON),
    "RateLimited": _response("Rate limited: a limit of the client's tier or this endpoint"
                             " is used up.", "RateLimitedProblem",
                             headers=("Retry-After",)),
    "Unavailable": _response("The circuit is open and nothing cached can serve"
                             " (CIRCUIT_OPEN), or the database or a backing store is failing.",
                             "Problem", headers=("Retry-After",)),
    "Timeout": _response("The operation went over its deadline (TIMEOUT).", "Problem"),
    "Queued": _response("Accepted: the database is unavailable and the create is queued;"
                        " it is applied exactly once when it is back.", "QueuedWrite", JSON),
    "IdempotencyInFlight": _response("A create with this Idempotency-Key is still being"
                                     " applied (IDEMPOTENCY_IN_FLIGHT).", "Problem"),
    "IdempotencyConflict": _response("This Idempotency-Key was used with another body"
                                     " (IDEMPOTENCY_CONFLICT).", "Problem"),
}

METHODS = ("get", "put", "post", "patch", "delete")


def _is_create(operation: dict[str, Any]) -> bool:
    """A create through the write queue: it takes an ``Idempotency-Key`` and answers 201 (the
    CSV import takes the key too, but answers each row's result with a 200)."""
    return "201" in operation.get("responses", {}) and any(
        p.get("in") == "header" and p.get("name") == "Idempotency-Key"
        for p in operation.get("parameters", []))


def _needs_auth(operation: dict[str, Any]) -> bool:
    security = operation.get("security", [])
    return bool(security) and {} not in security


def _answers(method: str, operation: dict[str, Any]) -> dict[str, str]:
    """Status code -> the component response an operation may answer besides its own."""
    parameters = operation.get("parameters", [])
    answers = {"429": "RateLimited", "503": "Unavailable", "504": "Timeout"}
    if any(p.get("in") == "query" for p in parameters):
        answers["400"] = "BadQuery"
    elif "requestBody" in operation:
        answers["400"] = "BadRequest"
    if _needs_auth(operation):
        answers["401"] = "Unauthorized"
        if method != "get":
            answers["403"] = "Forbidden"
    if any(p.get("in") == "path" or p.get("name") == "page" for p in parameters):
        answers["404"] = "NotFound"
    if _is_create(operation):
        answers.update({"400": "InvalidCreate", "202": "Queued", "409": "IdempotencyInFlight",
                        "422": "IdempotencyConflict"})
    if "text/csv" in operation.get("requestBody", {}).get("content", {}):
        answers["413"] = "PayloadTooLarge"
    return answers


def _integer_path_ids(operation: dict[str, Any]) -> None:
    """Ids in paths match ``\\d+`` and name a bigint: document them as the integers they
    are (as the bodies show them), within range."""
    for parameter in operation.get("parameters", []):
        schema = parameter.get("schema", {})
        if parameter.get("in") == "path" and schema.get("pattern") == r"^\d+$":
            parameter["schema"] = {"type": "integer", "minimum": 0, "maximum": MAX_ID}


def document_resilience(result: dict[str, Any], generator: Any, request: Any, public: bool,
                        **kwargs: Any) -> dict[str, Any]:
    """drf-spectacular postprocessing hook (``SPECTACULAR_SETTINGS["POSTPROCESSING_HOOKS"]``):
    the resilience layer's answers and headers on every operation."""
    components = result.setdefault("components", {})
    components.setdefault("schemas", {}).update(SCHEMAS)
    components.setdefault("headers", {}).update(HEADERS)
    components.setdefault("responses", {}).update(RESPONSES)
    for path_item in result.get("paths", {}).values():
        for method in METHODS:
            operation = path_item.get(method)
            if operation is None:
                continue
            _integer_path_ids(operation)
            responses = operation.setdefault("responses", {})
            for code, name in _answers(method, operation).items():
                responses.setdefault(code, _ref("responses", name))
            for code, response in responses.items():
                if "$ref" in response:
                    continue  # a component response, whose headers are its own
                headers = response.setdefault("headers", {})
                names: tuple[str, ...] = RATE_LIMIT_HEADERS
                if method == "get" and code == "200":
                    names += FALLBACK_HEADERS
                if _is_create(operation) and code == "201":
                    names += ("Idempotency-Key",)
                for name in names:
                    headers.setdefault(name, _ref("headers", name))
    return result
