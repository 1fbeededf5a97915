"""A private Redis Cluster (three primaries) on free loopback ports, for the tests.

Started from the ``redis-server`` binary alone: each node runs with
``--cluster-enabled yes``, takes a third of the 16,384 slots (``CLUSTER
ADDSLOTSRANGE``) and meets the others (``CLUSTER MEET``); ready when every node says
``cluster_state:ok``. The same checks that run on a single Redis then run on it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from chat_server.redis_client import RedisClient, discover_cluster
from tests.server import free_port
from tests.services import missing

SLOTS = 16384


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(100):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisClusterNodes:
    """Three cluster nodes; ``url`` names the first, as ``REDIS_URL`` would."""

    def __init__(self, workdir: Path, size: int = 3) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            missing("redis-server", "the binary is not on PATH")
        self.binary = str(binary)
        self.workdir = workdir
        self.ports = [_free_cluster_port() for _ in range(size)]
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}"

    def start(self) -> None:
        """Start the nodes and form the cluster (slots shared out, nodes met)."""
        self._launch()
        clients = [self._client(port) for port in self.ports]
        try:
            for client in clients:
                self._wait_for_ping(client)
            share = SLOTS // len(self.ports)
            for i, client in enumerate(clients):
                last = SLOTS - 1 if i == len(clients) - 1 else (i + 1) * share - 1
                client.execute_command("CLUSTER ADDSLOTSRANGE", i * share, last)
            for port in self.ports[1:]:
                clients[0].execute_command("CLUSTER MEET", "127.0.0.1", port)
        finally:
            for client in clients:
                client.close()
        self._wait_until_ok()

    def restart(self) -> None:
        """Start stopped nodes again: they rejoin from their ``nodes.conf``, empty."""
        self._launch()
        self._wait_until_ok()

    def _launch(self) -> None:
        for port in self.ports:
            node_dir = self.workdir / f"node-{port}"
            node_dir.mkdir(parents=True, exist_ok=True)
            self.procs.append(
                subprocess.Popen(
                    [
                        self.binary,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(node_dir / "nodes.conf"),
                        "--cluster-node-timeout",
                        "2000",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(node_dir),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )

    def _wait_until_ok(self) -> None:
        clients = [self._client(port) for port in self.ports]
        try:
            for client in clients:
                self._wait_for_ping(client)
            deadline = time.monotonic() + 20
            while not all(self._ok(client, len(clients)) for client in clients):
                if time.monotonic() > deadline:
                    raise TimeoutError("the Redis Cluster did not reach cluster_state:ok")
                time.sleep(0.1)
        finally:
            for client in clients:
                client.close()

    def flush(self) -> None:
        """Empty every primary (a test's keys may sit on any of them)."""
        for port in self.ports:
            client = self._client(port)
            try:
                client.flushall()
            finally:
                client.close()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)
        self.procs.clear()

    @staticmethod
    def _client(port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2)

    @staticmethod
    def _wait_for_ping(client: redis.Redis) -> None:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @staticmethod
    def _ok(client: redis.Redis, size: int) -> bool:
        info = client.execute_command("CLUSTER INFO")  # parsed into a dict by redis-py
        # Every node must also know every other, or MOVED answers could point nowhere.
        return bool(
            info.get("cluster_state") == "ok" and int(info.get("cluster_known_nodes", 0)) == size
        )


@dataclass(frozen=True)
class RedisTarget:
    """Where the servers under test find Redis: one server, or a cluster's node."""

    url: str
    cluster: bool

    def settings(self) -> dict[str, Any]:
        return {"redis_url": self.url, "redis_cluster": self.cluster}

    def env(self) -> dict[str, str]:
        return {"REDIS_URL": self.url, "REDIS_CLUSTER": "true" if self.cluster else "false"}

    async def client(self, timeout: float = 2.0) -> RedisClient:
        """A client of our own, set up as the server sets up its own (cluster discovered)."""
        kind = RedisCluster if self.cluster else Redis
        client = kind.from_url(self.url, socket_timeout=timeout, socket_connect_timeout=timeout)
        await discover_cluster(client, 5)
        return client


@contextmanager
def redis_cluster(workdir: Path) -> Iterator[RedisClusterNodes]:
    with ExitStack() as stack:
        nodes = RedisClusterNodes(workdir)
        stack.callback(nodes.stop)
        nodes.start()
        yield nodes
