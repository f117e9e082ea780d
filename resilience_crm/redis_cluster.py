"""A django-redis client for Redis Cluster, to name in a cache's ``OPTIONS["CLIENT_CLASS"]``.

django-redis has no cluster client: its ``DefaultClient`` builds one ``redis.Redis`` per
``LOCATION``, which answers ``MOVED`` for every key another master holds. This one builds a
single redis-py ``RedisCluster`` from every ``LOCATION`` given (each a startup node; the
rest of the cluster is discovered), and keeps everything else of ``DefaultClient``: keys
through ``make_key``, the serializer and compressor, ``SOCKET_TIMEOUT`` and
``SOCKET_CONNECT_TIMEOUT``, ``PASSWORD``/``USERNAME``, and ``REDIS_CLIENT_KWARGS`` passed on
to ``RedisCluster`` (``read_from_replicas``, ``require_full_coverage``, ...).

``RedisCluster`` retries a command that met a connection error or a timeout up to three
times by default; a lost reply may be a command that ran, so a retried ``HINCRBY`` or
``INCR`` counts twice. This client turns those retries off (``CLUSTER_RETRIES``, default 0);
redirections (``MOVED``, ``ASK``, ``TRYAGAIN``) are still followed, since the node that
answers them did not run the command. The app's Lua scripts are never retried whatever this
says (:class:`resilience_crm.lua.LuaScript` names their node itself).

While a master is down and before its replica takes over, its slots are served by no one;
the client still serves the other masters' slots (``require_full_coverage`` is ``False``
unless ``REDIS_CLIENT_KWARGS`` says otherwise), as the servers do with
``cluster-require-full-coverage no``.

Multi-key cache calls work across slots: ``get_many`` reads slot by slot
(``mget_nonatomic``), ``set_many`` and ``delete_many`` go through the cluster's pipeline,
``clear`` and ``delete_pattern`` visit every master. Each app script touches keys of one hash
slot (docs/scaling.md, "Redis Cluster").
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured
from django_redis.client import DefaultClient
from django_redis.exceptions import ConnectionInterrupted
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisError
from redis.retry import Retry

#: The ``OPTIONS`` key giving how often ``RedisCluster`` retries a command after a connection
#: error or a timeout (0: never, so nothing is counted twice).
RETRIES_OPTION = "CLUSTER_RETRIES"
#: The ``OPTIONS["REDIS_CLIENT_KWARGS"]`` keys that ``CLUSTER_RETRIES`` replaces.
RETRY_KWARGS = ("retry", "cluster_error_retry_attempts")


def database(location: str) -> str:
    """The database a ``redis://host:port/db`` location names (``""`` for none)."""
    return urlsplit(location).path.strip("/")


def startup_nodes(locations: Collection[str]) -> list[ClusterNode]:
    """The ``ClusterNode`` of each ``redis://host:port`` location. A cluster has only database
    0: a location naming another is refused (E070 says so at start-up)."""
    nodes = []
    for location in locations:
        if database(location) not in ("", "0"):
            raise ImproperlyConfigured(
                f"Redis Cluster has only database 0; {location!r} names another.")
        parts = urlsplit(location)
        nodes.append(ClusterNode(parts.hostname or "127.0.0.1", parts.port or 6379))
    return nodes


def retry_count(options: dict[str, Any]) -> int | None:
    """``CLUSTER_RETRIES`` from a cache's ``OPTIONS`` (0 when absent); ``None`` when it is
    not a whole number >= 0."""
    value = options.get(RETRIES_OPTION, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def retry_problems(options: dict[str, Any]) -> list[str]:
    """What is wrong with how a cache's ``OPTIONS`` say the cluster client retries (check
    E072 reports each); none when nothing is."""
    problems = []
    if retry_count(options) is None:
        problems.append(f"{RETRIES_OPTION} {options.get(RETRIES_OPTION)!r}, not a whole "
                        "number >= 0")
    kwargs = options.get("REDIS_CLIENT_KWARGS") or {}
    problems += [f"{key!r} in REDIS_CLIENT_KWARGS, which {RETRIES_OPTION} replaces"
                 for key in RETRY_KWARGS if key in kwargs]
    return problems


def retries(options: dict[str, Any]) -> int:
    """How often the cluster client retries a command, from a cache's ``OPTIONS``;
    ``ImproperlyConfigured`` with E072's problems when they have any."""
    problems = retry_problems(options)
    count = retry_count(options)
    if problems or count is None:
        raise ImproperlyConfigured(f"The Redis Cluster cache has {'; '.join(problems)}.")
    return count


class RedisClusterClient(DefaultClient):
    """django-redis's client on one ``RedisCluster`` for every ``LOCATION``."""

    _cluster: RedisCluster | None = None

    def connect(self, index: int = 0) -> Any:
        """The one cluster client, whichever index django-redis asks for (it keeps one per
        ``LOCATION``, for primary/replica setups a cluster discovers by itself)."""
        if self._cluster is None:
            params = self.connection_factory.make_connection_params(self._server[0])
            params.pop("url")
            params.pop("parser_class", None)
            kwargs = {**params, "require_full_coverage": False,
                      **self.connection_factory.redis_client_cls_kwargs}
            self._cluster = RedisCluster(
                startup_nodes=startup_nodes(self._server),
                retry=Retry(NoBackoff(), retries(self._options)), **kwargs)
        return self._cluster

    def disconnect(self, index: int = 0, client: Any = None) -> None:
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None
            self._clients = [None] * len(self._server)

    def get_many(self, keys: Collection[str], version: int | None = None,
                 client: Any = None) -> dict:
        """Many keys in one call per slot (``MGET`` refuses keys of several slots)."""
        if client is None:
            client = self.get_client(write=False)
        if not keys:
            return {}
        named = {self.make_key(key, version=version): key for key in keys}
        try:
            values = client.mget_nonatomic(list(named))
        except RedisError as err:
            raise ConnectionInterrupted(connection=client) from err
        return {named[key]: self.decode(value)
                for key, value in zip(named, values, strict=True) if value is not None}
