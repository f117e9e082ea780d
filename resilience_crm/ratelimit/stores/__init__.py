"""Rate-limit stores: one atomic GCRA decision per request; see
:class:`resilience_crm.ratelimit.stores.base.BaseLimiterStore`. ``redis.py`` runs
``gcra.lua``, ``database.py`` the PL/pgSQL function of migration 0007, ``memory.py`` the
pure ``gcra.evaluate`` in this process."""
