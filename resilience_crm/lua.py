"""Redis as every feature talks to it: what counts as it being down (:data:`REDIS_DOWN`),
Lua scripts run by EVALSHA, once each, and a few commands in one round trip
(:func:`pipelined`)."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from typing import Any

from django_redis.exceptions import ConnectionInterrupted
from redis.exceptions import (
    AskError,
    ConnectionError,
    MovedError,
    NoScriptError,
    RedisError,
    ResponseError,
    TimeoutError,
    TryAgainError,
)

#: What a call to Redis raises when Redis is unavailable: not only unreachable or stalled
#: (a refused or cut connection, a socket timeout) but answering with an error (BUSY,
#: MISCONF, OOM, a replica's READONLY, WRONGTYPE on a key, a failing script): redis-py's
#: ``RedisError``, the ``OSError`` of a socket it did not wrap, and django-redis's
#: ``ConnectionInterrupted``, which wraps redis-py's errors in cache calls. Each user
#: degrades on these; a reply of the wrong shape is the caller's own extra (``ValueError``
#: for JSON that is not the script's, ``TypeError``/``IndexError`` for a short reply).
REDIS_DOWN = (RedisError, ConnectionInterrupted, OSError)
#: A Redis Cluster master's answers that mean "not here, not run": ask elsewhere.
REDIRECTED = (MovedError, AskError, TryAgainError)


class LuaScript:
    """One Lua script, run by its SHA1 on a connection of a redis-py client's pool, and loaded
    again whenever Redis has forgotten it (a restart, a failover or ``SCRIPT FLUSH``).

    Every script here changes state (charges a budget, records an outcome, queues a write), so
    each call is sent once and never retried, whatever retry policy the cache's connections
    carry: when a reply is lost the script may have run, and running it again would charge
    or count twice. The caller sees the error and decides (the limiter and the breakers
    degrade to their per-process fallbacks).

    Going to the pool directly also skips what ``client.evalsha`` wraps around each command
    (a retry loop and observability hooks, about 14 µs of CPU per call) and, in redis-py's
    own ``Script``, an ``isinstance`` check that since redis-py 8 runs ``typing``'s protocol
    machinery (10-15 µs more): on a rate-limit decision of about 200 µs, that is what keeps
    it under 0.6x DRF's throttle (docs/benchmarks.md).
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    def __call__(self, client: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        pool = getattr(client, "connection_pool", None)
        if pool is None:  # a cluster client: it picks the node by the keys' hash slot
            return self._through(client, keys, args)
        # A connection that fails midway (a timeout, a cut) is closed by redis-py before the
        # error reaches us, so a late reply can never be read as the next caller's answer.
        connection = pool.get_connection()
        try:
            try:
                connection.send_command("EVALSHA", self.sha, len(keys), *keys, *args)
                return connection.read_response()
            except NoScriptError:
                connection.send_command("SCRIPT", "LOAD", self.source)
                connection.read_response()
                connection.send_command("EVALSHA", self.sha, len(keys), *keys, *args)
                return connection.read_response()
        finally:
            pool.release(connection)

    def _through(self, client: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """On a Redis Cluster client (no single pool): on the pool of the master of the first
        key's slot, as on a single Redis, so once and never retried. Keys of several slots
        reach that master as they are, and the cluster refuses them (``CROSSSLOT``): every
        script's keys share one hash tag.

        A redirection (``MOVED`` or ``ASK`` during a failover or a resharding, ``TRYAGAIN``)
        means the master did not run the script: it is sent again through the client, which
        follows the redirection and learns the new layout, with the master named outright,
        which turns its retries off. A lost connection, which may have run it, is not sent
        again; the client learns the layout again for the next call (as it does itself)."""
        node = client.get_node_from_key(keys[0]) if keys else client.get_random_node()
        try:
            return self(client.get_redis_connection(node), keys, args)
        except REDIRECTED:
            try:
                return client.execute_command("EVALSHA", self.sha, len(keys), *keys, *args,
                                              target_nodes=node)
            except NoScriptError:  # the master it was sent on to: load it there, and run it
                node = client.get_node_from_key(keys[0]) if keys else node
                return self(client.get_redis_connection(node), keys, args)
        except (ConnectionError, TimeoutError):
            # As the client does: learn the layout again, asking the failed master last.
            with contextlib.suppress(*REDIS_DOWN):
                client.nodes_manager.move_node_to_end_of_cached_nodes(node.name)
                client.nodes_manager.initialize(last_failed_node_name=node.name)
            raise


def pipelined(client: Any, *commands: Sequence[Any]) -> list[Any]:
    """The replies to ``commands``, sent together in one round trip: on a connection of the
    client's pool, as :class:`LuaScript` runs a script (without redis-py's ``Pipeline``, whose
    bookkeeping costs about as much again as the round trip on a two-core machine:
    docs/benchmarks.md), or through a pipeline on a Redis Cluster client, which has no one
    pool. An error reply raises its ``ResponseError`` once every reply is read, so the
    connection goes back to the pool with nothing left unread."""
    pool = getattr(client, "connection_pool", None)
    if pool is None:
        pipeline = client.pipeline(transaction=False)
        for command in commands:
            pipeline.execute_command(*command)
        return list(pipeline.execute())
    connection = pool.get_connection()
    try:
        connection.send_packed_command(connection.pack_commands(commands))
        replies = []
        for _ in commands:
            try:
                replies.append(connection.read_response())
            except ResponseError as err:
                replies.append(err)
    finally:
        pool.release(connection)
    for reply in replies:
        if isinstance(reply, ResponseError):
            raise reply
    return replies
