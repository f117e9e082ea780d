"""The demo API: contacts, agents, conversations and their messages, every data access
through ``protected``. Lists and details are cached reads (served stale, labelled, while the
database is down); creates go through ``protected.submit`` with the client's
``Idempotency-Key`` (202 and queued while the database is down); updates and deletes are
protected writes. The analytics summary is a cached read too; the CSV import spends the
caller's rate-limit budget row by row (``resilience_crm.throttling.bulk``)."""

import csv
import io
import time
import uuid
from datetime import timedelta
from functools import partial
from itertools import islice
from typing import Any
from urllib.parse import urlencode

from django.db.models import Count, Q, QuerySet
from django.db.models.functions import TruncDate
from django.shortcuts import get_object_or_404
from django.utils import timezone
from rest_framework import serializers, status, viewsets
from rest_framework.authtoken.models import Token
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.decorators import action
from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser, MultiPartParser
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from crm_demo.crm.models import Agent, Contact, Conversation, Message, Platform
from crm_demo.crm.serializers import (
    AgentSerializer,
    ContactSerializer,
    ConversationSerializer,
    MessageSerializer,
    PlatformSerializer,
)
from resilience_crm.drf import FallbackHeadersMixin
from resilience_crm.provider import protected
from resilience_crm.throttling import bulk, endpoint


class ProtectedViewSet(FallbackHeadersMixin, viewsets.GenericViewSet):
    """List, create, retrieve, update and destroy through ``protected``."""

    permission_classes = [IsAuthenticated]
    lookup_value_regex = r"\d+"
    #: Key space of this resource's cached reads; writes invalidate it.
    space = ""
    #: The write handler that creates one.
    create_handler = ""
    #: Query parameter -> model field for exact-match filters.
    filter_fields: dict[str, str] = {}
    #: Fields ``?search=`` looks in.
    search_fields: tuple[str, ...] = ()

    def filter_queryset(self, queryset: QuerySet[Any]) -> QuerySet[Any]:
        params = self.request.query_params
        for param, field in self.filter_fields.items():
            if params.get(param):
                queryset = queryset.filter(**{field: params[param]})
        term = params.get("search", "").strip()
        if term and self.search_fields:
            match = Q()
            for field in self.search_fields:
                match |= Q(**{f"{field}__icontains": term})
            queryset = queryset.filter(match)
        return queryset

    def _validate_filters(self, request: Request) -> None:
        for param, field in self.filter_fields.items():
            value = request.query_params.get(param)
            if value and field.endswith("_id") and not value.isdigit():
                raise serializers.ValidationError({param: ["Must be a whole number."]})

    def list(self, request: Request) -> Response:
        self._validate_filters(request)
        query = urlencode(sorted(request.query_params.items()))
        return Response(protected.read(f"{self.space}:list:{query}", self._page))

    def _page(self) -> dict[str, Any]:
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        data = self.get_serializer(page, many=True).data
        return dict(self.get_paginated_response(data).data)

    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(protected.read(f"{self.space}:detail:{pk}", lambda: self._detail(pk)))

    def _detail(self, pk: str) -> dict[str, Any]:
        return dict(self.get_serializer(get_object_or_404(self.get_queryset(), pk=pk)).data)

    def create(self, request: Request) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return self._submit(request, self.create_handler, dict(serializer.validated_data))

    def _submit(self, request: Request, handler: str, payload: dict[str, Any],
                entity: str = "") -> Response:
        key = request.headers.get("Idempotency-Key") or uuid.uuid4().hex
        receipt = protected.submit(handler, payload, entity=entity,
                                   idempotency_key=f"{request.user.pk}:{handler}:{key}")
        if receipt.queued:
            return Response({"status": "queued", "idempotency_key": key},
                            status=status.HTTP_202_ACCEPTED)
        return Response(receipt.result, status=status.HTTP_201_CREATED,
                        headers={"Idempotency-Key": key})

    def update(self, request: Request, pk: str, partial: bool = False) -> Response:
        serializer = self.get_serializer(data=request.data, partial=partial)
        serializer.is_valid(raise_exception=True)
        changes = serializer.validated_data

        def apply() -> dict[str, Any]:
            instance = get_object_or_404(self.get_queryset().select_for_update(), pk=pk)
            self._check_related(changes)
            for field, value in changes.items():
                setattr(instance, field, value)
            instance.save()
            return dict(self.get_serializer(instance).data)

        return Response(protected.write(f"{self.space}:detail:{pk}", apply))

    def partial_update(self, request: Request, pk: str) -> Response:
        return self.update(request, pk, partial=True)

    def destroy(self, request: Request, pk: str) -> Response:
        def apply() -> None:
            get_object_or_404(self.get_queryset(), pk=pk).delete()

        protected.write(f"{self.space}:detail:{pk}", apply)
        return Response(status=status.HTTP_204_NO_CONTENT)

    def _check_related(self, changes: dict[str, Any]) -> None:
        """Foreign keys are plain ids: make sure they exist before saving them."""


