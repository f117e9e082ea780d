"""A django-redis serializer for the cache the app keeps its fallbacks and shared state in:
JSON, signed with the project's ``SECRET_KEY``.

django-redis pickles by default, and unpickling runs whatever code the stored bytes name:
anyone who can write to Redis could run code in every worker, or plant a cached value such
as a token's user marked superuser. With this serializer a value is JSON text followed by
an HMAC of it (``django.core.signing``, its own salt). Reading never runs code, and a value
the project did not sign (or signed with a key no longer in ``SECRET_KEY`` /
``SECRET_KEY_FALLBACKS``) reads as a miss, with a warning in the log.

JSON keeps dicts with string keys, lists, strings, numbers, booleans and ``None``; what it
cannot keep comes back plainer (a tuple as a list; a datetime, date, ``Decimal`` or ``UUID``
as its string, through ``DjangoJSONEncoder``), and a value it cannot encode at all (a model
instance) is not cached. Whole numbers are stored as Redis integers by django-redis, before
any serializer, so ``incr`` keeps working.

Use it on the cache ``RESILIENCE_CRM["CACHE_ALIAS"]`` names::

    "OPTIONS": {"SERIALIZER": "resilience_crm.cache_serializer.SignedJSONSerializer"}
"""

from __future__ import annotations

import json
import logging
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.core.signing import BadSignature, Signer
from django_redis.serializers.base import BaseSerializer

logger = logging.getLogger("resilience_crm.cache")

#: The signing salt: a signature made for anything else never passes here.
SALT = "resilience_crm.cache"


class SignedJSONSerializer(BaseSerializer):
    def dumps(self, value: Any) -> bytes:
        text = json.dumps(value, cls=DjangoJSONEncoder, separators=(",", ":"))
        return Signer(salt=SALT).sign(text).encode()

    def loads(self, value: bytes) -> Any:
        """The value, or ``None`` (a miss) when it is not one this project signed."""
        try:
            text = Signer(salt=SALT).unsign(value.decode())
        except (BadSignature, UnicodeDecodeError):
            logger.warning("Cache: an entry without a valid signature was ignored; something "
                           "other than this project wrote to the cache.")
            return None
        return json.loads(text)
