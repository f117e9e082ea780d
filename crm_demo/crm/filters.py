"""Query-string filters of the demo API's lists, as a DRF filter backend so that the OpenAPI
schema documents them (``get_schema_operation_parameters``).

A view names its filters in ``filter_fields`` (query parameter -> model field, exact match)
and ``search_fields`` (``?search=`` looks in each, case-insensitively). :func:`validate`
checks the query string before the view reads through ``protected``: a bad value is the
client's 400, never a database error counted against the circuit, and a parameter the view
does not declare is a 400 too, never a cache key of its own.
"""

from typing import Any
from urllib.parse import urlencode

from django.db.models import Q, QuerySet
from rest_framework import serializers
from rest_framework.filters import BaseFilterBackend
from rest_framework.request import Request
from rest_framework.settings import api_settings

from resilience_crm.exceptions import ResilienceError

#: The largest id a query may name (PostgreSQL's bigint).
MAX_ID = 2**63 - 1
#: The longest filter or search value accepted.
MAX_LENGTH = 200


def filter_fields(view: Any) -> dict[str, str]:
    return dict(getattr(view, "filter_fields", {}))


def search_fields(view: Any) -> tuple[str, ...]:
    return tuple(getattr(view, "search_fields", ()))


def _parameters(view: Any) -> list[str]:
    return [*filter_fields(view), *(["search"] if search_fields(view) else [])]


class UnknownParameter(ResilienceError):
    """A query parameter the list does not declare: refused, so that junk in a query string
    never makes a cache key (and a database read) of its own."""

    code = "UNKNOWN_PARAMETER"
    default_message = "The query names a parameter this endpoint does not take."
    status = 400


def declared(view: Any) -> set[str]:
    """The query parameters a list view takes, the ones its schema documents: its filter
    backends' and its paginator's (``page``, ``page_size`` where it takes one), and DRF's
    ``?format=``."""
    names = {api_settings.URL_FORMAT_OVERRIDE} - {None}
    sources = [backend() for backend in view.filter_backends]
    if view.paginator is not None:
        sources.append(view.paginator)
    for source in sources:
        names.update(parameter["name"]
                     for parameter in source.get_schema_operation_parameters(view))
    return names


def validate(request: Request, view: Any) -> str:
    """Check the query string of a list and return its cache key part: the declared
    parameters, sorted, ``?format=`` left out (it changes how the page is rendered, not what
    it holds).

    Raise :class:`UnknownParameter` (a 400 problem) naming every parameter the view does not
    declare, and a ``ValidationError`` (400) naming each declared one that cannot be a
    filter: ids that are not whole numbers in range, NUL characters (PostgreSQL refuses them
    in text), values longer than ``MAX_LENGTH``."""
    allowed = declared(view)
    unknown = sorted(set(request.query_params) - allowed)
    if unknown:
        raise UnknownParameter(f"Unknown query parameter: {', '.join(unknown)}. This endpoint"
                               f" takes: {', '.join(sorted(allowed))}.")
    errors: dict[str, list[str]] = {}
    ids = {param for param, field in filter_fields(view).items() if field.endswith("_id")}
    for param in _parameters(view):
        value = request.query_params.get(param, "")
        if "\x00" in value:
            errors[param] = ["Must not contain NUL characters."]
        elif len(value) > MAX_LENGTH:
            errors[param] = [f"Must be at most {MAX_LENGTH} characters."]
        elif param in ids and value and not (value.isascii() and value.isdigit()
                                             and int(value) <= MAX_ID):
            errors[param] = ["Must be a whole number."]
    if errors:
        raise serializers.ValidationError(errors)
    return urlencode(sorted((param, value) for param, value in request.query_params.items()
                            if param != api_settings.URL_FORMAT_OVERRIDE))


class FieldFilter(BaseFilterBackend):
    """Exact-match filters and a case-insensitive search, named by the view."""

    def filter_queryset(self, request: Request, queryset: QuerySet[Any],
                        view: Any) -> QuerySet[Any]:
        params = request.query_params
        for param, field in filter_fields(view).items():
            if params.get(param):
                queryset = queryset.filter(**{field: params[param]})
        term = params.get("search", "").strip()
        fields = search_fields(view)
        if term and fields:
            match = Q()
            for field in fields:
                match |= Q(**{f"{field}__icontains": term})
            queryset = queryset.filter(match)
        return queryset

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        ids = {param for param, field in filter_fields(view).items() if field.endswith("_id")}
        parameters = []
        for param, field in filter_fields(view).items():
            if param in ids:
                schema: dict[str, Any] = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
                description = f"Only those whose {param} has this id."
            else:
                schema = {"type": "string", "maxLength": MAX_LENGTH}
                choices = view.queryset.model._meta.get_field(field).choices
                if choices:
                    schema = {"type": "string", "enum": [value for value, _ in choices]}
                description = f"Only those whose {field} is exactly this."
            parameters.append({"name": param, "in": "query", "required": False,
                               "description": description, "schema": schema})
        if search_fields(view):
            parameters.append({
                "name": "search", "in": "query", "required": False,
                "description": f"Only those with this text in {', '.join(search_fields(view))}.",
                "schema": {"type": "string", "maxLength": MAX_LENGTH}})
        return parameters
