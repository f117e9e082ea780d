"""The chaos run's steady mixed load: client threads for users of every tier, each sending
reads, creates, updates, CSV imports or token requests over real HTTP, and keeping what
every answer was (:class:`Answer`) and every write it sent (:class:`Write`, :class:`Update`),
so the database can be checked against them afterwards.

Clients do what a careful real client does: a request whose connection breaks (its worker
was killed) is sent again, a create with the same ``Idempotency-Key``; a ``409`` (the same
key still in flight) is sent again after a pause. Nothing else is retried.
"""

from __future__ import annotations

import http.client
import itertools
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from crm_demo.crm import client
from crm_demo.crm.client import Reply
from resilience_crm.provider.labels import FALLBACK_HEADER

#: Tiers the load comes from; anonymous clients only ask for tokens.
TIERS = ("free", "pro", "enterprise", "anonymous")
#: Seconds each client waits between its requests, by tier: a free user is slow enough to
#: stay mostly inside its limits; an enterprise integration is busy.
PAUSE = {"free": 0.5, "pro": 0.1, "enterprise": 0.05, "anonymous": 2.0}
#: Share of each kind of request from a signed-in client (anonymous ones ask for tokens).
#: Token requests are few: each checks a password (PBKDF2), hundreds of ms of CPU.
MIX = {"read": 0.78, "create": 0.1, "update": 0.08, "import": 0.02, "token": 0.02}
#: Rows in each CSV import.
IMPORT_ROWS = 3
#: Times a request is sent again after a broken connection, and after a 409.
RESENDS = 3
#: Seconds a client waits for an answer.
TIMEOUT = 30.0
#: Loopback addresses anonymous clients rotate through: each is a client of its own to the
#: per-address limits (127.0.0.0/8 is all loopback).
SOURCES = [f"127.0.0.{n}" for n in range(2, 40)]
CONNECTION_ERRORS = (OSError, http.client.HTTPException)


@dataclass(frozen=True)
class Answer:
    """One request as its client saw it, after any resends."""

    kind: str  # read, create, update, import, token
    tier: str
    status: int  # 0: no answer, even after resends
    label: str  # a 2xx read: fresh, stale, replica or degraded
    started: float  # time.monotonic() when it was first sent
    seconds: float  # until the final answer, resends included
    retry_after: bool  # the answer carried Retry-After
    resent: int


@dataclass(frozen=True)
class Write:
    """A contact a create or an import row asked for, identified by its unique email."""

    email: str
    acknowledged: bool  # 201 or 202 (an import row: created or queued)


@dataclass(frozen=True)
class Update:
    """An update of a client's own contact: ``company`` set to ``u<seq>``."""

    contact: int
    seq: int
    acknowledged: bool  # 200


@dataclass
class User:
    tier: str
    username: str
    password: str
    token: str = ""
    contact: int = 0  # the contact this user's updates change


@dataclass
class Record:
    """Everything the load saw; appended to from every client thread."""

    answers: list[Answer] = field(default_factory=list)
    writes: list[Write] = field(default_factory=list)
    updates: list[Update] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, answer: Answer, writes: Iterable[Write] = (),
            update: Update | None = None) -> None:
        with self.lock:
            self.answers.append(answer)
            self.writes.extend(writes)
            if update is not None:
                self.updates.append(update)


def label(reply: Reply) -> str:
    return reply.headers.get(FALLBACK_HEADER.lower(), "fresh")


