"""A real PostgreSQL primary and its streaming replica, built from the machine's own binaries
(``initdb``, ``pg_basebackup``, ``pg_ctl``) on free ports in a temporary folder: for the
read-replica tests, once per session. Run as the ``postgres`` user when the tests run as
root (PostgreSQL refuses to)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

#: Seconds to wait for a server to accept connections, on a loaded machine.
START_TIMEOUT = 60


@dataclass(frozen=True)
class Pair:
    primary_port: int
    replica_port: int

    def settings(self, port: int) -> dict:
        """A ``DATABASES`` entry for the server on ``port`` (database ``postgres``)."""
        return {"ENGINE": "django.db.backends.postgresql", "NAME": "postgres",
                "USER": "postgres", "PASSWORD": "", "HOST": "127.0.0.1", "PORT": str(port),
                "OPTIONS": {"connect_timeout": 2}, "CONN_MAX_AGE": 0,
                "CONN_HEALTH_CHECKS": False, "ATOMIC_REQUESTS": False, "AUTOCOMMIT": True,
                "TIME_ZONE": None, "TEST": {}}


def missing() -> str | None:
    """Why the pair cannot be built here, or ``None``."""
    for tool in ("initdb", "pg_ctl", "pg_basebackup"):
        if shutil.which(tool) is None:
            return f"{tool} is not on PATH"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser to become postgres"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Servers:
    """Start with :meth:`start`, stop with :meth:`stop` (every server, its folder removed)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="rcrm-replica-"))
        self.started: list[Path] = []

    def run(self, *command: str) -> None:
        if os.geteuid() == 0:
            command = ("runuser", "-u", "postgres", "--", *command)
        subprocess.run(command, check=True, capture_output=True, timeout=START_TIMEOUT)

    def start(self) -> Pair:
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        primary, replica = self.root / "primary", self.root / "replica"
        ports = Pair(free_port(), free_port())
        self.run("initdb", "-D", str(primary), "-A", "trust", "-U", "postgres",
                 "--no-sync", "-E", "UTF8")
        self._serve(primary, ports.primary_port)
        self.run("pg_basebackup", "-h", "127.0.0.1", "-p", str(ports.primary_port),
                 "-U", "postgres", "-D", str(replica), "-R", "-X", "stream", "--no-sync")
        self._serve(replica, ports.replica_port)
        return ports

    def _serve(self, data: Path, port: int) -> None:
        options = (f"-p {port} -c listen_addresses=127.0.0.1 -k {self.root}"
                   " -c fsync=off -c max_connections=40 -c hot_standby_feedback=on")
        self.run("pg_ctl", "-D", str(data), "-o", options, "-l", str(data) + ".log",
                 "-w", "-t", str(START_TIMEOUT), "start")
        self.started.append(data)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"PostgreSQL on port {port} did not start")

    def stop(self) -> None:
        for data in reversed(self.started):
            with contextlib.suppress(subprocess.CalledProcessError):
                self.run("pg_ctl", "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)
