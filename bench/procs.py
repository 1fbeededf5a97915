"""Child processes of the bench: started pinned to a core, always stopped.

Each child gets its own session (a Ctrl-C in the terminal reaches only the bench,
which then stops the children in order) and ``PR_SET_PDEATHSIG`` (a child dies with
the bench even if the bench is killed). ``Procs.stop_all`` terminates, waits, then
kills what is left, each by its own pid. ``NICE`` (set by ``run.py --nice``) raises
the children's priority, so other work on a shared machine disturbs them less.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

_PR_SET_PDEATHSIG = 1


NICE = 0  # set by the bench before it starts children (negative needs root)


def _child_setup() -> None:
    """In the child before exec: die with the bench; raise priority if asked."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if NICE:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, NICE)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def can_pin() -> bool:
    return shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


class Procs:
    """Every process the bench started, by name."""

    def __init__(self, log_dir: Path, *, pin: bool) -> None:
        self.log_dir = log_dir
        self.pin = pin
        self.live: dict[str, subprocess.Popen[bytes]] = {}

    def argv(self, cmd: list[str], core: int | None) -> list[str]:
        if self.pin and core is not None:
            return ["taskset", "-c", str(core), *cmd]
        return cmd

    def start(
        self, name: str, cmd: list[str], *, core: int | None, **kw: Any
    ) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the child
        proc = subprocess.Popen(
            self.argv(cmd, core),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_child_setup,
            **kw,
        )
        log.close()
        self.live[name] = proc
        return proc

    def run(self, name: str, cmd: list[str], *, core: int | None, timeout: float, **kw: Any) -> str:
        """Run to the end (bounded); returns its stdout."""
        proc = subprocess.Popen(
            self.argv(cmd, core),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_child_setup,
            **kw,
        )
        self.live[name] = proc
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(name)
            raise
        finally:
            self.live.pop(name, None)
        if proc.returncode != 0:
            tail = err.decode(errors="replace")[-3000:]
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")
        return out.decode()

    def stop(self, name: str, timeout: float = 15.0) -> None:
        proc = self.live.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def stop_all(self) -> None:
        for name in list(self.live)[::-1]:
            self.stop(name)

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 90.0) -> None:
    """Poll ``url`` until it answers 200; fail at once if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not become healthy in {timeout:.0f}s")
