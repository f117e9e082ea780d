"""Running the chaos scenarios: the demo under gunicorn with its PostgreSQL and its Redis each
behind a fault proxy and its alerts going to a local Sentry ingest server
(:class:`Stage`), the load running through each scenario, the circuits watched, and the
checks made once the faults are gone (:meth:`Stage.run` returns an :class:`Outcome`).

The process running it sees the same database and Redis directly (not through the proxies),
with the workers' breaker settings (:func:`resilience`): it reads the circuits' shared state
and checks the database from there. Its Django settings are the caller's to make.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from crm_demo.crm.faults import FaultProxy
from crm_demo.crm.models import Contact, Conversation
from resilience_crm.breakers import machine
from resilience_crm.breakers.registry import get_breaker
from tests.chaos import audit
from tests.chaos.config import RECOVERY_TARGET, resilience
from tests.chaos.load import TIERS, Load, Record, User
from tests.chaos.scenarios import Killer, Scenario, begin, end
from tests.demo_server import SETTINGS, Server, serving
from tests.gunicorn_server import ROOT
from tests.sentry_server import SentryServer

#: The circuits the demo's requests pass, watched through every scenario.
CIRCUITS = ("crm.auth", "crm.read", "crm.write", "crm.rpc", "crm.db")  # crm.db: the guard's
#: Seconds of load before each fault, and after it (long enough to recover in).
LEAD = 3.0
TAIL = RECOVERY_TARGET + 2
#: Clients per tier (each a thread; the tier's users are the seed_demo ones).
CLIENTS = {"free": 1, "pro": 2, "enterprise": 2, "anonymous": 1}
#: Seconds to wait for queued writes to be replayed, for alerts and audit rows to arrive,
#: and for the circuits to close before a scenario.
PATIENCE = 60.0
WORKERS = 4


@dataclass
class Outcome:
    scenario: Scenario
    record: Record
    fault_at: float  # time.monotonic() the fault began
    restored_at: float
    opened_after: float | None  # seconds from the fault to a circuit leaving closed
    recovered_after: float | None  # seconds from the restore to every circuit closed for good
    last_fallback_after: float | None  # seconds from the restore to the last read not fresh
    writes: audit.Writes
    alerts: audit.Alerts
    left_for_operator: int  # acknowledged writes the workers had not applied in PATIENCE
    killed: int
    transitions: list[tuple[float, str, str]] = field(default_factory=list)


class Watcher:
    """Polls the circuits' shared state every 0.1 s, keeping each change (time, name, state)."""

    def __init__(self) -> None:
        self.changes: list[tuple[float, str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="chaos-watcher")

    def _run(self) -> None:
        last: dict[str, str] = {}
        while not self._stop.wait(0.1):
            for name in CIRCUITS:
                try:
                    state = get_breaker(name).state
                except Exception:  # noqa: BLE001,S112  (a missed poll; the next one tells)
                    continue
                if last.get(name) != state:
                    last[name] = state
                    self.changes.append((time.monotonic(), name, state))

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class Stage:
    """Use as a context manager; ``database_url`` and ``redis_url`` reach the services
    directly, ``key_prefix`` keeps this run's Redis keys apart."""

    def __init__(self, database_url: str, redis_url: str, key_prefix: str, *,
                 workers: int = WORKERS, say: Callable[[str], None] = lambda text: None) -> None:
        self.database_url, self.redis_url = database_url, redis_url
        self.key_prefix, self.workers, self.say = key_prefix, workers, say
        self.run_id = uuid.uuid4().hex[:8]
        self.sentry = SentryServer()
        self.proxies: dict[str, FaultProxy] = {}
        self.server = Server(0)
        self.env: dict[str, str] = {}
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Stage:
        stack = self._stack.__enter__()
        stack.enter_context(self.sentry)
        for target, url in (("database", self.database_url), ("redis", self.redis_url)):
            parts = urlsplit(url)
            self.proxies[target] = stack.enter_context(
                FaultProxy(parts.hostname or "127.0.0.1", parts.port or 0))
        self.env = {
            "DJANGO_SETTINGS_MODULE": SETTINGS,  # for manage.py too
            "DATABASE_URL": through(self.database_url, self.proxies["database"]),
            "REDIS_URL": through(self.redis_url, self.proxies["redis"]),
            "CACHE_KEY_PREFIX": self.key_prefix, "SENTRY_DSN": self.sentry.dsn,
            "DATABASE_POOL_TIMEOUT": "0.5", "DATABASE_CONNECT_TIMEOUT": "2",
            "RESILIENCE_CRM_JSON": json.dumps(resilience()),
        }
        self.server = stack.enter_context(serving(self.env, workers=self.workers))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.__exit__(*exc)

    # Before a scenario -------------------------------------------------------------------

    def users(self, index: int) -> list[User]:
        """A client for each of CLIENTS, signed in as its tier's seed_demo user, each with a
        contact of its own to update."""
        users = []
        for tier in TIERS:
            for n in range(CLIENTS[tier]):
                user = User(tier, f"demo-{tier}", "demo")
                if tier != "anonymous":
                    account = get_user_model().objects.get(username=user.username)
                    user.token = Token.objects.get_or_create(user=account)[0].key
                    user.contact = Contact.objects.create(
                        name=f"Chaos owner {n}", company="u0",
                        email=f"owner-{self.run_id}-{index}-{tier}-{n}@chaos.example").pk
                users.append(user)
        return users

    def read_paths(self) -> list[str]:
        contacts = Contact.objects.exclude(email__endswith="@chaos.example").order_by("pk")
        conversations = Conversation.objects.order_by("pk")
        return (["/api/contacts/", "/api/contacts/?page=2", "/api/agents/",
                 "/api/conversations/"]
                + [f"/api/contacts/{pk}/" for pk in contacts.values_list("pk", flat=True)[:10]]
                + [f"/api/conversations/{pk}/"
                   for pk in conversations.values_list("pk", flat=True)[:5]])

    def settle(self, users: list[User], paths: list[str]) -> None:
        """Wait for closed circuits and fresh answers to every read path from each user (it
        also fills the cache the outage will be served from)."""
        deadline = time.monotonic() + PATIENCE
        signed_in = [user for user in users if user.token]
        while True:
            closed = all(get_breaker(name).state == machine.CLOSED for name in CIRCUITS)
            replies = [self.server.get(path, token=user.token, timeout=30)
                       for user in signed_in[:1] for path in paths]
            replies += [self.server.get(paths[0], token=user.token, timeout=30)
                        for user in signed_in]
            if closed and all(r.status == 200 and "x-resilience-fallback" not in r.headers
                              for r in replies):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the demo did not settle within {PATIENCE}s: "
                                     f"{[(r.status, r.body) for r in replies][:3]}")
            time.sleep(1)  # polling for recovery, not synchronisation

    # A scenario --------------------------------------------------------------------------

    def run(self, scenario: Scenario, index: int = 0) -> Outcome:
        users = self.users(index)
        paths = self.read_paths()
        self.settle(users, paths)
        generations = {name: get_breaker(name).snapshot()["generation"] for name in CIRCUITS}
        events_before = len(self.sentry.events())
        prefix = f"chaos-{self.run_id}-s{index}-"
        record = Record()
        load = Load(self.server.port, users, paths, prefix, record, seed=index)
        proxy = self.proxies.get(scenario.target)
        killer = Killer(self.server.master, seed=index)
        self.say(f"{scenario.name}: {scenario.describe()}")
        with Watcher() as watcher:
            load.start()
            time.sleep(LEAD)  # steady load before the fault (the run's timeline, not a wait)
            fault_at = time.monotonic()
            begin(scenario, proxy)
            if scenario.kills:
                killer.start()
            time.sleep(scenario.seconds)
            end(scenario, proxy)
            if scenario.kills:
                killer.stop()
            restored_at = time.monotonic()
            time.sleep(TAIL)
            load.stop()
        writes, left = self._writes(record, prefix)
        alerts = self._alerts(events_before, generations)
        return Outcome(scenario, record, fault_at, restored_at,
                       opened_after(watcher.changes, fault_at),
                       recovered_after(watcher.changes, restored_at),
                       last_fallback_after(record, restored_at),
                       writes, alerts, left, len(killer.killed), watcher.changes)

    # After it ----------------------------------------------------------------------------

    def _writes(self, record: Record, prefix: str) -> tuple[audit.Writes, int]:
        """The writes once every queued one has been replayed: by the workers when their
        write circuit closed, or, past PATIENCE, by ``manage.py resilience_replay`` (with the
        number it was left)."""
        deadline = time.monotonic() + PATIENCE
        while (found := audit.writes(record, prefix)).lost and time.monotonic() < deadline:
            time.sleep(0.5)  # polling for the replay
        if not found.lost:
            return found, 0
        subprocess.run([sys.executable, "manage.py", "resilience_replay"], cwd=ROOT,
                       timeout=120, env={**os.environ, **self.env}, capture_output=True,
                       check=False)
        return audit.writes(record, prefix), found.lost

    def _alerts(self, events_before: int, generations: dict[str, int]) -> audit.Alerts:
        """The alerts, once one has arrived for each incident in the audit trail (both are
        written in the background) or PATIENCE has passed."""
        deadline = time.monotonic() + PATIENCE
        while True:
            found = audit.alerts(self.sentry.events()[events_before:], generations)
            if found.one_per_incident or time.monotonic() > deadline:
                return found
            time.sleep(0.5)  # polling for background senders


def through(url: str, proxy: FaultProxy) -> str:
    """``url`` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@127.0.0.1:{proxy.port}" if credentials else f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def opened_after(changes: list[tuple[float, str, str]], fault_at: float) -> float | None:
    return next((at - fault_at for at, _, state in changes
                 if at >= fault_at and state != machine.CLOSED), None)


def recovered_after(changes: list[tuple[float, str, str]], restored_at: float) -> float | None:
    """Seconds from the restore until every circuit is closed for good; ``None`` if one was
    still not closed when the load stopped."""
    states: dict[str, str] = {}
    closed_at = restored_at
    for at, name, state in changes:
        states[name] = state
        if at >= restored_at and state == machine.CLOSED:
            closed_at = max(closed_at, at)
    if any(state != machine.CLOSED for state in states.values()):
        return None
    return closed_at - restored_at


def last_fallback_after(record: Record, restored_at: float) -> float | None:
    """Seconds from the restore to the end of the last read sent after it that was not
    answered fresh (a request on a pooled connection the outage broke, say); ``None``: none."""
    ends = [answer.started + answer.seconds - restored_at for answer in record.answers
            if answer.kind == "read" and answer.started >= restored_at
            and answer.status != 429 and answer.label != "fresh"]
    return max(ends, default=None)
