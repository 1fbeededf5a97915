"""Where a document's original file is kept: the database (the default) or Supabase Storage.

``DatabaseFiles`` keeps the bytes in ``document_files.data``, written in the same
transaction as the document. ``SupabaseFiles`` (with ``SUPABASE_URL`` and
``SUPABASE_SERVICE_KEY``) puts them in the bucket ``DOCUMENTS_BUCKET`` through the
``supabase`` package's async Storage client (``storage3``); the database keeps the
object's key. An object is uploaded before its document row is written and removed
after the row is gone, so a row never names a missing object (a failed write leaves
an object behind only if its removal fails too; that is logged).

Both are safe to use concurrently; every Storage call is bounded by ``timeout``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Protocol
from urllib.parse import quote

import httpx
from storage3 import AsyncStorageClient
from storage3._async.file_api import AsyncBucketProxy
from storage3.utils import StorageException

from .errors import Unavailable

__all__ = [
    "DOCUMENTS_CHANNEL",
    "DatabaseFiles",
    "FileStore",
    "SupabaseFiles",
    "build_file_store",
    "document_url",
]

log = logging.getLogger(__name__)

# The backplane channel on which a change of a game's documents is announced (the
# message: the game id), so that every instance forgets what it cached of them.
DOCUMENTS_CHANNEL = "documents"
_CHUNK = 256 * 1024


def document_url(game_id: str, document_id: str, page: int | None = None) -> str:
    """Where anyone who may see the game downloads a document's original (a path on
    this server); ``#page=N`` opens a PDF at that page."""
    url = f"/games/{game_id}/documents/{document_id}/file"
    return f"{url}#page={page}" if page is not None else url


class FileStore(Protocol):
    """Keeps originals outside the database (``put`` answers a key), or not (None)."""

    async def put(self, key: str, data: bytes, media_type: str) -> str | None:
        """Store ``data``; the key to keep in the database, or None to keep the bytes there."""
        ...

    async def open(self, key: str) -> tuple[int | None, AsyncIterator[bytes]]:
        """The object's size (if told) and its bytes as they arrive; ``Unavailable`` if
        it cannot be had. The iterator must be run to its end or closed."""
        ...

    async def remove(self, keys: list[str]) -> None:
        """Best effort: a failure is logged, not raised (the document is gone already)."""
        ...

    async def aclose(self) -> None: ...


class DatabaseFiles:
    """The default: the bytes stay in ``document_files.data``."""

    async def put(self, key: str, data: bytes, media_type: str) -> str | None:
        return None

    async def open(self, key: str) -> tuple[int | None, AsyncIterator[bytes]]:
        raise Unavailable("this document's file is in Supabase Storage, which is not configured")

    async def remove(self, keys: list[str]) -> None:
        return None

    async def aclose(self) -> None:
        return None


class SupabaseFiles:
    """Supabase Storage through ``storage3``'s ``AsyncStorageClient`` (REST, service key)."""

    def __init__(self, url: str, service_key: str, bucket: str, *, timeout: float = 30.0) -> None:
        headers = {"apikey": service_key, "Authorization": f"Bearer {service_key}"}
        self._http = httpx.AsyncClient(
            headers=headers, timeout=httpx.Timeout(timeout, connect=5.0), follow_redirects=False
        )
        self._base = url.rstrip("/") + "/storage/v1/"
        self._client = AsyncStorageClient(self._base, headers, http_client=self._http)
        self._bucket = bucket
        self._timeout = timeout

    def _files(self) -> AsyncBucketProxy:
        return self._client.from_(self._bucket)

    async def put(self, key: str, data: bytes, media_type: str) -> str | None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._files().upload(
                    key, data, {"content-type": media_type, "upsert": "true"}
                )
        except (TimeoutError, httpx.HTTPError, StorageException) as exc:
            log.warning("Supabase Storage upload failed: %s", type(exc).__name__)
            raise Unavailable(
                "Supabase Storage is unavailable", context={"service": "storage"}
            ) from exc
        return key

    async def open(self, key: str) -> tuple[int | None, AsyncIterator[bytes]]:
        """Streams the object (the GET ``download()`` makes, read as it arrives: a large
        PDF is never held whole); each chunk waits at most ``timeout``."""
        url = f"{self._base}object/{self._bucket}/{quote(key)}"
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._http.send(self._http.build_request("GET", url), stream=True)
        except (TimeoutError, httpx.HTTPError) as exc:
            log.warning("Supabase Storage download failed: %s", type(exc).__name__)
            raise Unavailable(
                "Supabase Storage is unavailable", context={"service": "storage"}
            ) from exc
        if response.status_code != 200:
            await response.aclose()
            log.warning("Supabase Storage download: status %d", response.status_code)
            raise Unavailable("Supabase Storage is unavailable", context={"service": "storage"})
        length = response.headers.get("content-length")
        # A compressed answer's length is not the length of the bytes served (decoded)
        encoded = response.headers.get("content-encoding", "identity").lower() != "identity"
        size = int(length) if length and length.isdigit() and not encoded else None

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in response.aiter_bytes(_CHUNK):
                    yield chunk
            except httpx.HTTPError as exc:
                raise Unavailable("Supabase Storage is unavailable") from exc
            finally:
                await response.aclose()

        return size, body()

    async def remove(self, keys: list[str]) -> None:
        if not keys:
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self._files().remove(keys)
        except (TimeoutError, httpx.HTTPError, StorageException) as exc:
            log.warning("Supabase Storage: %d object(s) left behind (%s)", len(keys), exc)

    async def aclose(self) -> None:
        await self._http.aclose()


def build_file_store(supabase_url: str | None, service_key: str | None, bucket: str) -> FileStore:
    """Supabase Storage when both the URL and the service key are set, else the database."""
    if supabase_url and service_key:
        return SupabaseFiles(supabase_url, service_key, bucket)
    return DatabaseFiles()
