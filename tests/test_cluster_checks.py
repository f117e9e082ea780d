"""The checks on a Redis Cluster behind ``CACHE_ALIAS`` (``resilience_crm.cluster_checks``):
each mistake they can tell, and the one they ask the server about."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.cache import caches
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured

from resilience_crm import checks
from resilience_crm.provider import probe

CLIENT = "resilience_crm.redis_cluster.RedisClusterClient"


def cluster_ids(settings: Any, *, deploy: bool = False, location: str = "redis://127.0.0.1:1",
                **cache: Any) -> list[str]:
    options = {"CLIENT_CLASS": CLIENT, **cache.pop("OPTIONS", {})}
    settings.CACHES = {**settings.CACHES, "cl": {
        "BACKEND": "django_redis.cache.RedisCache", "LOCATION": location,
        "OPTIONS": options, **cache}}
    settings.RESILIENCE_CRM = {"CACHE_ALIAS": "cl"}
    return ours(run_checks(tags=[checks.TAG], include_deployment_checks=deploy))


def ours(messages: list[Any]) -> list[str]:
    """The ids of the cluster checks (E070-E079, W070-W079) among ``messages``."""
    return [m.id for m in messages if m.id and m.id.split(".")[-1][1:3] == "07"]


def test_a_well_configured_cluster_cache_passes(settings) -> None:
    assert cluster_ids(settings, KEY_PREFIX="app",
                       location="redis://10.0.0.1:7000,redis://10.0.0.2:7000/0") == []


def test_e070_a_cluster_has_only_database_zero(settings) -> None:
    assert cluster_ids(settings, location="redis://127.0.0.1:7000/3") == [
        checks.Codes.CLUSTER_DATABASE]
    with pytest.raises(ImproperlyConfigured, match="only database 0"):
        caches["cl"].client.get_client()


@pytest.mark.parametrize("prefix", ["{app}", "app{", "a}"])
def test_e071_a_key_prefix_with_a_brace_takes_every_keys_hash_tag(settings, prefix) -> None:
    assert cluster_ids(settings, KEY_PREFIX=prefix) == [checks.Codes.CLUSTER_PREFIX_BRACES]


@pytest.mark.parametrize("options", [{"CLUSTER_RETRIES": -1}, {"CLUSTER_RETRIES": "3"},
                                     {"REDIS_CLIENT_KWARGS": {"cluster_error_retry_attempts": 2}}])
def test_e072_retries_are_a_whole_number_given_once(settings, options) -> None:
    assert cluster_ids(settings, OPTIONS=options) == [checks.Codes.CLUSTER_RETRIES_INVALID]
    with pytest.raises(ImproperlyConfigured):
        caches["cl"].client.get_client()


def test_w070_retries_count_twice(settings) -> None:
    assert cluster_ids(settings, OPTIONS={"CLUSTER_RETRIES": 2}) == [
        checks.Codes.CLUSTER_RETRIES]


def test_w071_reads_from_replicas_lag(settings) -> None:
    assert cluster_ids(settings, OPTIONS={"REDIS_CLIENT_KWARGS": {
        "read_from_replicas": True}}) == [checks.Codes.CLUSTER_REPLICA_READS]


def test_w072_a_key_function_of_its_own(settings) -> None:
    assert cluster_ids(settings, KEY_FUNCTION="tests.test_cluster_checks.cluster_ids") == [
        checks.Codes.CLUSTER_KEY_FUNCTION]


def test_the_cluster_checks_leave_other_caches_alone(settings) -> None:
    settings.CACHES = {**settings.CACHES, "plain": {
        "BACKEND": "django_redis.cache.RedisCache", "LOCATION": "redis://127.0.0.1:1/3",
        "KEY_PREFIX": "{x}"}}
    settings.RESILIENCE_CRM = {"CACHE_ALIAS": "plain"}
    assert ours(run_checks(tags=[checks.TAG])) == []


@pytest.mark.redis
@pytest.mark.slow
def test_e073_a_cluster_node_reached_without_the_cluster_client(settings,
                                                                redis_cluster_servers) -> None:
    node = f"redis://127.0.0.1:{redis_cluster_servers.ports[0]}"
    probe.forget_redis_config()
    try:
        assert cluster_ids(settings, deploy=True, location=node,
                           OPTIONS={"CLIENT_CLASS": "django_redis.client.DefaultClient"}) == [
            checks.Codes.CLUSTER_CONNECTED_PLAINLY]
        probe.forget_redis_config()
        assert cluster_ids(settings, deploy=True, location=node) == []
    finally:
        probe.forget_redis_config()


@pytest.mark.redis
def test_e073_is_quiet_on_a_plain_redis(settings, redis_url) -> None:
    probe.forget_redis_config()
    try:
        assert cluster_ids(settings, deploy=True, location=redis_url, OPTIONS={
            "CLIENT_CLASS": "django_redis.client.DefaultClient"}) == []
    finally:
        probe.forget_redis_config()
