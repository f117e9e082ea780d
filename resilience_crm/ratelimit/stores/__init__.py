"""Rate-limit stores: one atomic GCRA decision per request; see
:class:`resilience_crm.ratelimit.stores.base.BaseLimiterStore`."""
