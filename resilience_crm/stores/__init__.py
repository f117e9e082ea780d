"""Stores apply one breaker step atomically; see :class:`resilience_crm.stores.base.BaseStore`."""
