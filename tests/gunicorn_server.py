"""A real multi-process server for tests: gunicorn on an ephemeral loopback port, with the
listening socket made here and handed over, so there is no port to guess or race for."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from crm_demo.crm import client
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
#: Asked for until a worker answers: 200 where the URLconf mounts the app's endpoints, 404
#: where a test URLconf leaves them out; either way a worker is serving.
LIVE = "/resilience/health/live"


@contextlib.contextmanager
def gunicorn(settings_module: str, **options: Any) -> Iterator[int]:
    """:func:`gunicorn_master`, yielding the port alone."""
    with gunicorn_master(settings_module, **options) as (port, _):
        yield port


@contextlib.contextmanager
def gunicorn_master(settings_module: str, *, workers: int = 4, threads: int = 8,
                    env: dict[str, str] | None = None, ready_within: float = 60.0,
                    dual_stack: bool = False) -> Iterator[tuple[int, int]]:
    """Run ``crm_demo.wsgi`` under gunicorn with ``settings_module``; yields the port and
    the master's process id (:func:`worker_pids` lists its workers). With
    ``threads=1`` the workers are sync ones, otherwise gthread. ``dual_stack`` listens on
    ``[::]`` for IPv6 and IPv4 alike, as ``--bind [::]:port`` does: IPv4 clients arrive as
    ``::ffff:a.b.c.d``. What gunicorn and the app log is kept: in the failure if it does not
    start, and on stderr once it stops (pytest shows that with a failing test)."""
    if dual_stack:
        listener = socket.create_server(("::", 0), family=socket.AF_INET6, backlog=2048,
                                        dualstack_ipv6=True)
    else:
        listener = socket.create_server(("127.0.0.1", 0), backlog=2048)
    port = int(listener.getsockname()[1])
    fd = listener.fileno()
    environment = {**os.environ, **(env or {}), "DJANGO_SETTINGS_MODULE": settings_module,
                   "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--workers", str(workers),
             "--threads", str(threads), "--worker-class", "gthread" if threads > 1 else "sync",
             "--bind", f"fd://{fd}", "--graceful-timeout", "5", "--timeout", "60",
             "--log-level", "warning", "crm_demo.wsgi:application"],
            cwd=ROOT, env=environment, pass_fds=[fd], start_new_session=True,
            stdout=log, stderr=subprocess.STDOUT,
        )
        listener.close()
        try:
            _wait_until_ready(port, process, log, ready_within)
            yield port, process.pid
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
            sys.stderr.write(_output(log))


def _wait_until_ready(port: int, process: subprocess.Popen[bytes], log: IO[bytes],
                      within: float) -> None:
    def answering() -> bool:
        assert process.poll() is None, f"gunicorn exited with {process.returncode}"
        try:
            return client.request(port, "GET", LIVE, timeout=5).status in (200, 404)
        except OSError:
            return False

    try:
        wait_until(answering, "gunicorn answering", timeout=within, interval=0.1)
    except AssertionError as err:
        raise AssertionError(f"{err}; it logged:\n{_output(log)}") from None


def _output(log: IO[bytes]) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")


def get(port: int, path: str, headers: dict[str, str], method: str = "GET") -> int:
    """One request on a connection of its own; its status."""
    return client.request(port, method, path, headers=headers, timeout=60).status


def worker_pids(master: int) -> list[int]:
    """The process ids of gunicorn's workers now: the children of ``master`` (from /proc)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[1]) == master:  # fields: state, ppid, ...
            pids.append(int(stat.parent.name))
    return sorted(pids)
