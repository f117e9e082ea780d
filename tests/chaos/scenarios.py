"""The chaos run's scenarios: which fault, on what, for how long; and the faults themselves,
applied to the fault proxies in front of PostgreSQL and Redis or to gunicorn's workers."""

from __future__ import annotations

import os
import random
import signal
import threading
from dataclasses import dataclass

from crm_demo.crm.faults import FaultProxy
from tests.gunicorn_server import worker_pids

#: Seconds a slowed PostgreSQL holds each reply: past ``call_timeout`` within a few queries.
DATABASE_DELAY = 0.4
#: Seconds a slowed Redis holds each reply: below the demo's 0.25 s socket timeout, so every
#: command succeeds, late.
REDIS_DELAY = 0.1
#: Seconds between two workers killed with SIGKILL.
KILL_EVERY = 3.0


@dataclass(frozen=True)
class Scenario:
    name: str
    target: str  # "database", "redis" or "" (no proxy fault)
    fault: str  # "cut", "stall", "slow" or "" (none)
    kills: bool = False  # SIGKILL a worker every KILL_EVERY seconds during the fault
    seconds: float = 15.0  # how long the fault lasts

    @property
    def outage(self) -> bool:
        """The database is unreachable or too slow: reads must come from the cache."""
        return self.target == "database"

    def describe(self) -> str:
        parts = []
        if self.fault:
            parts.append(f"{self.target} {self.fault}")
        if self.kills:
            parts.append(f"a worker SIGKILLed every {KILL_EVERY:g} s")
        return f"{' + '.join(parts) or 'no fault'} for {self.seconds:g} s"


#: ``make chaos``: every fault on each dependency, worker kills, and both at once.
FULL = (
    Scenario("database cut", "database", "cut"),
    Scenario("database stall", "database", "stall"),
    Scenario("database slow", "database", "slow"),
    Scenario("redis cut", "redis", "cut"),
    Scenario("redis stall", "redis", "stall"),
    Scenario("redis slow", "redis", "slow"),
    Scenario("workers killed", "", "", kills=True),
    Scenario("database cut + kills", "database", "cut", kills=True),
)
#: The suite's short run (tests/test_chaos.py).
SHORT = (
    Scenario("database cut", "database", "cut", seconds=8.0),
    Scenario("workers killed", "", "", kills=True, seconds=8.0),
)


def begin(scenario: Scenario, proxy: FaultProxy | None) -> None:
    """Start the scenario's proxy fault."""
    if proxy is None or not scenario.fault:
        return
    if scenario.fault == "cut":
        proxy.cut()
    elif scenario.fault == "stall":
        proxy.stalled = True
        proxy.drop()  # open connections reset; new ones are never answered
    elif scenario.fault == "slow":
        proxy.delay = DATABASE_DELAY if scenario.target == "database" else REDIS_DELAY
    else:
        raise ValueError(f"unknown fault {scenario.fault!r}")


def end(scenario: Scenario, proxy: FaultProxy | None) -> None:
    """End the scenario's proxy fault. The connections a stall froze are reset first: the
    proxy cannot resume them, where a real network coming back would resume them or see
    them time out (a pooled connection that hangs on until ``tcp_user_timeout`` would be
    the proxy's doing, not the outage's)."""
    if proxy is None:
        return
    if scenario.fault == "stall":
        proxy.drop()
    proxy.restore()


class Killer:
    """SIGKILLs one of gunicorn's workers (master ``master``) every :data:`KILL_EVERY`
    seconds until stopped; gunicorn starts a new one each time."""

    def __init__(self, master: int, seed: int = 16) -> None:
        self.master = master
        self.killed: list[int] = []
        self._stop = threading.Event()
        self._rng = random.Random(seed)  # noqa: S311  (which worker, not a secret)
        self._thread = threading.Thread(target=self._run, daemon=True, name="chaos-killer")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(KILL_EVERY):
            pids = worker_pids(self.master)
            if not pids:
                continue
            pid = self._rng.choice(pids)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            self.killed.append(pid)
