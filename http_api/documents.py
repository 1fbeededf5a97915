"""Documents that ground answers: staff add (JSON or a file), list, replace and delete
them; anyone who may see the game downloads the original a citation points to.

Every change is announced on the backplane (channel ``documents``, the game id) so
that every instance drops what it remembers of the game's documents at once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from chat_server.access import can_see_game
from chat_server.document_files import DOCUMENTS_CHANNEL
from chat_server.document_text import read_document, sniff_format
from chat_server.errors import InvalidInput, NotFound, Unavailable
from chat_server.services import Services
from chat_server.sessions.chat import LANGUAGES_BACKSTOP
from chat_server.storage import documents as store
from chat_server.storage import originals
from chat_server.storage.games import get_game
from chat_server.storage.ids import new_id

from .deps import Caller, ServicesDep, Staff
from .errors import ERROR_RESPONSES
from .models import DocumentIn, DocumentOut, DocumentsOut, DocumentUpload, ErrorBody
from .uploads import read_upload

__all__ = ["DOCUMENTS_CHANNEL", "UPLOAD_PATHS", "router"]

log = logging.getLogger(__name__)

# The paths that take a document's file (BodyLimit lets their bodies be larger).
UPLOAD_PATHS = re.compile(r"/admin/games/[^/]+/documents(/[^/]+)?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

_BODY_FORMS: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": DocumentIn.model_json_schema()},
            "multipart/form-data": {"schema": DocumentUpload.model_json_schema()},
        },
    }
}
_DOCUMENT_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such game or document"},
    408: {"model": ErrorBody, "description": "The upload did not arrive in time"},
    413: {"model": ErrorBody, "description": "The file is larger than DOCUMENT_MAX_BYTES"},
    422: {
        "model": ErrorBody,
        "description": "Invalid request, or a file that cannot be read: DOCUMENT_NO_TEXT, "
        "DOCUMENT_TYPE_MISMATCH, DOCUMENT_ENCRYPTED, DOCUMENT_CORRUPT, DOCUMENT_TOO_COMPLEX, "
        "DOCUMENT_EMPTY",
    },
    503: {"model": ErrorBody, "description": "Database, Redis or Supabase Storage unavailable"},
}

admin = APIRouter(
    prefix="/admin/games",
    tags=["admin"],
    responses={**ERROR_RESPONSES, 403: {"model": ErrorBody, "description": "Not staff"}},
)
public = APIRouter(tags=["games"], responses=ERROR_RESPONSES)


async def _game_or_404(services: Services, game_id: str) -> dict[str, Any]:
    game = await get_game(services.db, game_id)
    if game is None:
        raise NotFound("game not found", error_code="GAME_NOT_FOUND")
    return game


def _validated(model: type[DocumentIn] | type[DocumentUpload], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from exc


async def _body(request: Request, services: Services) -> store.DocumentBody:
    """The document a POST or PUT sends: JSON text, or a form with a file (read, checked
    and parsed here; stored in Supabase Storage when that is configured)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        upload = await read_upload(request, services.settings.document_max_bytes)
        form = _validated(DocumentUpload, upload.fields)
        fmt = sniff_format(upload.filename, upload.content_type, form.format)
        read = await read_document(upload.data, fmt)
        body = store.DocumentBody(
            language=form.language.lower(),
            title=form.title or _title_from(upload.filename),
            kind=form.kind,
            fmt=read.format,
            texts=read.texts,
            media_type=read.media_type,
            pages=read.pages,
            size=len(upload.data),
            data=upload.data,
        )
        key = await services.files.put(f"{new_id()}/{new_id()}", upload.data, read.media_type)
        if key is not None:
            body = replace(body, data=None, storage_key=key)
        return body
    if content_type not in ("application/json", ""):
        raise InvalidInput(
            "send application/json or multipart/form-data",
            error_code="UNSUPPORTED_MEDIA_TYPE",
        )
    try:
        data = await request.json()
    except (ValueError, RecursionError) as exc:
        error = {"loc": ["body"], "msg": "not valid JSON", "type": "json_invalid"}
        raise RequestValidationError([error]) from exc
    doc = _validated(DocumentIn, data)
    body = store.DocumentBody.from_text(
        language=doc.language.lower(),
        title=doc.title,
        content=doc.content,
        fmt=doc.format,
        kind=doc.kind,
    )
    if doc.openai_vector_store_id:
        body = replace(body, openai_vector_store_id=doc.openai_vector_store_id)
    return body


def _title_from(filename: str | None) -> str:
    stem = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    stem = _CONTROL.sub("", stem).encode("utf-8", "replace").decode("utf-8").strip()
    return stem[:300] or "Rulebook"


