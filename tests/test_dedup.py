"""Identical concurrent reads share one query: within a process (single-flight) and across
processes (a Redis lease), with real forked processes, threads and PostgreSQL."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest
from django.db import connection, connections

from resilience_crm.exceptions import RetriesExhausted
from resilience_crm.provider.facade import Provider, protected
from resilience_crm.testutils import readers_waiting
from tests.processes import ctx, run_processes
from tests.waiting import wait_until

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]

PROCESSES, THREADS = 4, 50
KEY = "contacts:dedup"


def slow_query(queries: list, lock: threading.Lock):
    """One real query, slow enough that the others arrive while it runs."""
    with lock:
        queries.append(1)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(0.3), 42")
        return cursor.fetchone()[1]


def reader(index, barrier, results):
    """``THREADS`` threads in this process read the same key at the same moment; the process
    reports how many queries it made and how many reads got the real value."""
    start = threading.Barrier(THREADS)
    answers: list = []
    queries: list = []
    lock = threading.Lock()

    def read():
        start.wait()
        try:
            answers.append(protected.read(KEY, lambda: slow_query(queries, lock)))
        except BaseException as err:
            answers.append(repr(err.__cause__ or err))  # shown by the assertion below
        finally:
            connections.close_all()

    barrier.wait()
    threads = [threading.Thread(target=read) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put((len(queries), answers.count(42), [a for a in answers if a != 42][:2]))


def run_readers():
    """The queries all the processes made (each process counts its own and reports it
    through a queue, which nothing shared can lose)."""
    results = ctx.SimpleQueue()  # see tests/processes.py
    connections.close_all()
    run_processes(reader, ctx.Barrier(PROCESSES), results, count=PROCESSES)
    reports = [results.get() for _ in range(PROCESSES)]  # each exited after its put
    assert sum(report[1] for report in reports) == PROCESSES * THREADS, reports
    return sum(report[0] for report in reports)


def test_200_identical_reads_in_4_processes_make_one_query_with_the_redis_lease(
        settings, redis_cache, postgres, transactional_db):
    settings.RESILIENCE_CRM = {"STORE": "redis", "CACHE_ALIAS": "redis"}
    assert run_readers() == 1


def test_without_a_shared_cache_each_process_makes_at_most_one_query(settings, postgres,
                                                                      transactional_db):
    settings.RESILIENCE_CRM = {"STORE": "memory", "CACHE_ALIAS": "default"}
    assert 1 <= run_readers() <= PROCESSES


def test_waiting_threads_get_the_leaders_error(settings, redis_cache, postgres,
                                               transactional_db):
    settings.RESILIENCE_CRM = {"STORE": "redis", "CACHE_ALIAS": "redis"}
    calls, errors = [], []
    inside = threading.Event()
    release = threading.Event()

    def failing():
        calls.append(1)
        inside.set()
        release.wait(10)
        raise ConnectionResetError("the database went away")

    def read():
        try:
            protected.read("contacts:failing", failing, using=None)
        except RetriesExhausted as err:
            errors.append(err)
        finally:
            connections.close_all()  # the breaker read its overrides in this thread

    leader = threading.Thread(target=read)
    leader.start()
    assert inside.wait(10)
    waiters = [threading.Thread(target=read) for _ in range(5)]
    for waiter in waiters:
        waiter.start()
    wait_until(lambda: readers_waiting("contacts:failing") >= len(waiters),
               "the waiters joining the leader's read")
    release.set()
    for thread in [leader, *waiters]:
        thread.join(20)
    assert len(errors) == 6
    assert len(calls) == 3  # the leader and its two retries; no waiter ran its own


def lead_and_fail(inside, release):
    """In another process: hold the read's lease, then fail."""

    def failing():
        inside.set()
        release.wait(20)
        raise ConnectionResetError("the database went away")

    with contextlib.suppress(RetriesExhausted):
        protected.read("contacts:shared-error", failing, using=None)


def test_a_waiter_in_another_process_gets_the_leaders_error(settings, redis_cache, postgres,
                                                            transactional_db):
    settings.RESILIENCE_CRM = {"STORE": "redis", "CACHE_ALIAS": "redis"}
    inside, release = ctx.Event(), ctx.Event()
    connections.close_all()
    leader = ctx.Process(target=lead_and_fail, args=(inside, release))
    leader.start()
    try:
        assert inside.wait(20), "the leader never started its query"
        waiting = threading.Event()

        def sleep(seconds):  # the waiter polls the shared cache: it is waiting now
            waiting.set()
            time.sleep(seconds)

        calls, raised = [], []

        def wait_for_the_leader():
            try:
                Provider(sleep=sleep).read("contacts:shared-error", lambda: calls.append(1),
                                           using=None)
            except RetriesExhausted as err:
                raised.append(err)
            finally:
                connections.close_all()

        waiter = threading.Thread(target=wait_for_the_leader)
        waiter.start()
        assert waiting.wait(20), "the waiter never waited"
        release.set()
        waiter.join(30)
    finally:
        release.set()
        leader.join(30)
    assert len(raised) == 1 and raised[0].code == "RETRIES_EXHAUSTED"
    assert calls == []  # the waiter never queried itself
