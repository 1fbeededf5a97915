"""Running the Node clients under ``tests/ai_sdk`` (the real ``ai`` package) as subprocesses.

``node_script()`` skips locally, and fails under CI, when ``node`` or the installed
packages are missing (``npm ci --prefix tests/ai_sdk``). ``run_node()`` runs one
script with a time limit in its own process group and returns its last stdout line
parsed as JSON (each script prints one result object); a failing script fails the
test with its stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.services import missing

__all__ = ["NODE_DIR", "node_script", "run_node"]

NODE_DIR = Path(__file__).parent / "ai_sdk"
#: Node 20 has a global WebSocket (the transport's) behind this flag; 22 has it always.
NODE_FLAGS = ("--experimental-websocket",)


def node_script(name: str) -> Path:
    """The script's path, once ``node`` and the pinned packages are known to be there."""
    if shutil.which("node") is None:
        missing("Node.js", "no node on PATH")
    if not (NODE_DIR / "node_modules" / "ai" / "package.json").exists():
        missing("the ai package", "run `npm ci --prefix tests/ai_sdk`")
    return NODE_DIR / name


async def run_node(
    name: str, *args: str, env: dict[str, str] | None = None, timeout: float = 60.0
) -> Any:
    """Run ``tests/ai_sdk/<name>`` with ``args``; its last stdout line, as JSON."""
    script = node_script(name)
    node = shutil.which("node")
    assert node is not None
    proc = await asyncio.create_subprocess_exec(
        node,
        *NODE_FLAGS,
        str(script),
        *args,
        cwd=NODE_DIR,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        pytest.fail(f"{name} did not finish within {timeout} s")
    text = out.decode(errors="replace").strip()
    if proc.returncode != 0:
        pytest.fail(f"{name} exited {proc.returncode}:\n{err.decode(errors='replace')[-4000:]}")
    return json.loads(text.splitlines()[-1])
