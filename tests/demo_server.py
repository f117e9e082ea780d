"""The demo under gunicorn, several worker processes, on an ephemeral loopback port: the
test binds the socket and hands gunicorn its file descriptor, so the port is known at once
and nothing else can take it."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = Path(sys.executable).with_name("gunicorn")


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any
    seconds: float


class Server:
    def __init__(self, env: dict[str, str], workers: int = 3) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        fd = self.sock.fileno()
        self.log = tempfile.TemporaryFile()  # noqa: SIM115  (closed in stop)
        self.process = subprocess.Popen(
            [str(GUNICORN), "crm_demo.wsgi:application", "--workers", str(workers),
             "--bind", f"fd://{fd}", "--graceful-timeout", "3", "--timeout", "60",
             "--log-level", "warning"],
            pass_fds=[fd], cwd=ROOT, env={**os.environ, **env},
            stdout=self.log, stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        """What gunicorn and the app logged (the psycopg pool is noisy during outages)."""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def request(self, method: str, path: str, *, token: str = "", body: Any = None,
                headers: dict[str, str] | None = None, timeout: float = 30) -> Reply:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        sent = {"Content-Type": "application/json", **(headers or {})}
        if token:
            sent["Authorization"] = f"Token {token}"
        started = time.monotonic()
        try:
            connection.request(method, path, json.dumps(body) if body is not None else None,
                               sent)
            response = connection.getresponse()
            raw = response.read()
            seconds = time.monotonic() - started
        finally:
            connection.close()
        with contextlib.suppress(ValueError):
            raw = json.loads(raw) if raw else None
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, raw,
                     seconds)

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.request("GET", path, **kwargs)

    def wait_ready(self, limit: float = 60) -> None:
        deadline = time.monotonic() + limit
        while True:
            assert self.process.poll() is None, f"gunicorn exited:\n{self.output()}"
            try:
                if self.get("/resilience/health/live", timeout=5).status == 200:
                    return
            except OSError:
                pass
            assert time.monotonic() < deadline, f"gunicorn did not answer within {limit}s"
            time.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.sock.close()
        self.log.close()
