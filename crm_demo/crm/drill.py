"""The outage drill behind ``manage.py resilience_drill``: a real database outage, watched.

The drill serves the demo API from a server thread of its own whose database connections go
through a :class:`~crm_demo.crm.faults.FaultProxy`; it warms the cache with a few reads,
cuts the proxy, and narrates what a client sees (reads served stale, a write queued) and
what the app does (circuits opening, the alert), then restores the proxy and waits for the
circuits to close and the queued write to be replayed, exactly once. Breaker state lives in
the shared Redis store, so a running demo server's dashboard shows the same circuits red.

With read replicas (``READ_REPLICAS``; the demo's ``DATABASE_REPLICA_URL``) each replica is
put behind a proxy of its own, and the outage has two halves: first only the primary is cut,
and reads come from the replica, labelled ``replica`` with its replay lag as their ``Age``;
then the replicas are cut too, and reads come from the stale cache.

Only this process uses the drill's short breaker settings (:data:`DRILL_BREAKER`). At the
end the drill removes what it created (its user, token and contacts; ``keep`` leaves the
contacts and user) and resets the circuits it left open.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import sentry_sdk
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.core.handlers.wsgi import WSGIHandler
from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
from django.db import DEFAULT_DB_ALIAS, connections
from django.test.utils import override_settings
from rest_framework.authtoken.models import Token

from crm_demo.crm import client
from crm_demo.crm.client import Reply
from crm_demo.crm.faults import FaultProxy
from crm_demo.crm.models import Contact
from resilience_crm import buckets
from resilience_crm.breakers import events
from resilience_crm.breakers import machine as core
from resilience_crm.breakers.registry import get_breaker
from resilience_crm.conf import cache_is_redis
from resilience_crm.conf import settings as resilience_settings
from resilience_crm.exceptions import ResilienceError
from resilience_crm.models import QueuedWrite
from resilience_crm.observability import alerts, drills, exposition
from resilience_crm.provider import queue, replicas
from resilience_crm.provider.labels import FALLBACK_HEADER, REPLICA, STALE
from resilience_crm.signals import circuit_transition

logger = logging.getLogger("crm_demo.drill")

#: The circuits the drill's requests go through: token checks, reads, writes.
CIRCUITS = ("crm.auth", "crm.read", "crm.write")
#: Breaker settings of those circuits in the drill's process: open after 2 failures (the
#: write circuit after 1, so that its closing replays the queue), try again after 2 s.
DRILL_BREAKER = {"failure_threshold": 2, "reset_timeout": 2, "max_reset_timeout": 2,
                 "call_timeout": 2, "slow_call_duration": 2}
#: Seconds a cached read is fresh in the drill (the outage must reach the database).
FRESH_FOR = 1
#: Seconds between the drill's requests.
PAUSE = 0.5
#: Seconds the drill waits for recovery (circuits closed, queue replayed) before it fails.
RECOVERY_DEADLINE = 60.0
#: What the outage must show; it goes on past ``--seconds`` (by up to ``OUTAGE_GRACE``
#: seconds) until it has (on a loaded machine each failing call takes its whole deadline).
OUTAGE_STEPS = ("stale", "opened", "queued")
#: With read replicas, what the first half of the outage (only the primary cut) must show;
#: the second half (the replicas cut too) must show ``stale``.
PRIMARY_CUT_STEPS = ("replica", "opened", "queued")
OUTAGE_GRACE = 30.0
DASHBOARD = "/admin/resilience_crm/circuit/dashboard/"
USERNAME = "resilience-drill"
#: Loggers whose expected outage noise would bury the narration: {name: level}. The
#: transitions they report are narrated.
QUIETER = {"psycopg.pool": logging.CRITICAL, "resilience_crm": logging.WARNING}


class DrillUnavailable(Exception):
    """The drill cannot run with these settings; the message says why."""


def requirements_problem() -> str | None:
    """Why the drill cannot run here, or ``None``."""
    engine = django_settings.DATABASES[DEFAULT_DB_ALIAS]["ENGINE"]
    if not engine.endswith(".postgresql"):  # Django's backend, or the query guard's
        return ("The drill needs PostgreSQL (set DATABASE_URL=postgres://...): it cuts the "
                "network between the app and its database, and a SQLite file has no network "
                f"to cut (the default database uses {engine}).")
    if not cache_is_redis(resilience_settings.CACHE_ALIAS):
        return ("The drill needs Redis (set REDIS_URL=redis://...): while the database is down "
                "the breakers' state, the cached reads and the queued writes live there; "
                f"the {resilience_settings.CACHE_ALIAS!r} cache is not a django-redis cache.")
    return None


@dataclass
class Step:
    promise: str
    ok: bool = False
    detail: str = ""


@dataclass
class Outcome:
    steps: dict[str, Step] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(step.ok for step in self.steps.values())


class Drill:
    """Run with :meth:`run`; ``say`` gets each line of narration."""

    def __init__(self, seconds: float, say: Callable[[str], None], *,
                 keep: bool = False, page: bool = False) -> None:
        self.seconds = seconds
        self.keep = keep
        #: Let the alert rules page for this drill (by default they stay quiet).
        self.page = page
        self._say = say
        self.run_id = uuid.uuid4().hex[:12]
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self.port = 0
        self.token = ""
        self._wrote = False
        #: The replicas reads fall back to (``READ_REPLICAS``), each cut in the outage's
        #: second half.
        self.replicas = replicas.candidates(None)
        #: The circuits the drill watches, resets and needs closed to begin.
        self.circuits = CIRCUITS + tuple(replicas.circuit_of(a) for a in self.replicas)
        replica_step = {"replica": Step(
            "with the primary cut, reads are served from the replica, labelled with its lag",
        )} if self.replicas else {}
        self.outcome = Outcome({
            **replica_step,
            "stale": Step("reads are served from the cache, labelled stale"),
            "opened": Step("the read circuit opens"),
            "queued": Step("a write is answered 202 and queued"),
            "alert": Step("the open alert fires"),
            "closed": Step("after recovery the circuits close and reads are fresh"),
            "replayed": Step("the queued write is replayed, exactly once"),
        })

    # Narration --------------------------------------------------------------------------

    def say(self, text: str) -> None:
        self._say(f"{time.monotonic() - self.started:7.2f}s  {text}")

    def _on_transition(self, sender: Any, name: str, from_state: str, to_state: str,
                       reason: str = "", local: bool = False, **kwargs: Any) -> None:
        """Told at once, from whichever thread made the transition."""
        with self._lock:
            where = " (this worker's own breaker)" if local else ""
            self.say(f"circuit {name}: {from_state} -> {to_state}{where} ({reason})")
            if name == "crm.read" and to_state == core.OPEN:
                self._pass("opened", f"{from_state} -> open ({reason})")
            if alerts.alert_for(from_state, to_state) == "open":
                self._alert(f"Circuit {name} opened ({reason})")

    def _alert(self, message: str) -> None:
        sentry = sentry_sdk.is_initialized() and resilience_settings.SENTRY_ALERTS
        if sentry:
            self.say(f"alert sent to Sentry: error {message!r}")
        else:
            logger.warning("ALERT %s (SENTRY_DSN is not set: this log line is the alert)",
                           message)
        self._pass("alert", ("Sentry: " if sentry else "log: ") + message)

    def _pass(self, step: str, detail: str) -> None:
        if not self.outcome.steps[step].ok:
            self.outcome.steps[step].ok, self.outcome.steps[step].detail = True, detail

    # The drill --------------------------------------------------------------------------

    def run(self) -> Outcome:
        problem = requirements_problem()
        if problem:
            raise DrillUnavailable(problem)
        busy = {name: get_breaker(name).state for name in self.circuits}
        busy = {name: state for name, state in busy.items() if state != core.CLOSED}
        if busy:
            raise DrillUnavailable(
                "The drill needs its circuits closed, and leaves alone the ones an incident or "
                "an operator holds: " + ", ".join(f"{n} is {s}" for n, s in busy.items())
                + " (see manage.py resilience_status; resilience_reset closes them).")
        db = connections[DEFAULT_DB_ALIAS].settings_dict
        target = (db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432))
        circuit_transition.connect(self._on_transition, dispatch_uid=self.run_id, weak=False)
        drills.begin(self.run_id, page=self.page)
        self.say(f"this is drill {self.run_id}: its circuit events are tagged "
                 f"[drill {self.run_id}] and its alerts carry the tag drill={self.run_id}; "
                 + ("the alert rules page for it (--page)" if self.page else
                    "the alert rules do not page for it (--page to let them)"))
        try:
            with (_quieter(QUIETER), FaultProxy(*target) as proxy,
                  _database_through(DEFAULT_DB_ALIAS, proxy), self._replicas_behind_proxies()
                  as replica_proxies,
                  override_settings(RESILIENCE_CRM=drill_settings(self.replicas)),
                  self._server()):
                self.say(f"the database {target[0]}:{target[1]} is now behind a proxy on "
                         f"127.0.0.1:{proxy.port}; the drill's API server is "
                         f"http://127.0.0.1:{self.port}")
                self.say("breaker state is shared through Redis: a running demo server's "
                         f"dashboard ({DASHBOARD}) shows these circuits too")
                try:
                    self._create_client()
                    self._warm()
                    self._outage(proxy, replica_proxies)
                    self._recover([proxy, *replica_proxies])
                finally:
                    self._clean_up()
        finally:
            circuit_transition.disconnect(dispatch_uid=self.run_id)
            drills.end(self.run_id)
        return self.outcome

    def _create_client(self) -> None:
        user, _ = get_user_model().objects.get_or_create(username=USERNAME)
        user.set_unusable_password()
        user.save()
        self.token = Token.objects.get_or_create(user=user)[0].key
        self.say(f"created the user {USERNAME!r} and an API token (removed at the end)")

    def _warm(self) -> None:
        for name in CIRCUITS:  # in the shared store (seeded from the durable row if need be)
            self.say(f"circuit {name} is {get_breaker(name).state}")
        for path in ("/api/contacts/", "/api/agents/"):
            reply = self.request("GET", path)
            if reply.status != 200:
                raise DrillUnavailable(f"GET {path} answered {reply.status} before the outage: "
                                       f"{reply.body}")
            self.say(f"GET {path} -> {reply.status} {reply.label} in {reply.seconds:.2f}s "
                     "(cached through protected.read)")
        time.sleep(FRESH_FOR)  # the cached copies are stale now: reads try the database

    @contextlib.contextmanager
    def _replicas_behind_proxies(self) -> Iterator[list[FaultProxy]]:
        """Every replica's connections through a proxy of its own, for the duration."""
        with contextlib.ExitStack() as stack:
            proxies = []
            for alias in self.replicas:
                db = connections[alias].settings_dict
                target = (db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432))
                proxy = stack.enter_context(FaultProxy(*target))
                stack.enter_context(_database_through(alias, proxy))
                self.say(f"the read replica {alias!r} ({target[0]}:{target[1]}) is behind a "
                         f"proxy on 127.0.0.1:{proxy.port}; reads fall back to it before "
                         f"the stale cache (circuit {replicas.circuit_of(alias)}, skipped "
                         f"when over MAX_REPLICA_LAG = {resilience_settings.MAX_REPLICA_LAG}s "
                         "behind its primary)")
                proxies.append(proxy)
            yield proxies

    def _outage(self, proxy: FaultProxy, replica_proxies: list[FaultProxy]) -> None:
        proxy.cut()
        self.say(f"CUT: the proxy closed every database connection and refuses new ones "
                 f"for {self.seconds:g}s (longer if the circuits have not opened by then)")
        if not replica_proxies:
            self._watch(self.seconds, OUTAGE_STEPS)
        else:
            self.say("the replicas still answer: reads should come from them, labelled "
                     f"{REPLICA} with their replay lag as Age")
            self._watch(self.seconds / 2, PRIMARY_CUT_STEPS)
            for replica_proxy in replica_proxies:
                replica_proxy.cut()
            self.say("CUT the replicas too: with no database to ask, reads should come from "
                     "the stale cache")
            self._watch(self.seconds / 2, ("stale",))
        reply = self.request("GET", "/api/contacts/")
        why = ("answered from the cache without waiting on the database" if reply.seconds < 0.5
               else "a half-open trial of crm.auth or crm.read waited on the database first")
        self.say(f"GET /api/contacts/ -> {reply.status} {reply.label} in {reply.seconds:.2f}s "
                 f"({why})")
        for name in self.circuits:
            self.say(f"circuit {name} is {get_breaker(name).state}")
        self.say(f"the proxy refused {proxy.refused} connection attempts")

    def _watch(self, seconds: float, steps: tuple[str, ...]) -> None:
        """Read every ``PAUSE`` for ``seconds``, and on (by up to ``OUTAGE_GRACE``) until
        ``steps`` have shown; write once during the outage."""
        until = time.monotonic() + seconds
        while time.monotonic() < until or (
                time.monotonic() < until + OUTAGE_GRACE
                and not all(self.outcome.steps[step].ok for step in steps)):
            reply = self.request("GET", "/api/contacts/")
            self.say(f"GET /api/contacts/ -> {reply.status} {reply.label} "
                     f"in {reply.seconds:.2f}s")
            served = reply.headers.get(FALLBACK_HEADER.lower()) if reply.status == 200 else None
            if served == STALE:
                self._pass("stale", f"200 with {FALLBACK_HEADER}: stale")
            if served == REPLICA and "replica" in self.outcome.steps:
                self._pass("replica", f"200 with {FALLBACK_HEADER}: replica, Age "
                                      f"{reply.headers.get('age', '?')}s (its replay lag)")
            if get_breaker("crm.read").state in core.IN_INCIDENT:
                self._pass("opened", "open in the shared store (opened by another process)")
            if not self._wrote:  # once, early in the outage
                self._wrote = True
                self._write_during_outage()
            time.sleep(PAUSE)

    def _write_during_outage(self) -> None:
        reply = self.request("POST", "/api/contacts/", body=self._contact("queued"),
                             headers={"Idempotency-Key": f"{self.run_id}-queued"})
        self.say(f"POST /api/contacts/ (Idempotency-Key {self.run_id}-queued) -> "
                 f"{reply.status} {json.dumps(reply.body)} in {reply.seconds:.2f}s")
        if reply.status == 202 and isinstance(reply.body, dict) \
                and reply.body.get("status") == "queued":
            self._pass("queued", f"202 {reply.body}")

    def _recover(self, proxies: list[FaultProxy]) -> None:
        for proxy in proxies:
            proxy.restore()
        restored = time.monotonic()
        self.say("RESTORE: the proxies let connections through again" if len(proxies) > 1
                 else "RESTORE: the proxy lets connections through again")
        deadline = restored + RECOVERY_DEADLINE
        while time.monotonic() < deadline:
            reply = self.request("GET", "/api/contacts/")
            if reply.status == 200 and FALLBACK_HEADER.lower() not in reply.headers \
                    and get_breaker("crm.read").state == core.CLOSED:
                self.say(f"GET /api/contacts/ -> {reply.status} fresh, "
                         f"{time.monotonic() - restored:.2f}s after the restore")
                break
            time.sleep(PAUSE / 2)
        else:
            self.say("reads did not recover in time")
            return
        reply = self.request("POST", "/api/contacts/", body=self._contact("after"),
                             headers={"Idempotency-Key": f"{self.run_id}-after"})
        self.say(f"POST /api/contacts/ -> {reply.status} in {reply.seconds:.2f}s (a write "
                 "after the outage: the write circuit closes, which replays the queue)")
        if self.outcome.steps["queued"].ok:
            self._await_replay(deadline)
        else:
            self.say("no write was queued, so there is nothing to replay")
        closed = {name: get_breaker(name).state for name in ("crm.read", "crm.write")}
        if all(state == core.CLOSED for state in closed.values()):
            self._pass("closed", ", ".join(f"{n} {s}" for n, s in closed.items()))

    def _await_replay(self, deadline: float) -> None:
        connections[DEFAULT_DB_ALIAS].close()  # the cut closed this thread's connection
        key = f"{self._user_pk()}:contacts.create:{self.run_id}-queued"
        while time.monotonic() < deadline:
            row = QueuedWrite.objects.filter(idempotency_key=key).first()
            if row is not None and row.state == QueuedWrite.State.APPLIED:
                break
            time.sleep(PAUSE / 2)
        else:
            self.say("the automatic replay did not apply the write in time; replaying now, "
                     "as `manage.py resilience_replay` does")
            report = queue.replay()
            self.say(f"replay: {report}")
        row = QueuedWrite.objects.filter(idempotency_key=key).first()
        found = Contact.objects.filter(email=self._contact("queued")["email"]).count()
        self.say(f"queued write: {row.state if row else 'missing'}; contacts with its "
                 f"email: {found}")
        if row is not None and row.state == QueuedWrite.State.APPLIED and found == 1:
            self._pass("replayed", f"applied {row.applied_at:%H:%M:%S}, 1 row")

    def _clean_up(self) -> None:
        connections[DEFAULT_DB_ALIAS].close()
        made = Contact.objects.filter(email__endswith=f"@{self.run_id}.drill.invalid")
        if self.keep:
            self.say(f"kept the drill's {made.count()} contacts (emails @{self.run_id}"
                     ".drill.invalid); removed its token")
            Token.objects.filter(key=self.token).delete()
        else:
            count = made.count()
            made.delete()
            get_user_model().objects.filter(username=USERNAME).delete()
            self.say(f"removed the drill's {count} contacts, its user and token")
        for name in self.circuits:  # closed when the drill began (run() made sure)
            breaker = get_breaker(name)
            if breaker.state in core.IN_INCIDENT:
                try:
                    breaker.reset(reason="resilience_drill finished", source="command")
                except ResilienceError as err:
                    self.say(f"could not reset circuit {name}: {err}")
                else:
                    self.say(f"reset circuit {name}")
        self._write_records()

    def _write_records(self) -> None:
        """Write now what this process counted, as its background writer would in a while:
        the transitions, the per-minute call metrics (the dashboard's charts) and the
        counters ``/resilience/metrics`` sums, so a running demo server shows the outage at
        once rather than after this process is gone. The flusher's other tasks (the alert rules,
        the limiter's sweep, the replay) are not the drill's to run."""
        try:
            events.write_pending()
            buckets.write_buckets()
            exposition.push()
        except Exception as err:  # the records wait in this process, then the shared store
            self.say(f"could not write the drill's events and call metrics yet ({err})")
        else:
            self.say("wrote the drill's circuit events and call metrics (the dashboard's "
                     "charts and /resilience/metrics count them now)")

    # Plumbing ---------------------------------------------------------------------------

    def _contact(self, which: str) -> dict[str, str]:
        return {"name": f"Drill {self.run_id} ({which})",
                "email": f"{which}@{self.run_id}.drill.invalid"}

    def _user_pk(self) -> int:
        return int(Token.objects.get(key=self.token).user_id)

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> Reply:
        reply = client.request(self.port, method, path, token=self.token, body=body,
                               headers=headers)
        if isinstance(reply.body, str):
            reply.body = reply.body[:200]  # an error page: its start says enough
        return reply

    @contextlib.contextmanager
    def _server(self) -> Iterator[None]:
        server = ThreadedWSGIServer(("127.0.0.1", 0), _QuietHandler)
        server.set_app(WSGIHandler())
        self.port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, name="drill-server",
                                  daemon=True)
        thread.start()
        try:
            yield
        finally:
            server.shutdown()
            server.server_close()
            thread.join(10)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (the base's name)
        pass


def drill_settings(replica_aliases: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """``RESILIENCE_CRM`` for the drill's process: the user's, with the drill's breakers (on
    the replicas' circuits too)."""
    current = dict(getattr(django_settings, "RESILIENCE_CRM", None) or {})
    circuits = dict(current.get("CIRCUITS") or {})
    for name in (*CIRCUITS, *(replicas.circuit_of(a) for a in replica_aliases)):
        circuits[name] = {**(circuits.get(name) or {}), **DRILL_BREAKER}
    circuits["crm.write"]["failure_threshold"] = 1
    return {**current, "CIRCUITS": circuits, "FALLBACK_TTL": FRESH_FOR}


@contextlib.contextmanager
def _database_through(alias: str, proxy: FaultProxy) -> Iterator[None]:
    """Every thread's ``alias`` connection goes through ``proxy`` for the duration (the
    wrappers of all threads share one settings dict; the pool is rebuilt, and checks each
    connection it hands out)."""
    wrapper = connections[alias]
    settings_dict = wrapper.settings_dict
    saved = dict(settings_dict)
    _close(wrapper)
    # The pool checks a connection before handing it out: after the cut, not a dead one.
    settings_dict.update(HOST="127.0.0.1", PORT=str(proxy.port), CONN_HEALTH_CHECKS=True)
    try:
        yield
    finally:
        _close(wrapper)
        settings_dict.clear()
        settings_dict.update(saved)


def _close(wrapper: Any) -> None:
    with contextlib.suppress(Exception):
        wrapper.close()
    close_pool = getattr(wrapper, "close_pool", None)
    if close_pool is not None:
        with contextlib.suppress(Exception):
            close_pool()


@contextlib.contextmanager
def _quieter(levels: dict[str, int]) -> Iterator[None]:
    saved = {name: logging.getLogger(name).level for name in levels}
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
