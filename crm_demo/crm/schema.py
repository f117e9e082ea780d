"""The demo API's OpenAPI 3 schema (drf-spectacular): what the resilience layer in front of
every operation may answer besides its success.

drf-spectacular documents each view's own request and success response; the views mark
their creates with :data:`IDEMPOTENCY_KEY` (``extend_schema``), and the postprocessing hook
:func:`document_resilience` adds, once for every operation:

- ``429`` (``RATE_LIMITED`` problem, ``Retry-After``) and the rate-limit headers
  (``RateLimit``, ``RateLimit-Policy``, ``X-RateLimit-*``) on the success answers and the 429
  (every answer carries them; repeating five headers on each error made one operation
  thousands of pixels tall in Swagger UI);
- ``503`` (``CIRCUIT_OPEN`` and the other unavailable problems, ``Retry-After``) and ``504``
  (``TIMEOUT``);
- ``X-Resilience-Fallback`` and ``Age`` on reads, which may come from the fallback cache;
- on creates, ``202`` (the queued-write receipt), ``409`` and ``422`` (idempotency);
- the client errors, problems too (``resilience_crm.drf.problem_exception_handler``):
  ``400`` where there is input (on a list also ``UNKNOWN_PARAMETER`` for a query parameter it
  does not declare), ``401``/``403`` where a token is needed, ``404`` where a path names an
  object or a list is paged. Every response has one example per code it can carry.
"""

from __future__ import annotations

import uuid
from http import HTTPStatus
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
            "type": {**_STRING, "description": "urn:resilience-crm:problem: and the code in"
                                                " lower case, _ as -."},
            "title": _STRING,
            "status": _INTEGER,
            "detail": _STRING,
            "code": {**_STRING,
                     "description": "CIRCUIT_OPEN, RATE_LIMITED, TIMEOUT, RETRIES_EXHAUSTED,"
                                    " UNAVAILABLE, STORE_UNAVAILABLE, QUEUE_UNAVAILABLE,"
                                    " IDEMPOTENCY_CONFLICT, IDEMPOTENCY_IN_FLIGHT,"
                                    " INVALID_WRITE, PAYLOAD_TOO_LARGE, UNKNOWN_PARAMETER;"
                                    " and DRF's own in upper case: INVALID (with errors),"
                                    " PARSE_ERROR, NOT_AUTHENTICATED, AUTHENTICATION_FAILED,"
                                    " PERMISSION_DENIED, NOT_FOUND, METHOD_NOT_ALLOWED,"
                                    " NOT_ACCEPTABLE, UNSUPPORTED_MEDIA_TYPE."},
            "circuit": {**_STRING, "description": "The circuit that refused the call."},
            "retry_after": {**_INTEGER, "description": "Seconds to wait before retrying."},
            "errors": {"type": "object", "additionalProperties": {},
                       "description": "INVALID: field name (or non_field_errors) -> what is"
                                      " wrong with it."},
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
    "X-Resilience-Fallback": {"schema": {"type": "string",
                                         "enum": ["replica", "stale", "degraded"]},
                              "description": "Present when the data came from a read"
                                             " replica, the fallback cache (stale) or a"
                                             " degraded fallback."},
    "Age": {"schema": {**_INTEGER, "minimum": 0},
            "description": "Seconds since stale data was read from the database, or how far"
                           " the replica was behind its primary."},
    "Idempotency-Key": {"schema": _STRING,
                        "description": "The key this create was applied under."},
    "Idempotent-Replayed": {"schema": {"type": "string", "enum": ["true"]},
                            "description": "This answer is the first one given back: an"
                                           " earlier create with this Idempotency-Key did"
                                           " the work."},
}

#: The header of a create's repeated answer.
REPLAYED_HEADER = "Idempotent-Replayed"

RATE_LIMIT_HEADERS = ("RateLimit-Policy", "RateLimit", "X-RateLimit-Limit",
                      "X-RateLimit-Remaining", "X-RateLimit-Reset")
FALLBACK_HEADERS = ("X-Resilience-Fallback", "Age")


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _example(status: int, code: str, detail: str, **extra: Any) -> dict[str, Any]:
    """A problem body as the app writes it (:mod:`resilience_crm.problems`)."""
    return {"summary": code, "value": {
        "type": "urn:resilience-crm:problem:" + code.lower().replace("_", "-"),
        "title": HTTPStatus(status).phrase, "status": status, "detail": detail, "code": code,
        **extra}}


