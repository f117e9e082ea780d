"""Lua scripts run once: never retried after a lost reply, reloaded after SCRIPT FLUSH, and
a connection left in doubt is closed rather than handed to the next caller."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from resilience_crm.lua import LuaScript, pipelined
from tests.proxy import Proxy
from tests.waiting import wait_until

pytestmark = pytest.mark.redis

INCR = LuaScript("return redis.call('INCR', KEYS[1])")


@pytest.fixture
def direct(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


@pytest.fixture
def proxy(redis_url: str) -> Iterator[Proxy]:
    target = urlparse(redis_url)
    with Proxy(target.hostname or "127.0.0.1", target.port or 6379) as running:
        yield running


def retrying_client(proxy: Proxy, redis_url: str) -> redis.Redis:
    """A client whose connections retry three times on a timeout, as a cache may be set up."""
    return redis.Redis.from_url(
        proxy.url(path=urlparse(redis_url).path or "/0"), socket_timeout=0.3,
        socket_connect_timeout=1, retry=Retry(NoBackoff(), 3), retry_on_error=[redis.TimeoutError])


def test_a_script_whose_reply_is_lost_ran_once_and_is_not_retried(proxy, redis_url, direct):
    key = f"rcrm-test:lua:{uuid.uuid4().hex}"
    client = retrying_client(proxy, redis_url)
    assert INCR(client, [key], []) == 1
    proxy.hold_replies()
    with pytest.raises(redis.TimeoutError):
        INCR(client, [key], [])
    assert int(direct.get(key)) == 2  # it ran on the server once, and only once
    # For contrast, the client's own retry policy: a new connection runs the script again.
    client.ping()  # a connection in the pool, whose replies are now held
    proxy.hold_replies()
    assert client.evalsha(INCR.sha, 1, key) == 4
    direct.delete(key)


def test_a_connection_left_in_doubt_is_closed_and_the_next_call_gets_its_own_reply(
        proxy, redis_url, direct):
    key = f"rcrm-test:lua:{uuid.uuid4().hex}"
    client = retrying_client(proxy, redis_url)
    assert INCR(client, [key], []) == 1
    before = client.client_id()
    proxy.hold_replies()
    with pytest.raises(redis.TimeoutError):
        INCR(client, [key], [])
    wait_until(lambda: str(before) not in {c["id"] for c in direct.client_list()},
               "the connection in doubt to be closed")
    proxy.hold_replies(False)
    assert INCR(client, [key], []) == 3
    direct.delete(key)


def test_an_error_reply_keeps_the_connection(direct):
    failing = LuaScript("return redis.error_reply('NOPE on purpose')")
    before = direct.client_id()
    with pytest.raises(redis.ResponseError, match="NOPE on purpose"):
        failing(direct, [], [])
    assert direct.client_id() == before


def test_a_script_redis_forgot_is_loaded_again(direct):
    key = f"rcrm-test:lua:{uuid.uuid4().hex}"
    assert INCR(direct, [key], []) == 1
    direct.script_flush()
    assert INCR(direct, [key], []) == 2
    assert direct.script_exists(INCR.sha) == [True]
    direct.delete(key)


def test_pipelined_commands_share_a_round_trip_and_an_error_leaves_nothing_unread(
        direct: redis.Redis) -> None:
    key = f"rcrm-test:{uuid.uuid4().hex}"
    assert pipelined(direct, ("INCR", key), ("INCR", key), ("GET", key)) == [1, 2, b"2"]
    direct.set(f"{key}:text", "words")
    with pytest.raises(redis.ResponseError, match="not an integer"):
        pipelined(direct, ("INCR", f"{key}:text"), ("INCR", key))
    assert direct.get(key) == b"3"  # the command after the error ran
    # The connection went back with both replies read: the next caller gets its own.
    assert direct.connection_pool._available_connections
    assert pipelined(direct, ("GET", key)) == [b"3"]
    direct.delete(key, f"{key}:text")
