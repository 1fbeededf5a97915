"""Reading a document's original file: what it is, then its bytes a chunk at a time.

The bytes kept in the database (``document_files.data``) are read in ``CHUNK``-sized
slices (``substr``, which both Postgres' ``bytea`` and SQLite's blobs take), one short
read each, so serving a 20 MiB PDF holds one chunk in memory and no connection between
chunks. Each slice is read only while the document is the version whose size was
announced (its ``updated_at``): a download that a replacement overtakes ends short with
``Unavailable`` rather than splicing two files.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from ..document_text import MEDIA_TYPES
from ..errors import NotFound, Unavailable
from .engine import Database
from .schema import document_files, game_documents

__all__ = ["CHUNK", "StoredFile", "document_file", "file_chunks"]

CHUNK = 256 * 1024


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A document's original: where its bytes are, and how many."""

    media_type: str
    title: str
    fmt: str
    size: int | None  # None: ask the Storage object
    storage_key: str | None  # in Supabase Storage
    inline: bytes | None  # a document posted as text: that text
    version: datetime | None  # the document's updated_at when this was read


async def document_file(db: Database, *, game_id: str, doc_id: str) -> StoredFile:
    """What the original of a document is (``NotFound`` for no such document)."""
    query = (
        select(
            game_documents.c.media_type,
            game_documents.c.title,
            game_documents.c.format,
            game_documents.c.updated_at,
            document_files.c.document_id.label("has_file"),
            document_files.c.storage_key,
            func.length(document_files.c.data).label("size"),
        )
        .select_from(game_documents.outerjoin(document_files))
        .where(game_documents.c.id == doc_id, game_documents.c.game_id == game_id)
    )
    async with db.read() as conn:
        row = (await conn.execute(query)).first()
        if row is None:
            raise NotFound("document not found", error_code="DOCUMENT_NOT_FOUND")
        inline = None
        if row.has_file is None:
            content = await conn.scalar(
                select(game_documents.c.content).where(game_documents.c.id == doc_id)
            )
            inline = (content or "").encode("utf-8", "surrogatepass")
    media_type = row.media_type or MEDIA_TYPES.get(row.format, MEDIA_TYPES["text"])
    size = len(inline) if inline is not None else row.size
    return StoredFile(
        media_type, row.title, row.format, size, row.storage_key, inline, row.updated_at
    )


async def file_chunks(
    db: Database, stored: StoredFile, doc_id: str, *, chunk: int = CHUNK
) -> AsyncIterator[bytes]:
    """The bytes kept in the database, ``chunk`` at a time (one read each)."""
    size = stored.size or 0
    for start in range(0, size, chunk):
        query = (
            select(func.substr(document_files.c.data, start + 1, chunk))
            .select_from(document_files.join(game_documents))
            .where(document_files.c.document_id == doc_id)
        )
        if stored.version is not None:
            query = query.where(game_documents.c.updated_at == stored.version)
        async with db.read() as conn:
            piece = await conn.scalar(query)
        if piece is None:
            raise Unavailable("the document changed while it was being sent")
        yield bytes(piece)
