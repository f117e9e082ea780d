"""The CSV contact import: every row spends the caller's rpc budget (on the real Redis
limiter), short waits are waited out, and each row gets its own result; one bad row or an
exhausted budget never fails the import. A body over the upload limit is a 413 before it is
read, and a row the database refuses says a stable code, never the database's text."""

from __future__ import annotations

import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection

from crm_demo.crm.imports import CHUNK, ContactImport, CSVParser, PayloadTooLarge
from crm_demo.crm.models import Contact
from resilience_crm.models import TierAssignment
from resilience_crm.provider import probe
from resilience_crm.ratelimit import tiers
from tests.demo_api import force_open, problem
from tests.ratelimit_helpers import on_clock, set_tier

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

URL = "/api/contacts/import/"
HEADER = "name,email,phone,company\n"


def give_tier(user, limits):
    TierAssignment.objects.update_or_create(user=user,
                                            defaults={"tier": set_tier("importer", limits)})
    tiers.clear()


def lines(start, stop):
    return "".join(f"P{i},p{i}@example.com,,Acme\n" for i in range(start, stop))


def csv_of(count):
    return HEADER + lines(0, count)


def post_csv(api, text, **headers):
    return api.generic("POST", URL, text.encode(), content_type="text/csv", **headers)


def test_rows_past_the_budget_are_rate_limited_and_a_bad_row_is_invalid(api):
    give_tier(api.user, {"rpc": "4/hour"})  # the request takes one, three rows the rest
    text = HEADER + "Ada,ada@example.com,,\nBad,not-an-email,,\n" + lines(2, 6)
    response = post_csv(api, text)
    assert response.status_code == 200, response.content
    body = response.json()
    rows = body["rows"]
    assert [(row["row"], row["status"]) for row in rows] == [
        (1, "created"), (2, "invalid"), (3, "created"),
        (4, "rate_limited"), (5, "rate_limited"), (6, "rate_limited")]
    assert "email" in rows[1]["errors"]
    assert all(800 < row["retry_after"] <= 900 for row in rows[3:])  # 4/hour: one per 900 s
    assert body["totals"] == {"created": 2, "queued": 0, "invalid": 1, "rate_limited": 3,
                              "failed": 0}
    assert sorted(Contact.objects.values_list("email", flat=True)) == [
        "ada@example.com", "p2@example.com"]
    assert Contact.objects.get(pk=rows[0]["id"]).name == "Ada"
    again = post_csv(api, text)  # the import itself is an rpc request: none left
    assert again.status_code == 429
    assert again["Content-Type"] == "application/problem+json"


def test_a_multipart_file_imports_once_per_idempotency_key(api):
    give_tier(api.user, {"rpc": "100/hour"})
    upload = SimpleUploadedFile("contacts.csv", ("\ufeff" + csv_of(5)).encode(),
                                content_type="text/csv")
    first = api.post(URL, {"file": upload}, format="multipart", HTTP_IDEMPOTENCY_KEY="imp-1")
    assert first.status_code == 200, first.content
    assert first.json()["totals"]["created"] == 5
    upload.seek(0)
    again = api.post(URL, {"file": upload}, format="multipart", HTTP_IDEMPOTENCY_KEY="imp-1")
    assert [row["id"] for row in again.json()["rows"]] == [
        row["id"] for row in first.json()["rows"]]
    assert Contact.objects.count() == 5


def test_short_retry_afters_are_waited_out(api, monkeypatch):
    clock = on_clock()  # the limiter in memory, on a clock the sleeps move
    give_tier(api.user, {"rpc": "2/s"})
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        clock.now += seconds

    monkeypatch.setattr(ContactImport, "sleep", staticmethod(sleep))
    body = post_csv(api, csv_of(4)).json()
    assert [row["status"] for row in body["rows"]] == ["created"] * 4
    assert slept == pytest.approx([0.5, 0.5, 0.5])  # a burst of 2, then one per 0.5 s