async def _announce(services: Services, game_id: str) -> None:
    """Every instance (this one at once) forgets what it remembers of the game's documents."""
    services.chat.rulebook_added(game_id)
    try:
        await services.backplane.publish(DOCUMENTS_CHANNEL, game_id)
    except Unavailable:
        log.warning(
            "documents of %s changed; other instances learn it within %.0f s",
            game_id,
            LANGUAGES_BACKSTOP,
        )


@admin.post(
    "/{game_id}/documents",
    status_code=201,
    response_model=DocumentOut,
    summary="Add a document (JSON text, or a PDF, Markdown or text file) to ground answers",
    responses=_DOCUMENT_ERRORS,
    openapi_extra=_BODY_FORMS,
)
async def add_document(
    game_id: str, request: Request, _staff: Staff, services: ServicesDep
) -> DocumentOut:
    await _game_or_404(services, game_id)
    body = await _body(request, services)
    try:
        doc = await store.add_document(services.db, game_id=game_id, body=body)
    except BaseException:
        if body.storage_key:
            await services.files.remove([body.storage_key])
        raise
    await _announce(services, game_id)
    return DocumentOut(**doc)


@admin.get(
    "/{game_id}/documents",
    response_model=DocumentsOut,
    summary="The game's documents",
    responses={404: {"model": ErrorBody}},
)
async def list_documents(game_id: str, _staff: Staff, services: ServicesDep) -> DocumentsOut:
    await _game_or_404(services, game_id)
    docs = await store.list_documents(services.db, game_id)
    return DocumentsOut(documents=[DocumentOut(**d) for d in docs])


@admin.put(
    "/{game_id}/documents/{doc_id}",
    response_model=DocumentOut,
    summary="Replace a document's content (its old passages serve until the new are stored)",
    responses=_DOCUMENT_ERRORS,
    openapi_extra=_BODY_FORMS,
)
async def replace_document(
    game_id: str, doc_id: str, request: Request, _staff: Staff, services: ServicesDep
) -> DocumentOut:
    await _game_or_404(services, game_id)
    body = await _body(request, services)
    try:
        doc, old_key = await store.replace_document(
            services.db, game_id=game_id, doc_id=doc_id, body=body
        )
    except BaseException:
        if body.storage_key:
            await services.files.remove([body.storage_key])
        raise
    await _announce(services, game_id)
    if old_key:
        await services.files.remove([old_key])
    return DocumentOut(**doc)


@admin.delete(
    "/{game_id}/documents/{doc_id}",
    status_code=204,
    summary="Delete a document: its passages stop grounding answers at once, everywhere",
    responses={404: {"model": ErrorBody}},
)
async def delete_document(
    game_id: str, doc_id: str, _staff: Staff, services: ServicesDep
) -> Response:
    await _game_or_404(services, game_id)
    key = await store.delete_document(services.db, game_id=game_id, doc_id=doc_id)
    await _announce(services, game_id)
    if key:
        await services.files.remove([key])
    return Response(status_code=204)


@public.get(
    "/games/{game_id}/documents/{doc_id}/file",
    summary="A document's original file (a citation's url points here)",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The file, with its media type",
            "content": {
                "application/pdf": {"schema": {"type": "string", "format": "binary"}},
                "text/markdown": {"schema": {"type": "string"}},
                "text/plain": {"schema": {"type": "string"}},
            },
        },
        404: {"model": ErrorBody, "description": "No such document, or a game you cannot see"},
    },
)
async def document_file(
    game_id: str, doc_id: str, principal: Caller, services: ServicesDep
) -> StreamingResponse:
    game = await get_game(services.db, game_id)
    if not can_see_game(principal.role, game):
        raise NotFound("game not found", error_code="GAME_NOT_FOUND")
    stored = await originals.document_file(services.db, game_id=game_id, doc_id=doc_id)
    size = stored.size
    chunks: AsyncIterator[bytes]
    if stored.inline is not None:
        chunks = _once(stored.inline)
    elif stored.storage_key is not None:
        size, chunks = await services.files.open(stored.storage_key)
    else:
        chunks = originals.file_chunks(services.db, stored, doc_id)
    extension = {"pdf": ".pdf", "markdown": ".md"}.get(stored.fmt, ".txt")
    filename = re.sub(r"[^A-Za-z0-9._ -]", "_", stored.title)[:100] + extension
    headers = {
        "Content-Disposition": f'inline; filename="{filename}"',
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, no-store",
    }
    if size is not None:
        headers["Content-Length"] = str(size)
    return StreamingResponse(chunks, media_type=stored.media_type, headers=headers)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


router = APIRouter()
router.include_router(admin)
router.include_router(public)
