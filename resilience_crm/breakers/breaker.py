"""A circuit breaker as one worker process sees it: a local snapshot in front of a shared store.

The hot path is local. While the snapshot is younger than ``SNAPSHOT_TTL`` a closed circuit
lets calls through and counts their successes in memory, and an open one rejects them, with
no network or database call. Failures, slow calls and half-open trials go to the store at
once, carrying the successes counted since the last step, so one store call does both.

The store reports every transition to the one caller whose step made it; that caller sends
``circuit_transition``, so each transition is announced once across the cluster. What
happens when the shared store fails is the store's business: the registry hands breakers a
:class:`~resilience_crm.breakers.stores.failover.FailoverStore`, whose results say whether a step
was taken on the worker's own breaker (``local``).
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar

from resilience_crm import metrics
from resilience_crm.breakers import machine
from resilience_crm.breakers.config import exception_classes, exception_errors
from resilience_crm.breakers.stores.base import BaseStore, Step
from resilience_crm.exceptions import CircuitOpenError
from resilience_crm.signals import circuit_transition

logger = logging.getLogger("resilience_crm.breakers.breaker")

T = TypeVar("T")

#: Successes counted locally before they are sent to the store even if the snapshot is fresh.
#: They go with the next refresh of the snapshot (every ``SNAPSHOT_TTL``) or with the next
#: failure anyway, so the store's counts are never behind by more than that: the batch only
#: bounds a process that makes this many calls within one ``SNAPSHOT_TTL``, and the memory
#: they take meanwhile (one deque entry each: under a megabyte). (At 1,000 a busy loop paid a
#: store round trip every 1,000 calls, over 1 µs per call on this machine.)
SUCCESS_BATCH = 100_000


class Permit(NamedTuple):
    """Leave to make one call: the generation it was granted in and, in half-open, its lease."""

    generation: int
    id: str = ""
    state: str = machine.CLOSED


class Breaker:
    def __init__(
        self,
        name: str,
        config: machine.Config,
        store: BaseStore,
        *,
        snapshot_ttl: float = 0.5,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
        base_config: Mapping[str, Any] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.store = store
        self.snapshot_ttl = snapshot_ttl
        self._clock = clock
        self._monotonic = monotonic
        self._rand = rand
        self._base_config = dict(base_config if base_config is not None else asdict(config))
        self._overrides = dict(overrides or {})
        self._cv = 0
        self._use(config)
        self._lock = threading.Lock()
        self._view: dict[str, Any] | None = None
        #: The permit every call gets while the view is fresh and lets calls through.
        self._passing: Permit | None = None
        self._view_local = False
        self._fetched = float("-inf")
        self._offset_ms = 0
        #: The generation of each success not yet sent to the store: appended without a lock
        #: (``deque.append`` is atomic), taken under ``_lock`` by :meth:`_take_pending`.
        self._successes: deque[int] = deque()
        self._counters = {
            outcome: metrics.key("calls", circuit=name, outcome=outcome)
            for outcome in (*machine.OUTCOMES, "rejected")
        }
        self._latency = metrics.key("latency_us", circuit=name)

    def __repr__(self) -> str:
        return f"<Breaker {self.name!r} {self._view['state'] if self._view else '?'}>"

    # The calls a protected operation makes.

    def allow(self) -> Permit:
        """A permit for one call, or :class:`CircuitOpenError`. No I/O while the view is fresh."""
        view = self._view
        if view is not None and self._monotonic() - self._fetched < self.snapshot_ttl:
            if self._passing is not None:
                return self._passing
            state = view["state"]
            if state in machine.REJECTING:
                wait_ms = view["until"] - self._server_now_ms()
                if view["until"] == 0 or wait_ms > 0:
                    metrics.add(self._counters["rejected"])
                    retry_after = _seconds(wait_ms) if view["until"] else None
                    raise CircuitOpenError(retry_after=retry_after, circuit=self.name)
        result = self._step(self._take_pending(), "acquire", {"permit": uuid.uuid4().hex})
        if result["allowed"]:
            return Permit(result["gen"], result["permit"], result["state"])
        metrics.add(self._counters["rejected"])
        raise CircuitOpenError(retry_after=_seconds(result["retry_after"]), circuit=self.name)

    def record(self, permit: Permit, outcome: str) -> None:
        """Count the outcome of a call made under ``permit``."""
        metrics.add(self._counters[outcome])
        self._record(permit, outcome)

    def _record(self, permit: Permit, outcome: str) -> None:
        if permit.state == machine.DISABLED:
            return
        if outcome == machine.SUCCESS and not permit.id:
            self._count_success(permit.generation)
            return
        self._step([*self._take_pending(), [permit.generation, outcome, 1, permit.id]])

    def _count_success(self, generation: int) -> None:
        """Count a success for the next store step (now, when the batch is full)."""
        successes = self._successes
        successes.append(generation)
        if len(successes) >= SUCCESS_BATCH:
            self._step(self._take_pending())

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` under the breaker, with no fallback: raises what it raises, or
        :class:`CircuitOpenError` without running it."""
        # allow()'s fresh, passing case inline: the closed path is this and settle(), and
        # calling allow() here makes it about 5% slower (bench/closed_path.py).
        started = self._monotonic()
        permit = self._passing
        if permit is None or started - self._fetched >= self.snapshot_ttl:
            permit = self.allow()
            started = self._monotonic()
        try:
            value = fn(*args, **kwargs)
        except Exception as exc:
            self.settle(permit, self._monotonic() - started,
                        machine.FAILURE if self.is_failure(exc) else machine.SUCCESS)
            raise
        self.settle(permit, self._monotonic() - started)
        return value

    def settle(self, permit: Permit, elapsed: float, outcome: str | None = None) -> None:
        """Time and record a call that ran for ``elapsed`` seconds; ``None``: a success, or
        slow. Never raises: the caller's own result or exception is what the caller gets."""
        if outcome is None:
            outcome = machine.SLOW if elapsed >= self._slow_call else machine.SUCCESS
        try:
            metrics.observe_call(self._counters[outcome], self._latency, elapsed)
            # _record()'s closed-path case inline, for the same reason as allow()'s in call().
            if outcome == machine.SUCCESS and not permit.id and permit.state != machine.DISABLED:
                self._count_success(permit.generation)  # the closed path: no store call
            else:
                self._record(permit, outcome)
        except Exception:
            logger.exception("Circuit %s: recording a call's outcome failed.", self.name)

    def is_failure(self, exc: BaseException) -> bool:
        """Whether ``exc`` counts against the circuit. An exception that does not still counts
        as a success: the dependency answered."""
        if isinstance(exc, (CircuitOpenError, *self._ignore)):
            return False
        return isinstance(exc, self._record_on)

    # Reading and steering.

    @property
    def state(self) -> str:
        """This worker's view of the state, refreshed from the store when older than the TTL."""
        if self._view is None or self._monotonic() - self._fetched >= self.snapshot_ttl:
            return str(self._step(self._take_pending())["state"])
        return str(self._view["state"])

    def local_state(self) -> str:
        """The state as this worker last saw it, however old, with no store call at all:
        for work on every request (the rate limiter's adaptive limits)."""
        view = self._view
        return machine.CLOSED if view is None else str(view["state"])

    def peek(self) -> str:
        """The state, read without stepping the store (no write anywhere): for probes."""
        view = self._view
        if view is not None and self._monotonic() - self._fetched < self.snapshot_ttl:
            return str(view["state"])
        stored = self.store.read(self.name)
        if stored is None:
            return machine.CLOSED
        return machine.current_state(stored, self._server_now_ms())

    def load_overrides(self) -> None:
        """Take the overrides the store holds for the circuit (one read, no step): a new
        breaker's settings before its first decision."""
        stored = self.store.read(self.name)
        if stored and stored.get("cv"):
            self._adopt_overrides(stored["cv"], stored.get("cfg"))

    def snapshot(self) -> dict[str, Any]:
        """The circuit as the store has it now (one store call)."""
        view = self._step(self._take_pending())
        calls, failures = view["calls"], view["failures"]
        retry_after = None
        if view["state"] in machine.REJECTING and view["until"]:
            retry_after = _seconds(view["until"] - view["now"])
        return {
            "name": self.name,
            "state": view["state"],
            "generation": view["gen"],
            "calls": calls,
            "failures": failures,
            "slow": view["slow"],
            "failure_rate": failures / calls if calls else 0.0,
            "opened_at": _datetime(view["opened_at"]),
            "until": _datetime(view["until"]),
            "retry_after": retry_after,
            "store": "local" if self.using_fallback else "shared",
        }

    def reset(self, actor: Any = None, reason: str = "", *, source: str = "") -> None:
        """Close the circuit and forget its counts, in every worker within ``SNAPSHOT_TTL``.

        ``actor`` and ``source`` (``"admin"``, ``"command"``) go into the audit trail. Raises
        :class:`~resilience_crm.exceptions.StoreUnavailable` when the shared store cannot take
        it: a change that only this worker would see is no change at all."""
        self._set(machine.CLOSED, actor, reason or "reset", None, source)

    def force(self, state: str, actor: Any = None, reason: str = "",
              until: datetime | None = None, *, source: str = "") -> None:
        """Hold the circuit in ``state`` (one of ``machine.FORCEABLE``), until ``until`` if
        given."""
        if state not in machine.FORCEABLE:
            choices = ", ".join(machine.FORCEABLE)
            raise ValueError(f"Cannot force {state!r}; choose one of {choices}.")
        self._set(state, actor, reason or f"forced {state}", until, source)

    def configure(self, overrides: Mapping[str, Any]) -> None:
        """Hand ``overrides`` (breaker settings over the ones in ``RESILIENCE_CRM``) to every
        worker; each applies them with its next store step. Raises ``ValueError`` if invalid,
        :class:`~resilience_crm.exceptions.StoreUnavailable` if the shared store cannot take
        them."""
        problems = exception_errors(overrides)
        if problems:
            raise ValueError("; ".join(f"{key} {message}" for key, message in problems))
        machine.Config.from_mapping(self._base_config | dict(overrides))
        self._step(self._take_pending(), "config", {"config": json.dumps(dict(overrides))},
                   shared_only=True)

    @property
    def using_fallback(self) -> bool:
        """Whether this worker's last step was on its own breaker (the shared store failed)."""
        return self._view_local

    # Internals.

    def _use(self, config: machine.Config) -> None:
        self.config = config
        self._slow_call = config.slow_call_duration
        self._step_config = config.as_step_config()
        self._record_on = exception_classes(config.record_exceptions, self.name) or (Exception,)
        self._ignore = exception_classes(config.ignore_exceptions, self.name)

    def _adopt_overrides(self, version: int, text: Any) -> None:
        self._cv = version
        if version == 0:
            return  # nothing was handed out since the state began; keep ours
        try:
            overrides = json.loads(text) if isinstance(text, str) else dict(text or {})
        except (TypeError, ValueError) as err:
            logger.error("Circuit %s: ignoring invalid overrides %r (%s)", self.name, text, err)
            return
        self.use_overrides(overrides)

    def use_overrides(self, overrides: Any) -> None:
        """Run on ``overrides`` (settings saved on the circuit) from now on; invalid ones are
        logged and ignored."""
        try:
            if not isinstance(overrides, dict):
                raise ValueError("the overrides are not a JSON object")
            if overrides == self._overrides:
                return
            problems = exception_errors(overrides)
            if problems:
                raise ValueError("; ".join(f"{key} {message}" for key, message in problems))
            self._use(machine.Config.from_mapping(self._base_config | overrides))
        except (TypeError, ValueError) as err:
            logger.error("Circuit %s: ignoring invalid overrides %r (%s)", self.name,
                         overrides, err)
            return
        self._overrides = dict(overrides)
        logger.info("Circuit %s: now using overrides %r", self.name, self._overrides)

    def _set(self, state: str, actor: Any, reason: str, until: datetime | None,
             source: str) -> None:
        arg = {
            "state": state,
            "reason": reason,
            "actor": str(actor) if actor is not None else "",
            "until": int(until.timestamp() * 1000) if until else 0,
        }
        self._step(self._take_pending(), "set", arg, actor=actor, source=source,
                   shared_only=True)

    def _take_pending(self) -> list[list[Any]]:
        """The successes counted since the last step, by generation, as store entries. Other
        threads only append meanwhile: what this takes is there to take."""
        successes = self._successes
        if not successes:
            return []
        pending: dict[int, int] = {}
        with self._lock:
            for _ in range(len(successes)):
                generation = successes.popleft()
                pending[generation] = pending.get(generation, 0) + 1
        return [[gen, machine.SUCCESS, count, ""] for gen, count in pending.items()]

    def _server_now_ms(self) -> int:
        return int(self._clock() * 1000) + self._offset_ms

    def _step(self, entries: Sequence[Sequence[Any]], op: str | None = None,
              arg: Mapping[str, Any] | None = None, *, actor: Any = None,
              source: str = "", shared_only: bool = False) -> dict[str, Any]:
        result = self.store.step(Step(self.name, self._step_config, self._rand(), entries, op,
                                      arg, shared_only=shared_only))
        local = bool(result.get("local"))
        with self._lock:
            # Threads step concurrently; a slower answer must not replace a newer view.
            view = self._view
            if view is None or local != self._view_local or result["now"] >= view["now"]:
                self._view, self._view_local = result, local
                self._passing = (Permit(result["gen"], "", result["state"])
                                 if result["state"] in machine.PASSING else None)
                self._fetched = self._monotonic()
                self._offset_ms = result["now"] - int(self._clock() * 1000)
        if result["cv"] != self._cv and not local:
            self._adopt_overrides(result["cv"], result["cfg"])
        transitions = result["transitions"]
        for i, change in enumerate(transitions):
            manual = op == "set" and i == len(transitions) - 1  # the set's own transition
            self._announce(change, actor if manual else None, local, source if manual else "")
        return result

    def _announce(self, change: Mapping[str, Any], actor: Any, local: bool,
                  source: str = "") -> None:
        logger.log(
            logging.WARNING if change["to"] in machine.REJECTING else logging.INFO,
            "Circuit %s: %s -> %s (generation %s, %s)%s", self.name, change["from"],
            change["to"], change["gen"], change["reason"], " [local]" if local else "",
        )
        metrics.inc("transitions", circuit=self.name, to_state=change["to"])
        responses = circuit_transition.send_robust(
            sender=Breaker, name=self.name, from_state=change["from"], to_state=change["to"],
            generation=change["gen"], reason=change["reason"], actor=actor,
            at=_datetime(change["at"]), local=local, source=source or None,
        )
        for receiver, response in responses:
            if isinstance(response, Exception):
                logger.error("circuit_transition receiver %r failed", receiver,
                             exc_info=(type(response), response, response.__traceback__))


def _seconds(ms: float) -> float | None:
    return max(0.0, ms / 1000) if ms else None


def _datetime(ms: float) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, tz=UTC) if ms else None
