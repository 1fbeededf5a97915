"""Text to vectors with WordLlama's static embedding model, from its own wheel.

The model (a 32000 by 256 token table, 16 MB) ships inside the ``wordllama`` package;
it is loaded from there with downloads disabled, so nothing is fetched at run time.
Version 0.4.0 looks for its bundled tokenizer under ``tokenizer/`` while the wheel
puts it under ``tokenizers/``: loading with ``cache_dir`` set to the package's own
folder finds both files. Embedding is a table look-up and a mean (about 0.1 ms per
question, about 1 ms per rulebook passage); loading takes about 0.5 s, done once, in
a thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Vectors", "embed", "embed_in_thread", "load_model", "warm_up"]

Vectors = npt.NDArray[np.float32]
DIMENSIONS = 256
LOAD_TIMEOUT = 30.0  # the model's first load, in a thread
EMBED_TIMEOUT = 60.0  # a whole rulebook's passages, in a thread

log = logging.getLogger(__name__)
_model: Any = None
_lock = threading.Lock()


def load_model() -> Any:
    """The WordLlama model, loaded once from the wheel's own folder (blocking)."""
    global _model
    with _lock:
        if _model is None:
            import wordllama
            from wordllama import WordLlama

            folder = Path(wordllama.__file__).parent
            _model = WordLlama.load(cache_dir=folder, disable_download=True, dim=DIMENSIONS)
        return _model


def warm_up() -> None:
    """Load the model in a thread of its own, so the first question does not wait for it
    (called once at startup; a failure is logged and retried by the first question)."""

    def load() -> None:
        try:
            load_model()
        except Exception:
            log.exception("the embedding model did not load")

    threading.Thread(target=load, name="embedding-model", daemon=True).start()


def embed(texts: list[str]) -> Vectors:
    """Unit vectors for ``texts``, one row each (blocking; fast for a question)."""
    if not texts:
        return np.zeros((0, DIMENSIONS), dtype=np.float32)
    vectors = np.asarray(load_model().embed(texts), dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return vectors / norms


async def embed_in_thread(texts: list[str]) -> Vectors:
    """``embed`` off the event loop, bounded in time (a rulebook's passages)."""
    async with asyncio.timeout(EMBED_TIMEOUT):
        return await asyncio.to_thread(embed, texts)
