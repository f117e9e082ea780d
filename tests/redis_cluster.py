"""A real Redis Cluster of three masters, each with a replica, built from the machine's own
``redis-server`` and ``redis-cli --cluster create`` on free ports in a temporary folder: for
the Redis Cluster tests, once per session (a few seconds)."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

#: Seconds to wait for the servers and the cluster's agreement, on a loaded machine.
START_TIMEOUT = 60
MASTERS = 3
#: Milliseconds a master may be silent before its replica takes over (the failover test
#: kills one); Redis's default of 15 s would keep its slots down that long.
NODE_TIMEOUT_MS = 1000


def missing() -> str | None:
    """Why a cluster cannot be built here, or ``None``."""
    for tool in ("redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            return f"{tool} is not on PATH"
    return None


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """``count`` free ports whose cluster bus ports (port + 10000) are free too."""
    found: list[int] = []
    while len(found) < count:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + 10000 < 65536 and port not in found and _free(port + 10000):
            found.append(port)
    return found


@dataclass
class Cluster:
    """The running cluster: its nodes' ports and processes (masters first, as created)."""

    root: Path
    ports: list[int]
    processes: dict[int, subprocess.Popen] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """A cache ``LOCATION`` naming every node as a startup node."""
        return ",".join(f"redis://127.0.0.1:{port}" for port in self.ports)

    def cache(self, **options: object) -> dict:
        """A ``CACHES`` entry for the cluster through :mod:`resilience_crm.redis_cluster`."""
        return {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": self.url,
                "OPTIONS": {"CLIENT_CLASS": "resilience_crm.redis_cluster.RedisClusterClient",
                            "SOCKET_CONNECT_TIMEOUT": 1, "SOCKET_TIMEOUT": 1, **options}}

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=5)

    def master_of(self, key: str) -> int:
        """The port of the master that holds ``key``'s slot now."""
        slot = int(self.node(self._alive()).cluster("keyslot", key))
        for start, end, master, *_ in self.node(self._alive()).cluster("slots"):
            if start <= slot <= end:
                return int(master[1])
        raise LookupError(slot)

    def spread(self, make_key: Callable[[str], str], count: int = MASTERS) -> list[str]:
        """Names whose keys (``make_key(name)``) lie on ``count`` different masters."""
        found: dict[int, str] = {}
        while len(found) < count:
            name = uuid.uuid4().hex[:8]
            found.setdefault(self.master_of(make_key(name)), name)
        return list(found.values())

    def move_slot(self, key: str, to: int) -> None:
        """Hand ``key``'s slot (empty of keys) to the master on ``to``, as a resharding does:
        the old master answers ``MOVED`` for it from then on."""
        node = self.node(self._alive())
        slot = int(node.cluster("keyslot", key))
        source, target = self.master_of(key), to
        ids = {port: self.node(port).cluster("myid") for port in (source, target)}
        ids = {port: value.decode() if isinstance(value, bytes) else value
               for port, value in ids.items()}
        self.node(target).execute_command("CLUSTER SETSLOT", slot, "IMPORTING", ids[source])
        self.node(source).execute_command("CLUSTER SETSLOT", slot, "MIGRATING", ids[target])
        for port in (target, source):
            self.node(port).execute_command("CLUSTER SETSLOT", slot, "NODE", ids[target])
        _wait(lambda: self.master_of(key) == target, f"slot {slot} to move to {target}")

    def _alive(self) -> int:
        return next(port for port, process in self.processes.items() if process.poll() is None)

    def kill(self, port: int) -> None:
        """Kill the node on ``port`` at once (SIGKILL: no goodbye to the cluster)."""
        process = self.processes[port]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def restart(self, port: int) -> None:
        """Start the node on ``port`` again from its nodes.conf (it rejoins as a replica)."""
        self.processes[port] = self._serve(port)
        _wait(lambda: self.node(port).ping(), f"redis-server on {port}")

    def healthy(self) -> bool:
        """Every running node says the cluster is ok and sees every slot served."""
        try:
            for port, process in self.processes.items():
                if process.poll() is not None:
                    continue
                info = self.node(port).cluster("info")
                if info.get("cluster_state") != "ok" or int(info["cluster_slots_ok"]) != 16384:
                    return False
        except redis.RedisError:
            return False
        return True

    def wait_healthy(self) -> None:
        _wait(self.healthy, "the cluster to agree on every slot")

    def wait_failover(self, port: int) -> None:
        """Until the killed master on ``port`` serves no slot: its replica was promoted."""
        _wait(lambda: port not in self.masters() and self.healthy(),
              f"a replica to take over from {port}")

    def flush(self) -> None:
        for port in self.masters():
            self.node(port).flushall()

    def masters(self) -> list[int]:
        # A master that holds several slot ranges is listed once.
        return sorted({int(master[1]) for _, _, master, *_ in
                       self.node(self._alive()).cluster("slots")})

    def _serve(self, port: int) -> subprocess.Popen:
        folder = self.root / str(port)
        folder.mkdir(exist_ok=True)
        return subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
             "--cluster-require-full-coverage", "no", "--save", "", "--appendonly",
             "no", "--cluster-replica-validity-factor", "0", "--logfile", "redis.log"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        for process in self.processes.values():
            with contextlib.suppress(OSError):
                process.terminate()
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
                continue
            process.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def _wait(condition, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        with contextlib.suppress(redis.RedisError, OSError):
            if condition():
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {START_TIMEOUT}s for {what}")
        time.sleep(0.05)


def start() -> Cluster:
    """Three masters and three replicas, created and agreed; :meth:`Cluster.stop` ends them."""
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="rcrm-cluster-")), free_ports(2 * MASTERS))
    try:
        for port in cluster.ports:
            cluster.processes[port] = cluster._serve(port)
        for port in cluster.ports:
            _wait(lambda port=port: cluster.node(port).ping(), f"redis-server on {port}")
        subprocess.run(
            ["redis-cli", "--cluster", "create",
             *(f"127.0.0.1:{port}" for port in cluster.ports),
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, capture_output=True, timeout=START_TIMEOUT)
        cluster.wait_healthy()
        # Every replica attached to its master, so a failover has someone to promote.
        _wait(lambda: sum(1 for port in cluster.ports
                          if cluster.node(port).info("replication").get("role") == "slave"
                          and cluster.node(port).info("replication").get(
                              "master_link_status") == "up") == MASTERS,
              "the replicas to sync")
    except BaseException:
        cluster.stop()
        raise
    return cluster
