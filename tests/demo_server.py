"""The demo under gunicorn, several worker processes, on an ephemeral loopback port: the
test binds the socket and hands gunicorn its file descriptor, so the port is known at once
and nothing else can take it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from crm_demo.crm import client
from crm_demo.crm.client import Reply

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = Path(sys.executable).with_name("gunicorn")


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

    def request(self, method: str, path: str, **kwargs: Any) -> Reply:
        return client.request(self.port, method, path, **kwargs)

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
