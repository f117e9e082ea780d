"""The demo under gunicorn (:func:`tests.gunicorn_server.gunicorn`), sync worker processes
on the demo's own settings (``tests.server_settings``), driven with the demo's JSON client."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from crm_demo.crm import client
from crm_demo.crm.client import Reply
from tests.gunicorn_server import gunicorn_master

#: The workers' settings module (also what a ``manage.py`` beside them needs).
SETTINGS = "tests.server_settings"


@dataclass(frozen=True)
class Server:
    port: int
    master: int = 0  # gunicorn's master process (tests.gunicorn_server.worker_pids)

    def request(self, method: str, path: str, **kwargs: Any) -> Reply:
        return client.request(self.port, method, path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.request("GET", path, **kwargs)


@contextlib.contextmanager
def serving(env: dict[str, str], workers: int = 3, dual_stack: bool = False) -> Iterator[Server]:
    """The demo served with ``env`` (``DATABASE_URL``, ``REDIS_URL``, ...), answering;
    on ``[::]`` with ``dual_stack``."""
    with gunicorn_master(SETTINGS, workers=workers, threads=1, env=env,
                         dual_stack=dual_stack) as (port, master):
        yield Server(port, master)
