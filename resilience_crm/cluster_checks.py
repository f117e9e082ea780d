"""System checks on a Redis Cluster behind ``CACHE_ALIAS``: the settings of
:class:`~resilience_crm.redis_cluster.RedisClusterClient` that would put a script's keys in
several slots, count a command twice or read state behind the masters', and (a deployment
check that asks the server, as the write queue's do) a cluster node reached without the
cluster client."""

from __future__ import annotations

from typing import Any

from django.conf import settings as django_settings
from django.core.checks import CheckMessage, Tags, register

import resilience_crm.provider.probe as probe
from resilience_crm import redis_cluster
from resilience_crm.checks import (
    CHECKS,
    TAG,
    Check,
    redis_cache_alias,
    settings_check,
    subclass_at,
    table,
)

#: The ``OPTIONS["REDIS_CLIENT_KWARGS"]`` keys that make ``RedisCluster`` read from replicas.
REPLICA_READS = ("read_from_replicas", "load_balancing_strategy")

MESSAGES = table({
    "CLUSTER_DATABASE": Check(
        "resilience_crm.E070",
        "The Redis Cluster cache {alias!r} names database {db!r} in {location!r}: a cluster "
        "has only database 0.",
        "Drop the database from the LOCATION (redis://host:port); give the app's keys a "
        "KEY_PREFIX of their own instead.",
    ),
    "CLUSTER_PREFIX_BRACES": Check(
        "resilience_crm.E071",
        "The Redis Cluster cache {alias!r} has a KEY_PREFIX with a brace ({prefix!r}): it "
        "takes the hash tag of every key, so the app's scripts would get keys of several "
        "slots (CROSSSLOT) or every key would sit on one master.",
        "Use a KEY_PREFIX without '{{' and '}}'.",
    ),
    "CLUSTER_RETRIES_INVALID": Check(
        "resilience_crm.E072",
        "The Redis Cluster cache {alias!r} has {problem}.",
        'Set OPTIONS["CLUSTER_RETRIES"] (a whole number, 0 by default) and no retry in '
        "REDIS_CLIENT_KWARGS.",
    ),
    "CLUSTER_CONNECTED_PLAINLY": Check(
        "resilience_crm.E073",
        "The cache {alias!r} that RESILIENCE_CRM[\"CACHE_ALIAS\"] names is a Redis Cluster "
        "node (cluster-enabled yes) reached with {client!r}: every key another master holds "
        "answers MOVED, and the app treats Redis as down.",
        'Set OPTIONS["CLIENT_CLASS"] to "resilience_crm.redis_cluster.RedisClusterClient" '
        "(docs/scaling.md, Redis Cluster).",
    ),
    "CLUSTER_RETRIES": Check(
        "resilience_crm.W070",
        "The Redis Cluster cache {alias!r} retries commands after a lost reply "
        "(CLUSTER_RETRIES {retries}): a command that ran is sent again, so the metrics "
        "hashes, the read cache's versions and the spool can count it twice (the app's "
        "scripts are never retried).",
        'Set OPTIONS["CLUSTER_RETRIES"] to 0 (the default).',
        warning=True,
    ),
    "CLUSTER_REPLICA_READS": Check(
        "resilience_crm.W071",
        "The Redis Cluster cache {alias!r} reads from replicas ({option}): a replica lags its "
        "master, so a read can miss a removal, a version bump or a lease that was just "
        "written (a revoked token's entry, a second refresh of a key).",
        "Read from the masters: drop {option} from REDIS_CLIENT_KWARGS.",
        warning=True,
    ),
    "CLUSTER_KEY_FUNCTION": Check(
        "resilience_crm.W072",
        "The Redis Cluster cache {alias!r} has a KEY_FUNCTION of its own: the app cannot "
        "tell whether it keeps the hash tags ('{{...}}') of the keys it is given, which put "
        "each script's keys in one slot.",
        "Keep the key as given inside the result (as Django's default does); silence this "
        "warning once it does.",
        warning=True,
    ),
})


def cluster_cache() -> tuple[str, dict[str, Any]] | None:
    """``(alias, CACHES entry)`` of ``CACHE_ALIAS`` when it uses the cluster client."""
    alias = redis_cache_alias()
    if alias is None:
        return None
    cache: dict[str, Any] = django_settings.CACHES[alias]
    if not uses_cluster_client(cache):
        return None
    return alias, cache


def uses_cluster_client(cache: dict[str, Any]) -> bool:
    options = cache.get("OPTIONS")
    path = options.get("CLIENT_CLASS") if isinstance(options, dict) else None
    if not isinstance(path, str):
        return False
    cls, _ = subclass_at(path, redis_cluster.RedisClusterClient)
    return cls is not None


def locations(cache: dict[str, Any]) -> list[str]:
    location = cache.get("LOCATION", "")
    if isinstance(location, str):
        return [part for part in location.split(",") if part]
    return [str(part) for part in location]


@settings_check(Tags.caches)
def check_cluster_cache(_config: dict[str, Any]) -> list[CheckMessage]:
    """The cluster client's settings: database 0, a KEY_PREFIX without braces, no retries,
    no reads from replicas, and the default KEY_FUNCTION."""
    found = cluster_cache()
    if found is None:
        return []
    alias, cache = found
    messages: list[CheckMessage] = []
    for location in locations(cache):
        db = redis_cluster.database(location)
        if db not in ("", "0"):
            messages.append(CHECKS["CLUSTER_DATABASE"](alias=alias, db=db, location=location))
    prefix = str(cache.get("KEY_PREFIX", ""))
    if "{" in prefix or "}" in prefix:
        messages.append(CHECKS["CLUSTER_PREFIX_BRACES"](alias=alias, prefix=prefix))
    if cache.get("KEY_FUNCTION"):
        messages.append(CHECKS["CLUSTER_KEY_FUNCTION"](alias=alias))
    options = cache.get("OPTIONS") or {}
    kwargs = options.get("REDIS_CLIENT_KWARGS") or {}
    retries = redis_cluster.retry_count(options)
    if retries:
        messages.append(CHECKS["CLUSTER_RETRIES"](alias=alias, retries=retries))
    messages += [CHECKS["CLUSTER_RETRIES_INVALID"](alias=alias, problem=problem)
                 for problem in redis_cluster.retry_problems(options)]
    messages += [CHECKS["CLUSTER_REPLICA_READS"](alias=alias, option=key)
                 for key in REPLICA_READS if kwargs.get(key)]
    return messages


@register(TAG, Tags.caches, deploy=True)
def check_cluster_client(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Deployment check: a cluster node reached through a plain django-redis client, asked of
    the server (``CONFIG GET cluster-enabled``)."""
    alias = redis_cache_alias()
    if alias is None:
        return []
    cache: dict[str, Any] = django_settings.CACHES[alias]
    if uses_cluster_client(cache):
        return []
    server = probe.redis_config()
    if server is None or server.get("cluster-enabled") != "yes":
        return []
    client = (cache.get("OPTIONS") or {}).get("CLIENT_CLASS", "django_redis.client.DefaultClient")
    return [CHECKS["CLUSTER_CONNECTED_PLAINLY"](alias=alias, client=client)]
