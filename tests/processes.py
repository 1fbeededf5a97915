"""Server instances as real OS processes (``python -m chat_server serve``), for tests
that kill or stop one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.server import SECRET, free_port

BASE_ENV = {
    "SUPABASE_JWT_SECRET": SECRET,
    "LOG_LEVEL": "warning",
    "ENVIRONMENT": "dev",
    "LOCAL_TOKEN_DELAY": "0",
}


class ServerProcess:
    """``nofile``: the process sets its own descriptor limit (``RLIMIT_NOFILE``) before
    starting, so a test can bring it near its limit without touching the host's."""

    def __init__(self, env: dict[str, str], cwd: Path, *, nofile: int | None = None) -> None:
        self.port = free_port()
        full = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(
                (
                    "DATABASE_",
                    "REDIS_",
                    "OPENAI_",
                    "ANTHROPIC_",
                    "GEMINI_",
                    "SUPABASE_",
                    "WS_",
                    "PROVIDER_",
                )
            )
        }
        full.update(BASE_ENV)
        full.update(env)
        full.update({"PORT": str(self.port), "HOST": "127.0.0.1", "CHAT_DATA_DIR": str(cwd)})
        self.log = cwd / f"server-{self.port}.log"
        self._log_file = self.log.open("wb")
        command = [sys.executable, "-m", "chat_server", "serve"]
        if nofile is not None:
            command = [
                sys.executable,
                "-c",
                "import resource, sys; from chat_server.cli import main; "
                f"resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, {nofile})); "
                "sys.exit(main(['serve']))",
            ]
        self.proc = subprocess.Popen(
            command,
            env=full,
            cwd=cwd,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/chat"

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError("server did not start within 30 s")

    def descriptors(self) -> int:
        """How many file descriptors the process has open now."""
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log_file.close()


@contextmanager
def server_process(
    env: dict[str, str], cwd: Path, *, nofile: int | None = None
) -> Iterator[ServerProcess]:
    server = ServerProcess(env, cwd, nofile=nofile)
    try:
        yield server
    finally:
        server.stop()
