"""One background thread per process that writes what the request path only buffers.

Transition events (:mod:`resilience_crm.breakers.events`) and per-minute call metrics
(:mod:`resilience_crm.metrics`, written by :mod:`resilience_crm.buckets`) are kept in memory
by the thread that makes them and written to the database here, so no request waits on the
database for its bookkeeping, least of all on a database that is down. ``AppConfig.ready()``
registers their writers, in order, with :func:`register`.

The thread starts on first need (:func:`start`, :func:`wake`), runs a round of writes when
woken and every :data:`INTERVAL` seconds, and backs off (:data:`BACKOFF_START` doubling up to
:data:`BACKOFF_MAX`, or the ``reset_timeout`` of the query guard's circuit on the app's
tables: :func:`_trial_interval`) while the database cannot be reached, answering wakes
meanwhile only with a spill (below). A forked child starts its own thread on first need; nothing it
inherits from its parent's thread (lock, wake-up event, backoff) is used in the child.

What a round cannot write does not stay in this process: the modules' spills (registered
with their writers) move it into the shared store (:mod:`resilience_crm.spool`) after
a
failed round, and whenever something new is buffered while the thread backs off; the
writers of any process take it from there once the database answers. At exit the process
spills what is left and tries the database once, for at most :data:`EXIT_TIMEOUT` seconds.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from django.db import InterfaceError, OperationalError, close_old_connections, connections

from resilience_crm import conf

logger = logging.getLogger("resilience_crm.flusher")

#: Seconds between rounds when nothing wakes the thread (how often metrics are written).
INTERVAL = 10.0
#: Seconds to wait after the first failed round; doubled per failure, up to BACKOFF_MAX.
BACKOFF_START = 1.0
BACKOFF_MAX = 30.0
#: Errors that mean the database cannot be reached: the round stops and backs off.
UNREACHABLE = (OperationalError, InterfaceError)
#: Seconds the process may spend at exit on what is left (a stalled database must not hold
#: up a deploy): waiting for a round under way, then one try of the database.
EXIT_TIMEOUT = 2.0

#: A writer: writes what its module buffered, raises one of UNREACHABLE when it cannot.
Task = Callable[[], object]
#: A spill: moves what its module buffered into the shared store, waiting at most the given
#: seconds for the module's writer (-1: as long as it takes); never raises for an outage.
Spill = Callable[[float], object]

_tasks: list[Task] = []
_spills: list[Spill] = []
#: The breaker settings in effect for a circuit in this process: the settings' until
#: :func:`use_circuit_config` gives the breakers' (the breakers import this module).
_circuit_config: Callable[[str], Mapping[str, Any]] = conf.settings.circuit_config


class _Worker:
    """The thread and what it shares with the rest of the process; rebuilt in a forked child."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # held only to start or stop the thread, never across I/O
        self.wakeup = threading.Event()
        self.thread: threading.Thread | None = None
        self.stopping = False
        self.failures = 0
        self.retry_at = 0.0  # time.monotonic() before which no round is tried
        self.rounds = 0


_worker = _Worker()
_background = True


def register(task: Task, *, spill: Spill | None = None) -> None:
    """Run ``task`` in every round, after the tasks registered before it; ``spill`` when a
    round fails. ``ResilienceCrmConfig.ready()`` registers the app's tasks, in one list."""
    if all(task is not registered for registered in _tasks):
        _tasks.append(task)
    if spill is not None and all(spill is not registered for registered in _spills):
        _spills.append(spill)


def use_circuit_config(lookup: Callable[[str], Mapping[str, Any]]) -> None:
    """Read a circuit's breaker settings with ``lookup`` (the backoff stops at the
    ``reset_timeout`` of the guard's circuit): ``ResilienceCrmConfig.ready()`` gives the
    registry's, which include the overrides saved on the circuit in the admin."""
    global _circuit_config
    _circuit_config = lookup


def set_background(enabled: bool) -> None:
    """Whether the thread runs (the default). When off, buffered events and metrics stay in
    this process until ``events.flush()`` / ``buckets.flush_buckets()`` are called: for test
    suites whose database changes live in the test's own transaction."""
    global _background
    _background = enabled
    if not enabled:
        stop()


def start() -> None:
    """Start the thread if it is not running in this process. Cheap when it is."""
    thread = _worker.thread
    if thread is not None and thread.is_alive() or not _background:
        return
    worker = _worker
    with worker.lock:
        if worker.thread is not None and worker.thread.is_alive():
            return
        worker.stopping = False
        worker.thread = threading.Thread(target=_run, args=(worker,), daemon=True,
                                         name="resilience-flusher")
        worker.thread.start()


def wake() -> None:
    """Ask for a round now (unless the database is known to be down: then at the retry)."""
    start()
    _worker.wakeup.set()


