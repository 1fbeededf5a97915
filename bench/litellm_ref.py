"""LiteLLM's proxy as a third reference (issue 21): what teams put in front of providers.

The system measured as ``litellm`` is the raw-httpx relay (``relays.py``) pointed at
LiteLLM's proxy, which forwards to the bench's upstream: its CPU is the two processes'
together, both on the server core. LiteLLM lives in a venv of its own, created on
demand (``pip install 'litellm[proxy]'``, a few hundred MB), so that none of its
dependencies touches the product's. The proxy runs with one worker, no database, no
callbacks, a master key and the model cost map read from the package (no network at startup).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from relays import MODEL

HERE = Path(__file__).resolve().parent
DEFAULT_VENV = HERE / ".litellm-venv"
REQUIREMENT = "litellm[proxy]"


def ensure_venv(path: str | Path | None = None, timeout: float = 1200.0) -> Path:
    """The venv's python, creating the venv and installing LiteLLM if needed."""
    venv = Path(path or DEFAULT_VENV)
    python, cli = venv / "bin" / "python", venv / "bin" / "litellm"
    if cli.exists():
        return python
    print(f"  installing {REQUIREMENT} into {venv} (once)", file=sys.stderr)
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "--quiet", REQUIREMENT],
    ]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"{' '.join(step)}: did not finish in {timeout:.0f} s") from exc
        if done.returncode != 0:
            tail = done.stderr.decode(errors="replace")[-2000:]
            raise RuntimeError(f"{' '.join(step)} failed ({done.returncode}):\n{tail}")
    if not cli.exists():
        raise RuntimeError(f"{REQUIREMENT} installed no {cli}")
    return python


def write_config(path: Path, upstream: str) -> Path:
    """One model, ``openai/<MODEL>`` at the bench's upstream; nothing else on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {upstream}\n"
        "      api_key: bench\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "  set_verbose: false\n"
        "  drop_params: true\n"
    )
    return path


def command(python: Path, config: Path, port: int) -> list[str]:
    cli = python.parent / "litellm"
    return [str(cli), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]


def env(master_key: str) -> dict[str, str]:
    """The proxy's environment: its master key (every request is checked against it, as
    in any real deployment), no network at startup, quiet logs, one worker."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    return keep | {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        "LITELLM_MASTER_KEY": master_key,
        "LITELLM_TELEMETRY": "False",
        "NUM_WORKERS": "1",
    }