class ContactViewSet(ProtectedViewSet):
    queryset = Contact.objects.all()
    serializer_class = ContactSerializer
    space = "contacts"
    create_handler = "contacts.create"
    filter_fields = {"company": "company", "email": "email"}
    search_fields = ("name", "email", "company")


class AgentViewSet(ProtectedViewSet):
    queryset = Agent.objects.all()
    serializer_class = AgentSerializer
    space = "agents"
    create_handler = "agents.create"
    filter_fields = {"kind": "kind"}
    search_fields = ("name", "email")


class ConversationViewSet(ProtectedViewSet):
    queryset = Conversation.objects.all()
    serializer_class = ConversationSerializer
    space = "conversations"
    create_handler = "conversations.create"
    filter_fields = {"status": "status", "contact": "contact_id", "agent": "agent_id"}
    search_fields = ("subject",)

    def _check_related(self, changes: dict[str, Any]) -> None:
        for field, model in (("contact_id", Contact), ("agent_id", Agent)):
            pk = changes.get(field)
            if pk is not None and not model.objects.filter(pk=pk).exists():
                raise serializers.ValidationError({field[:-3]: [f"No such id {pk}."]})

    @action(detail=True, methods=["get", "post"], serializer_class=MessageSerializer)
    def messages(self, request: Request, pk: str) -> Response:
        if request.method == "POST":
            serializer = MessageSerializer(data=request.data)
            serializer.is_valid(raise_exception=True)
            payload = {**serializer.validated_data, "conversation_id": int(pk)}
            return self._submit(request, "messages.create", payload,
                                entity=f"conversation:{pk}")
        return Response(protected.read(f"conversations:messages:{pk}",
                                       partial(self._messages, pk)))

    def _messages(self, pk: str) -> list[dict[str, Any]]:
        get_object_or_404(Conversation, pk=pk)
        messages = Message.objects.filter(conversation_id=pk)
        return [dict(item) for item in MessageSerializer(messages, many=True).data]


class PlatformViewSet(ProtectedViewSet):
    queryset = Platform.objects.all()
    serializer_class = PlatformSerializer
    space = "platforms"
    create_handler = "platforms.create"
    filter_fields = {"kind": "kind", "status": "status"}
    search_fields = ("name",)

    def _check_related(self, changes: dict[str, Any]) -> None:
        name = changes.get("name")
        if name and Platform.objects.filter(name=name).exclude(pk=self.kwargs["pk"]).exists():
            raise serializers.ValidationError({"name": [f"A platform named {name!r} exists."]})


#: Days of ``messages_per_day`` in the analytics summary, today included.
SUMMARY_DAYS = 7


def summarize() -> dict[str, Any]:
    """Counts for the analytics summary: one query per figure, grouped in the database."""
    today = timezone.now().date()
    first = today - timedelta(days=SUMMARY_DAYS - 1)
    per_day = dict(
        Message.objects.filter(created_at__date__gte=first)
        .annotate(day=TruncDate("created_at")).values_list("day")
        .annotate(n=Count("id")).values_list("day", "n"))
    return {
        "contacts": Contact.objects.count(),
        "conversations_by_status": {
            **{choice: 0 for choice in Conversation.Status.values},
            **dict(Conversation.objects.order_by().values_list("status")
                   .annotate(n=Count("id")).values_list("status", "n")),
        },
        "agents_by_kind": {
            **{choice: 0 for choice in Agent.Kind.values},
            **dict(Agent.objects.order_by().values_list("kind")
                   .annotate(n=Count("id")).values_list("kind", "n")),
        },
        "messages_per_day": [
            {"date": day.isoformat(), "messages": per_day.get(day, 0)}
            for day in (first + timedelta(days=n) for n in range(SUMMARY_DAYS))
        ],
        "generated_at": timezone.now().isoformat(),
    }


class AnalyticsSummary(FallbackHeadersMixin, APIView):
    """``GET`` -> the CRM in figures, cached (``FALLBACK_TTL``) and served stale, labelled,
    while the database is down."""

    permission_classes = [IsAuthenticated]

    def get(self, request: Request) -> Response:
        return Response(protected.read("analytics:summary", summarize))