def stop(timeout: float = 10.0) -> bool:
    """Stop the thread after its current round; whether it stopped within ``timeout``."""
    worker = _worker
    with worker.lock:
        thread, worker.stopping = worker.thread, True
    worker.wakeup.set()
    if thread is not None and thread is not threading.current_thread():
        thread.join(timeout)
        if thread.is_alive():
            return False
    worker.failures, worker.retry_at = 0, 0.0  # a new thread finds out for itself
    return True


def database_down() -> bool:
    """Whether the last round found the database unreachable and the thread is backing off."""
    return _worker.failures > 0


def rounds() -> int:
    """Rounds the thread has finished (written or not) since this process started it."""
    return _worker.rounds


def run_tasks() -> None:
    """One round in the calling thread: every registered writer, in order. Raises one of
    :data:`UNREACHABLE` when the database cannot be reached."""
    for task in list(_tasks):
        task()


def _run(worker: _Worker) -> None:
    while True:
        delay = INTERVAL if worker.failures == 0 else worker.retry_at - time.monotonic()
        worker.wakeup.wait(max(0.0, delay))
        worker.wakeup.clear()
        if worker.stopping:
            _close_connections()
            return
        if worker.failures and time.monotonic() < worker.retry_at:
            spill()  # woken while backing off: the database is known to be down
            continue
        _round(worker)
        worker.rounds += 1


def _round(worker: _Worker) -> None:
    close_old_connections()  # the thread's own, past CONN_MAX_AGE or broken
    try:
        run_tasks()
    except UNREACHABLE as err:
        _close_connections()
        _back_off(worker, err)
        spill()
        return
    except Exception as err:  # a bug must not kill the thread, nor make it spin
        logger.exception("Writing buffered events or metrics failed.")
        _close_connections()
        _back_off(worker, err)
        spill()
        return
    if worker.failures:
        logger.info("The database answers again; buffered events and metrics are written.")
    worker.failures = 0
    close_old_connections()


def spill(timeout: float = -1) -> None:
    """Move what this process buffered into the shared store (where there is one)."""
    for each in list(_spills):
        try:
            each(timeout)
        except Exception:  # one module's failure must not keep the others' records here
            logger.exception("Moving buffered events or metrics to the shared store failed.")


def _back_off(worker: _Worker, err: BaseException) -> None:
    worker.failures += 1
    delay = min(BACKOFF_MAX, BACKOFF_START * 2 ** (worker.failures - 1), _trial_interval())
    delay *= 0.5 + random.random() / 2  # workers that lost it together do not retry together
    worker.retry_at = time.monotonic() + delay
    if worker.failures == 1:
        logger.warning("The database cannot be reached (%s); events and metrics wait in the "
                       "shared store (or this process), next try in %.1fs.", err, delay)


def _trial_interval() -> float:
    """The longest a round may wait: when the query guard guards the app's tables
    (``PROTECT_QUERIES``), the circuit's ``reset_timeout`` in effect, else
    :data:`BACKOFF_MAX`. Calls through ``protected`` do not count on the guard's circuit, so
    these rounds may be all the half-open trials it gets: backing off longer, the thread
    would leave the circuit half-open, waiting for a trial, long after the database is back.
    While the circuit is open a round is refused before any connect, so trying that often
    costs nothing."""
    circuit = conf.settings.guarding(conf.database_alias())
    if circuit is None:
        return BACKOFF_MAX
    seconds = _circuit_config(circuit).get("reset_timeout")
    if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds > 0:
        return float(seconds)
    return BACKOFF_MAX


def _close_connections() -> None:
    for connection in connections.all(initialized_only=True):
        with contextlib.suppress(Exception):  # closing a broken connection may fail; it is gone
            connection.close()


def _after_fork_in_child() -> None:
    """The parent's thread does not exist here, and its lock or event may have been held
    mid-use at the fork: start over with new ones, without touching the old."""
    global _worker
    _worker = _Worker()


def _at_exit() -> None:
    """When the process ends normally (a deploy, a restart, also during an incident): spill
    what is left into the shared store, where it outlives the process, then try the
    database once, for at most :data:`EXIT_TIMEOUT` seconds. Nothing when the thread never
    ran or was stopped on purpose (as by tests)."""
    worker = _worker
    thread = worker.thread
    if thread is None or not thread.is_alive():
        return
    with worker.lock:
        worker.stopping = True
    worker.wakeup.set()
    thread.join(EXIT_TIMEOUT / 2)  # a round under way holds what it is writing
    spill(timeout=0)  # a round still stuck has what it holds copied, not waited for
    last = threading.Thread(target=_last_round, name="resilience-flusher-exit", daemon=True)
    last.start()
    last.join(EXIT_TIMEOUT / 2)
    if last.is_alive():
        logger.warning("The database did not answer within the exit's %.1fs; what is left "
                       "waits in the shared store (or is lost without one).", EXIT_TIMEOUT)


def _last_round() -> None:
    try:
        run_tasks()
    except Exception as err:
        logger.warning("Could not write buffered events or metrics at exit (%s).", err)
    finally:
        _close_connections()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_at_exit)
