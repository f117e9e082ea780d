"""Deprecated alias of :mod:`resilience_crm.breakers.stores.database`."""

import sys

from resilience_crm.stores import alias

sys.modules[__name__] = alias(__name__, "resilience_crm.breakers.stores.database")