def test_rows_are_queued_while_the_database_is_down(api):
    give_tier(api.user, {"rpc": "100/hour"})
    force_open("crm.write")
    body = post_csv(api, csv_of(3)).json()
    assert body["totals"]["queued"] == 3
    assert not Contact.objects.exists()


@pytest.mark.parametrize("text, message", [
    ("name,phone\nAda,1\n", "email"),
    ("", "Send a CSV"),
])
def test_a_csv_it_cannot_read_is_a_400(api, text, message):
    response = post_csv(api, text)
    assert response.status_code == 400, response.content
    assert message in str(response.json())
    assert not Contact.objects.exists()


def test_too_many_rows_or_bytes_that_are_not_utf8_are_a_400(api, monkeypatch):
    monkeypatch.setattr(ContactImport, "max_rows", 2)
    assert "At most 2" in str(post_csv(api, csv_of(3)).json())
    response = api.generic("POST", URL, b"name,email\n\xff\xfe,x\n", content_type="text/csv")
    assert response.status_code == 400 and "UTF-8" in str(response.json())
    assert not Contact.objects.exists()


@pytest.mark.parametrize("multipart", [False, True])
def test_a_body_over_the_upload_limit_is_a_413(api, settings, multipart):
    give_tier(api.user, {"rpc": "100/hour"})
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 4096
    text = csv_of(200)  # about 5 KB
    if multipart:
        upload = SimpleUploadedFile("contacts.csv", text.encode(), content_type="text/csv")
        response = api.post(URL, {"file": upload}, format="multipart")
    else:
        response = post_csv(api, text)
    body = problem(response, 413, "PAYLOAD_TOO_LARGE")
    assert "4096 bytes" in body["detail"]
    assert not Contact.objects.exists()
    assert post_csv(api, csv_of(100)).status_code == 200  # under the limit


def test_a_body_of_unknown_length_is_read_in_bounded_chunks(settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 4096
    stream = io.BytesIO(csv_of(100_000).encode())  # about 2.6 MB
    with pytest.raises(PayloadTooLarge):
        CSVParser().parse(stream)
    assert stream.tell() <= 4096 + CHUNK  # it stopped reading


def test_an_idempotency_key_too_long_to_keep_is_a_400_with_the_database_up_or_down(api):
    give_tier(api.user, {"rpc": "100/hour"})
    for _ in ("up", "down"):
        response = post_csv(api, csv_of(2), HTTP_IDEMPOTENCY_KEY="k" * 250)
        assert response.status_code == 400, response.content
        assert "Idempotency-Key" in response.json()["errors"]
        force_open("crm.write")
    assert probe.stream_length() == 0 and not Contact.objects.exists()


@pytest.fixture
def refusing_database(api):
    """A trigger that makes PostgreSQL refuse contacts named "Refused", with its own text."""
    with connection.cursor() as cursor:
        cursor.execute("""
            CREATE FUNCTION refuse_contact() RETURNS trigger AS $$ BEGIN
              RAISE EXCEPTION 'internal detail: row % of table crm_contact', NEW.name
                USING ERRCODE = 'check_violation';
            END $$ LANGUAGE plpgsql;
            CREATE TRIGGER refuse_contact BEFORE INSERT ON crm_contact FOR EACH ROW
              WHEN (NEW.name = 'Refused') EXECUTE FUNCTION refuse_contact();""")
    try:
        yield api
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER refuse_contact ON crm_contact;"
                           "DROP FUNCTION refuse_contact();")


def test_a_row_the_database_refuses_says_a_stable_code_not_the_database_text(
        refusing_database, caplog):
    api = refusing_database
    give_tier(api.user, {"rpc": "100/hour"})
    response = post_csv(api, HEADER + "Ada,ada@example.com,,\nRefused,r@example.com,,\n")
    assert response.status_code == 200, response.content
    ada, refused = response.json()["rows"]
    assert ada["status"] == "created"
    assert refused == {"row": 2, "status": "failed", "code": "ROW_FAILED",
                       "error": "The row could not be saved."}
    assert "internal detail" in caplog.text  # the detail is logged