class Load:
    """Clients for ``users`` against the demo on ``port`` until :meth:`stop`. ``prefix``
    makes every email this run creates unique; ``read_paths`` are the paths reads pick from
    (ones the cache holds: see ``warm``)."""

    def __init__(self, port: int, users: list[User], read_paths: list[str], prefix: str,
                 record: Record, *, seed: int = 16) -> None:
        self.port, self.users, self.read_paths = port, users, read_paths
        self.prefix, self.record = prefix, record
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._numbers = itertools.count()
        self._seq = itertools.count(1)
        self._sources = itertools.cycle(SOURCES)
        self._seed = seed

    def start(self) -> None:
        for n, user in enumerate(self.users):
            rng = random.Random(self._seed * 1000 + n)  # noqa: S311  (a load mix, not a secret)
            thread = threading.Thread(target=self._client, args=(user, rng), daemon=True,
                                      name=f"chaos-{user.tier}-{n}")
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=TIMEOUT * RESENDS)
        self._threads = []
        self._stop.clear()

    def _client(self, user: User, rng: random.Random) -> None:
        kinds, weights = zip(*MIX.items(), strict=True)
        while not self._stop.is_set():
            kind = "token" if user.tier == "anonymous" else rng.choices(kinds, weights)[0]
            getattr(self, f"_{kind}")(user, rng)
            self._stop.wait(PAUSE[user.tier] * rng.uniform(0.5, 1.5))

    # One request of each kind ------------------------------------------------------------

    def _read(self, user: User, rng: random.Random) -> None:
        self._send(user, "read", "GET", rng.choice(self.read_paths))

    def _create(self, user: User, rng: random.Random) -> None:
        key = f"{self.prefix}{next(self._numbers)}"
        email = f"{key}@chaos.example"
        self._send(user, "create", "POST", "/api/contacts/",
                   body={"name": f"Chaos {key}", "email": email},
                   headers={"Idempotency-Key": key},
                   writes=lambda r: [Write(email, r is not None and r.status in (201, 202))])

    def _update(self, user: User, rng: random.Random) -> None:
        seq = next(self._seq)
        self._send(user, "update", "PATCH", f"/api/contacts/{user.contact}/",
                   body={"company": f"u{seq}"},
                   update=lambda r: Update(user.contact, seq, r is not None and r.status == 200))

    def _import(self, user: User, rng: random.Random) -> None:
        key = f"{self.prefix}{next(self._numbers)}"
        emails = [f"{key}-{row}@chaos.example" for row in range(IMPORT_ROWS)]
        csv = "name,email\n" + "".join(f"Imported {email},{email}\n" for email in emails)

        def rows(reply: Reply | None) -> list[Write]:
            statuses = [row.get("status") for row in reply.body.get("rows", [])] if (
                reply is not None and reply.status == 200 and isinstance(reply.body, dict)
            ) else [None] * len(emails)
            return [Write(email, status in ("created", "queued"))
                    for email, status in zip(emails, statuses, strict=True)]

        self._send(user, "import", "POST", "/api/contacts/import/", raw=csv,
                   headers={"Idempotency-Key": key, "Content-Type": "text/csv"}, writes=rows)

    def _token(self, user: User, rng: random.Random) -> None:
        login = user if user.tier != "anonymous" else rng.choice(
            [u for u in self.users if u.tier != "anonymous"] or [user])
        self._send(user, "token", "POST", "/api/auth/token/", signed_in=False,
                   body={"username": login.username, "password": login.password},
                   source=next(self._sources))

    # Sending, resending, recording -------------------------------------------------------

    def _send(self, user: User, kind: str, method: str, path: str, *, body: Any = None,
              raw: str | None = None, headers: dict[str, str] | None = None,
              signed_in: bool = True, source: str = "",
              writes: Callable[[Reply | None], list[Write]] | None = None,
              update: Callable[[Reply | None], Update] | None = None) -> Reply | None:
        started = time.monotonic()
        reply: Reply | None = None
        resent = 0
        while True:
            try:
                reply = send(self.port, method, path, token=user.token if signed_in else "",
                             body=body, raw=raw, headers=headers, source=source)
            except CONNECTION_ERRORS:
                reply = None
            if resent == RESENDS or (reply is not None and reply.status != 409):
                break
            resent += 1
            time.sleep(0.2 if reply is None else 0.5)
        answer = Answer(kind, user.tier, reply.status if reply else 0,
                        label(reply) if reply and kind == "read" and reply.status < 300 else "",
                        started, time.monotonic() - started,
                        bool(reply and "retry-after" in reply.headers), resent)
        self.record.add(answer, writes(reply) if writes else [],
                        update(reply) if update else None)
        return reply


def send(port: int, method: str, path: str, **kwargs: Any) -> Reply:
    """One request, waiting at most :data:`TIMEOUT` for its answer."""
    return client.request(port, method, path, timeout=TIMEOUT, **kwargs)
