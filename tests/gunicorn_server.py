"""A real multi-process server for tests: gunicorn on an ephemeral loopback port, with the
listening socket made here and handed over, so there is no port to guess or race for."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def gunicorn(settings_module: str, *, workers: int = 4, threads: int = 8,
             env: dict[str, str] | None = None, ready_within: float = 60.0) -> Iterator[int]:
    """Run ``crm_demo.wsgi`` under gunicorn with ``settings_module``; yields the port."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=2048)
    port = int(listener.getsockname()[1])
    fd = listener.fileno()
    environment = {**os.environ, **(env or {}), "DJANGO_SETTINGS_MODULE": settings_module,
                   "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--workers", str(workers), "--threads", str(threads),
         "--worker-class", "gthread", "--bind", f"fd://{fd}", "--graceful-timeout", "5",
         "--log-level", "warning", "crm_demo.wsgi:application"],
        cwd=ROOT, env=environment, pass_fds=[fd], start_new_session=True,
    )
    listener.close()
    try:
        _wait_until_ready(port, process, ready_within)
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


def _wait_until_ready(port: int, process: subprocess.Popen[bytes], within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {process.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/health-probe-that-does-not-exist/")
            connection.getresponse().read()
            connection.close()
            return
        except OSError:
            time.sleep(0.1)  # polling for start-up, with a deadline
    raise RuntimeError(f"gunicorn did not answer within {within}s")


def get(port: int, path: str, headers: dict[str, str], method: str = "GET") -> int:
    """One request on a fresh connection; its status."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(method, path, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()
