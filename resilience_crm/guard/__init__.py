"""The query guard: every statement on a guarded database alias, from any code, passes a
circuit (``RESILIENCE_CRM["PROTECT_QUERIES"] = {"default": "crm.db"}``).

Views, the admin, DRF's token and permission lookups and third-party apps then fail fast while
the database is known to be down (no connect, no socket: a
:class:`~resilience_crm.exceptions.DatabaseCircuitOpen` at once), instead of each waiting out
the connect or pool timeout. Open ``gate.py`` first, then:

- ``gate.py``: one statement or one connect through its alias's circuit: the permit, the
  outcome (dependency failures counted, the caller's own errors not, slow ones as slow);
- ``resilience_crm.aside`` (outside this folder): the context in which the guard stands
  aside (``protected``, the guard's own breaker steps, the database breaker store, manual
  changes);
- ``connection.py``: the database wrapper mixin that installs the guard on every connection
  and guards connecting, and ``QUERY_TIMEOUT``;
- ``backends/``: the database backends to name in ``ENGINE``
  (``resilience_crm.guard.backends.postgresql``, ``...sqlite3``);
- ``checks.py``: the system checks on ``PROTECT_QUERIES`` and ``QUERY_TIMEOUT``.

Arrows: guard -> breakers; the guard imports no other feature. ``resilience_crm.aside`` is
a top-level module that imports nothing, so the provider and the breakers tell the guard to
stand aside without an arrow to it.
"""
