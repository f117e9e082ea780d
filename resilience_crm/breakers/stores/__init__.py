"""Stores apply one breaker step atomically; see
:class:`resilience_crm.breakers.stores.base.BaseStore`."""
