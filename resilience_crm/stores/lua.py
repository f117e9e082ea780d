"""Lua scripts run by EVALSHA."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError


class LuaScript:
    """One Lua script, run by its SHA1 and loaded again whenever Redis has forgotten it (a
    restart, a failover or ``SCRIPT FLUSH``).

    redis-py's ``Script`` does the same, but each of its calls first asks whether the client
    is a ``Pipeline``, and since redis-py 8 that ``isinstance`` goes through ``typing``'s
    protocol check: 10 to 15 µs of CPU per call, which is more than the rest of a rate-limit
    decision's Python (docs/benchmarks.md).
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    def __call__(self, client: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            client.script_load(self.source)
            return client.evalsha(self.sha, len(keys), *keys, *args)
