"""Deprecated alias of :mod:`resilience_crm.ratelimit.stores.memory`."""

import sys

from resilience_crm.stores import alias

sys.modules[__name__] = alias(__name__, "resilience_crm.ratelimit.stores.memory")
