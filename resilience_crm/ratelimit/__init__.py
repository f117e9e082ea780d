"""Rate limiting per tier, operation class and endpoint.

``gcra.py`` is the pure algorithm (every limit of a request decided together), ``rates.py``
parses ``"100/min"``, ``principals.py`` says who a request is from, ``tiers.py`` which limits
apply to them, ``limiter.py`` decides one request through a store (``stores/``: Redis, PostgreSQL,
memory), ``standing.py`` tells operators where a principal stands against each policy
(``resilience_limits``), and ``auth_failures.py`` refuses an address that spent its failed
logins; ``checks.py`` holds
the system checks on their settings. The DRF throttle and
the middleware users name in their settings are ``resilience_crm.throttling`` and
``resilience_crm.middleware``. Start with ``limiter.py``. Arrows: ratelimit -> breakers only for
adaptive limits.
"""