class CSVParser(BaseParser):
    """``text/csv`` bodies as ``{"csv": text}`` (UTF-8, a byte-order mark ignored)."""

    media_type = "text/csv"

    def parse(self, stream: Any, media_type: str | None = None,
              parser_context: Any = None) -> dict[str, str]:
        return {"csv": decode_csv(stream.read()) if stream is not None else ""}


def decode_csv(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ParseError(f"The CSV is not UTF-8: {err}") from err


#: Columns an import reads; ``name`` and ``email`` are required.
IMPORT_COLUMNS = ("name", "email", "phone", "company")


class ContactImport(APIView):
    """``POST`` a CSV of contacts (a ``text/csv`` body, or a multipart ``file``) -> one
    result per row: ``created``, ``queued`` (the database is down), ``invalid`` (with
    ``errors``), ``rate_limited`` (with ``retry_after``) or ``failed``.

    Each row spends one ``rpc`` request of the caller's budget; when it is short the import
    waits the ``Retry-After`` up to ``max_wait`` seconds in all, and reports the rows it
    could not afford instead of failing. Send the same ``Idempotency-Key`` to retry an
    import: rows already created are not created twice."""

    permission_classes = [IsAuthenticated]
    parser_classes = [CSVParser, MultiPartParser]
    resilience_operation = "rpc"
    #: The longest an import waits for the caller's budget, in seconds, in all.
    max_wait = 5.0
    #: Rows one import may carry.
    max_rows = 5000
    sleep = staticmethod(time.sleep)

    def post(self, request: Request) -> Response:
        rows = self._rows(request)
        key = request.headers.get("Idempotency-Key") or uuid.uuid4().hex

        def create(item: tuple[int, dict[str, Any]]) -> dict[str, Any]:
            index, row = item
            serializer = ContactSerializer(data={
                column: (row.get(column) or "").strip() for column in IMPORT_COLUMNS})
            if not serializer.is_valid():
                return {"status": "invalid", "errors": serializer.errors}
            receipt = protected.submit(
                "contacts.create", dict(serializer.validated_data),
                idempotency_key=f"{request.user.pk}:contacts.import:{key}:{index}")
            if receipt.queued:
                return {"status": "queued"}
            return {"status": "created", "id": receipt.result["id"]}

        outcomes = bulk(request, enumerate(rows), create, op_class=self.resilience_operation,
                        endpoint=endpoint(request), max_wait=self.max_wait, sleep=self.sleep)
        results = []
        for outcome in outcomes:
            if outcome.status == "done":
                result = outcome.value
            elif outcome.status == "rate_limited":
                result = {"status": "rate_limited",
                          "retry_after": max(1, round(outcome.retry_after))}
            else:
                result = {"status": "failed", "error": outcome.error}
            results.append({"row": outcome.index + 1, **result})
        totals = {name: 0 for name in
                  ("created", "queued", "invalid", "rate_limited", "failed")}
        for result in results:
            totals[result["status"]] += 1
        return Response({"idempotency_key": key, "totals": totals, "rows": results})

    def _rows(self, request: Request) -> list[dict[str, Any]]:
        data = request.data if isinstance(request.data, dict) else {}
        if "file" in request.FILES:
            text = decode_csv(request.FILES["file"].read())
        elif isinstance(data.get("csv"), str):
            text = data["csv"]
        else:
            raise serializers.ValidationError(
                {"file": ["Send a CSV: a text/csv body or a multipart file named 'file'."]})
        reader = csv.DictReader(io.StringIO(text))
        try:
            missing = {"name", "email"} - set(reader.fieldnames or ())
            rows = list(islice(reader, self.max_rows + 1))
        except csv.Error as err:
            raise ParseError(f"The CSV cannot be read: {err}") from err
        if missing:
            raise serializers.ValidationError(
                {"file": [f"The header must name the columns {', '.join(sorted(missing))}."]})
        if len(rows) > self.max_rows:
            raise serializers.ValidationError(
                {"file": [f"At most {self.max_rows} rows per import."]})
        return rows


class ObtainToken(FallbackHeadersMixin, APIView):
    """``POST {"username", "password"}`` -> ``{"token": ...}``."""

    authentication_classes: list[Any] = []
    resilience_operation = "auth"
    permission_classes = [AllowAny]

    def post(self, request: Request) -> Response:
        serializer = AuthTokenSerializer(data=request.data, context={"request": request})

        def obtain() -> str:
            serializer.is_valid(raise_exception=True)
            token, _ = Token.objects.get_or_create(user=serializer.validated_data["user"])
            return str(token.key)

        return Response({"token": protected.auth("token", obtain)})