def _response(description: str, schema: str, media_type: str = PROBLEM,
              headers: tuple[str, ...] = (),
              examples: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    """A component response: ``headers`` are its own (the rate-limit headers are on the
    success answers and the 429, not repeated on every error); one example per code."""
    content: dict[str, Any] = {"schema": _ref("schemas", schema)}
    if examples:
        content["examples"] = {example["summary"]: example for example in examples}
    return {
        "description": description,
        "headers": {name: _ref("headers", name) for name in headers},
        "content": {media_type: content},
    }


_INVALID = _example(400, "INVALID", "The request has invalid values.",
                    errors={"email": ["This field is required."]})
_RETRY = {"retry_after": 30}

RESPONSES: dict[str, dict[str, Any]] = {
    "BadRequest": _response("The request is invalid (INVALID, with errors), or its body cannot"
                            " be parsed (PARSE_ERROR).", "Problem", examples=(
                                _INVALID, _example(400, "PARSE_ERROR", "JSON parse error."))),
    "BadQuery": _response("A filter's value is invalid (INVALID), or the query names a"
                          " parameter the list does not declare (UNKNOWN_PARAMETER).",
                          "Problem", examples=(
                              _example(400, "INVALID", "The request has invalid values.",
                                       errors={"contact": ["Enter a whole number."]}),
                              _example(400, "UNKNOWN_PARAMETER",
                                       "Unknown query parameter: colour."))),
    "InvalidCreate": _response("The request is invalid (INVALID), or has values the database"
                               " cannot store (INVALID_WRITE), the same with it up or down.",
                               "Problem", examples=(_INVALID, _example(
                                   400, "INVALID_WRITE", "email: value too long."))),
    "PayloadTooLarge": _response("The body is over the upload limit (PAYLOAD_TOO_LARGE);"
                                 " nothing of it was read.", "Problem", examples=(_example(
                                     413, "PAYLOAD_TOO_LARGE",
                                     "The upload is over 1048576 bytes."),)),
    "Unauthorized": _response("No valid token (send `Authorization: Token <token>`); each"
                              " refused token spends one of the address's failures, which"
                              " the rate-limit headers count.", "Problem", examples=(
                                  _example(401, "NOT_AUTHENTICATED",
                                           "Authentication credentials were not provided."),
                                  _example(401, "AUTHENTICATION_FAILED", "Invalid token."))),
    "Forbidden": _response("Not allowed (a session without its CSRF token).", "Problem",
                           examples=(_example(403, "PERMISSION_DENIED",
                                              "CSRF Failed: CSRF token missing."),)),
    "NotFound": _response("No such object, or no such page.", "Problem",
                          examples=(_example(404, "NOT_FOUND", "No Contact matches the given"
                                             " query."),)),
    "RateLimited": _response("Rate limited: a limit of the client's tier or this endpoint"
                             " is used up.", "RateLimitedProblem",
                             headers=("Retry-After", *RATE_LIMIT_HEADERS), examples=(_example(
                                 429, "RATE_LIMITED", "Too many requests. Try again in 30 s.",
                                 violated_policies=["free.read.60s"], **_RETRY),)),
    "Unavailable": _response("The circuit is open and nothing cached can serve"
                             " (CIRCUIT_OPEN), or the database or a backing store is failing.",
                             "Problem", headers=("Retry-After",), examples=(
                                 _example(503, "CIRCUIT_OPEN", "The service is temporarily"
                                          " unavailable.", circuit="crm.read", **_RETRY),
                                 _example(503, "UNAVAILABLE", "The database is unavailable.",
                                          circuit="crm.read"),
                                 _example(503, "RETRIES_EXHAUSTED", "Gave up after 3"
                                          " attempts.", circuit="crm.read"),
                                 _example(503, "QUEUE_UNAVAILABLE", "The write could neither"
                                          " be applied nor queued.", circuit="crm.write"),
                                 _example(503, "STORE_UNAVAILABLE", "Requests of this kind are"
                                          " refused while the rate-limit store is"
                                          " unreachable. Try again in 1 s.",
                                          retry_after=1))),
    "Timeout": _response("The operation went over its deadline (TIMEOUT).", "Problem",
                         examples=(_example(504, "TIMEOUT", "The operation timed out.",
                                            circuit="crm.read"),)),
    "Queued": _response("Accepted: the database is unavailable and the create is queued;"
                        " it is applied exactly once when it is back.", "QueuedWrite", JSON,
                        headers=(*RATE_LIMIT_HEADERS, "Idempotent-Replayed")),
    "IdempotencyInFlight": _response("A create with this Idempotency-Key is still being"
                                     " applied (IDEMPOTENCY_IN_FLIGHT).", "Problem",
                                     examples=(_example(409, "IDEMPOTENCY_IN_FLIGHT",
                                                        "A request with this key is still"
                                                        " being processed."),)),
    "IdempotencyConflict": _response("This Idempotency-Key was used with another body"
                                     " (IDEMPOTENCY_CONFLICT).", "Problem",
                                     examples=(_example(422, "IDEMPOTENCY_CONFLICT",
                                                        "This key was used with another"
                                                        " body."),)),
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
                names: tuple[str, ...] = RATE_LIMIT_HEADERS if code.startswith("2") else ()
                if method == "get" and code == "200":
                    names += FALLBACK_HEADERS
                if _is_create(operation) and code == "201":
                    names += ("Idempotency-Key", REPLAYED_HEADER)
                for name in names:
                    headers.setdefault(name, _ref("headers", name))
    return result
