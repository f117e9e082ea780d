"""The CSV contact import: each row spends one request of the caller's rate-limit budget
(``resilience_crm.throttling.bulk``) and is created through ``protected.submit``; every row
gets its own result, so one bad row or an exhausted budget never fails the import.

A body larger than ``DATA_UPLOAD_MAX_MEMORY_SIZE`` is refused with 413 (problem+json
``PAYLOAD_TOO_LARGE``) before it is read: by its ``Content-Length``, and by reading it in
bounded chunks where the length is not known."""

import csv
import io
import time
from itertools import islice
from typing import IO, Any

from django.conf import global_settings, settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser, MultiPartParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from crm_demo.crm.schema import IDEMPOTENCY_KEY, idempotency_key
from crm_demo.crm.serializers import ContactSerializer
from resilience_crm.exceptions import ResilienceError
from resilience_crm.provider.facade import protected
from resilience_crm.throttling import bulk, endpoint

#: Bytes read from a body at a time.
CHUNK = 64 * 1024


class PayloadTooLarge(ResilienceError):
    code = "PAYLOAD_TOO_LARGE"
    default_message = "The upload is too large."
    status = 413


def max_bytes() -> int:
    """The largest CSV body accepted: ``DATA_UPLOAD_MAX_MEMORY_SIZE`` (Django's default,
    2.5 MB, where it is ``None``)."""
    return (settings.DATA_UPLOAD_MAX_MEMORY_SIZE
            or global_settings.DATA_UPLOAD_MAX_MEMORY_SIZE)  # type: ignore[attr-defined]


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"A CSV import may be at most {limit} bytes; split the file.")


def read_capped(stream: IO[bytes], limit: int) -> bytes:
    """All of ``stream``, read ``CHUNK`` bytes at a time; :class:`PayloadTooLarge` as soon as
    it passes ``limit`` bytes."""
    data = bytearray()
    while chunk := stream.read(min(CHUNK, limit + 1 - len(data))):
        data += chunk
        if len(data) > limit:
            raise too_large(limit)
    return bytes(data)


class CSVParser(BaseParser):
    """``text/csv`` bodies as ``{"csv": text}`` (UTF-8, a byte-order mark ignored), at most
    :func:`max_bytes`."""

    media_type = "text/csv"

    def parse(self, stream: Any, media_type: str | None = None,
              parser_context: Any = None) -> dict[str, str]:
        return {"csv": decode_csv(read_capped(stream, max_bytes()))
                if stream is not None else ""}


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
    ``errors``), ``rate_limited`` (with ``retry_after``) or ``failed`` (with a stable
    ``code`` and ``error`` message; the detail goes to the log).

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

    @extend_schema(
        request={"text/csv": OpenApiTypes.STR,
                 "multipart/form-data": inline_serializer("ContactImportUpload", {
                     "file": serializers.FileField()})},
        parameters=[IDEMPOTENCY_KEY],
        responses=inline_serializer("ContactImportResult", {
            "idempotency_key": serializers.CharField(),
            "totals": serializers.DictField(child=serializers.IntegerField()),
            "rows": inline_serializer("ContactImportRow", {
                "row": serializers.IntegerField(),
                "status": serializers.ChoiceField(
                    choices=["created", "queued", "invalid", "rate_limited", "failed"]),
                "id": serializers.IntegerField(required=False),
                "errors": serializers.DictField(
                    child=serializers.ListField(child=serializers.CharField()),
                    required=False),
                "retry_after": serializers.IntegerField(required=False),
                "code": serializers.CharField(required=False),
                "error": serializers.CharField(required=False),
            }, many=True),
        }),
    )
    def post(self, request: Request) -> Response:
        limit = max_bytes()
        length = request.META.get("CONTENT_LENGTH") or ""
        if length.isdigit() and int(length) > limit:
            raise too_large(limit)  # before the body is read
        key = idempotency_key(request)
        rows = self._rows(request)

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
                result = {"status": "failed", "code": outcome.code, "error": outcome.error}
            results.append({"row": outcome.index + 1, **result})
        totals = {name: 0 for name in
                  ("created", "queued", "invalid", "rate_limited", "failed")}
        for result in results:
            totals[result["status"]] += 1
        return Response({"idempotency_key": key, "totals": totals, "rows": results})

    def _rows(self, request: Request) -> list[dict[str, Any]]:
        data = request.data if isinstance(request.data, dict) else {}
        if "file" in request.FILES:
            text = decode_csv(read_capped(request.FILES["file"], max_bytes()))
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
