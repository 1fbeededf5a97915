"""A private redis-server on a free loopback port, which a test may stop, start and freeze.

``durable=True`` turns on the append-only file, fsynced on every write, in ``workdir``:
what was written survives ``stop()`` (a SIGKILL, as in a crash) and is there again after
the next ``start()``. Without it a restarted Redis is empty.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.server import free_port
from tests.services import missing

__all__ = ["PrivateRedis", "private_redis"]

START_TIMEOUT = 10.0


class PrivateRedis:
    def __init__(self, workdir: Path, *, durable: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            missing("redis-server", "the binary is not on PATH")
        self.binary = str(binary)
        self.port = free_port()
        self.workdir = workdir
        self.durable = durable
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and return once it answers PING (after loading its AOF)."""
        aof = ["--appendonly", "yes", "--appendfsync", "always"] if self.durable else []
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             *(aof or ["--appendonly", "no"]), "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError("redis-server did not start")

    def stop(self) -> None:
        """SIGKILL, as in a crash (a frozen server dies too); a no-op when not running."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None

    def freeze(self) -> None:
        """SIGSTOP: connections stay open and nothing answers (a hung Redis)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


@contextmanager
def private_redis(workdir: Path, *, durable: bool = False) -> Iterator[PrivateRedis]:
    redis = PrivateRedis(workdir, durable=durable)
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()
