"""The workers' resilience settings in the chaos run, and the targets they imply (no Django
imports: ``bench/chaos.py`` needs them before Django is set up)."""

from __future__ import annotations

from typing import Any

#: The workers' breakers: a short reset_timeout and no backoff, so recovery is quick and
#: its target (reset_timeout + RECOVERY_MARGIN) plain; a half-open trial's permit outlives
#: its call_timeout by a second, so a worker killed during its trial holds up recovery for
#: that long (the default permit_lease, 30 s, would hold it up for 30 s).
BREAKER = {"failure_threshold": 3, "reset_timeout": 3, "max_reset_timeout": 3,
           "call_timeout": 2.0, "slow_call_duration": 2.0, "permit_lease": 3.0}
#: A token request's call checks a password (PBKDF2, about a second of a loaded core): its
#: deadline must cover that, or logins time out and open crm.auth with the database fine.
CIRCUITS = {"crm.auth": {"call_timeout": 5.0, "slow_call_duration": 5.0, "permit_lease": 6.0}}
#: A call's budget: call_timeout plus the 100 ms DESIGN.md invariant 13 allows.
BUDGET = BREAKER["call_timeout"] + 0.1
#: Recovery is due within reset_timeout (its backoff cap) and this many seconds.
RECOVERY_MARGIN = 5.0
RECOVERY_TARGET = BREAKER["max_reset_timeout"] + RECOVERY_MARGIN


def resilience(cache_alias: str = "default") -> dict[str, Any]:
    """The ``RESILIENCE_CRM`` of the workers (and, with its cache alias, of the runner)."""
    return {"STORE": "redis", "CACHE_ALIAS": cache_alias, "FALLBACK_TTL": 1,
            "FALLBACK_STALE_TTL": 3600, "CIRCUIT_DEFAULTS": BREAKER, "CIRCUITS": CIRCUITS}
