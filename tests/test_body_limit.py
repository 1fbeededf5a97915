"""Request bodies over HTTP_MAX_BODY_BYTES are refused with 413 before being read."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from tests.server import make_settings, running_server


async def test_declared_and_streamed_oversized_bodies_get_413(tmp_path: Path) -> None:
    """A big Content-Length and a big chunked body both get 413 with the error body;
    a body under the limit is served."""
    with running_server(make_settings(tmp_path, http_max_body_bytes=10_000)) as server:
        headers = {"Authorization": f"Bearer {server.token('root', 'admin')}"}
        url = f"{server.url}/admin/games"
        async with httpx.AsyncClient(timeout=5) as http:
            big = await http.post(url, headers=headers, json={"name": "x" * 20_000})
            assert big.status_code == 413
            assert big.json()["error_code"] == "PAYLOAD_TOO_LARGE"

            async def chunks() -> AsyncIterator[bytes]:
                yield b'{"name": "'
                for _ in range(30):
                    yield b"y" * 1000
                yield b'"}'

            streamed = await http.post(
                url, headers={**headers, "content-type": "application/json"}, content=chunks()
            )
            assert streamed.status_code == 413
            small = await http.post(url, headers=headers, json={"name": "Small game"})
            assert small.status_code == 201
