"""Circuit breakers shared by every worker process.

``machine.py`` is the pure state machine (trip, half-open permits, backoff; clock injected),
``stores/`` apply one step of it atomically (Redis, the database, memory, and the failover
wrapper that falls back to a worker's own breaker), ``breaker.py`` is what callers hold,
``registry.py`` makes one per circuit and process, ``control.py`` is manual control (reset,
force) and ``events.py`` the audit trail; ``checks.py`` holds the system checks on their
settings. Start with ``machine.py``. Breakers import no other feature.
"""
