"""A fake Supabase Storage on loopback: the REST calls the ``supabase`` package's Storage
client (``storage3``) makes for upload, download and remove, answered as Supabase does.

- ``POST /storage/v1/object/{bucket}/{path}``: a multipart form with ``file`` (and
  ``cacheControl``); 409 ``Duplicate`` for an existing path unless ``x-upsert: true``;
  answers ``{"Key": "bucket/path", "Id": ...}``.
- ``GET /storage/v1/object/{bucket}/{path}``: the bytes with their content type, or 404.
- ``DELETE /storage/v1/object/{bucket}`` with ``{"prefixes": [...]}``: the removed objects.

Every request needs ``apikey`` and ``Authorization: Bearer`` with the service key (else
403, as Storage answers a bad JWT). ``objects`` holds what is stored; ``requests``
every (method, path); ``fail_with`` makes every request answer that status; ``gzip``
sends downloads compressed (``Content-Encoding: gzip``, as a proxy in front may).
"""

from __future__ import annotations

import gzip
import threading
import time
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.server import free_port

__all__ = ["FakeStorage", "StoredObject"]


@dataclass
class StoredObject:
    data: bytes
    content_type: str


def _error(status: int, error: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"statusCode": str(status), "error": error, "message": message}, status_code=status
    )


class FakeStorage:
    def __init__(self, service_key: str, buckets: tuple[str, ...] = ("documents",)) -> None:
        self.service_key = service_key
        self.buckets = set(buckets)
        self.gzip = False
        self.objects: dict[tuple[str, str], StoredObject] = {}
        self.requests: list[tuple[str, str]] = []
        self.fail_with: int | None = None
        self.port = free_port()
        app = Starlette(
            routes=[
                Route(
                    "/storage/v1/object/{bucket}/{path:path}", self._object, methods=["GET", "POST"]
                ),
                Route("/storage/v1/object/{bucket}", self._remove, methods=["DELETE"]),
            ]
        )
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "the fake Storage did not start"
            time.sleep(0.01)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def _refusal(self, request: Request) -> Response | None:
        self.requests.append((request.method, request.url.path))
        if self.fail_with is not None:
            return _error(self.fail_with, "Service Unavailable", "try again later")
        bearer = request.headers.get("authorization", "")
        if (
            request.headers.get("apikey") != self.service_key
            or bearer != f"Bearer {self.service_key}"
        ):
            return _error(403, "Unauthorized", "invalid signature")
        if request.path_params["bucket"] not in self.buckets:
            return _error(404, "Bucket not found", "Bucket not found")
        return None

    async def _object(self, request: Request) -> Response:
        refused = self._refusal(request)
        if refused is not None:
            return refused
        key = (request.path_params["bucket"], request.path_params["path"])
        if request.method == "GET":
            found = self.objects.get(key)
            if found is None:
                return _error(404, "not_found", "Object not found")
            if self.gzip:
                return Response(
                    gzip.compress(found.data),
                    media_type=found.content_type,
                    headers={"Content-Encoding": "gzip"},
                )
            return Response(found.data, media_type=found.content_type)
        if key in self.objects and request.headers.get("x-upsert") != "true":
            return _error(409, "Duplicate", "The resource already exists")
        async with request.form() as form:
            upload: Any = form["file"]
            data = await upload.read()
            content_type = upload.content_type or "application/octet-stream"
        self.objects[key] = StoredObject(data, content_type)
        return JSONResponse({"Key": "/".join(key), "Id": str(uuid.uuid4())})

    async def _remove(self, request: Request) -> Response:
        refused = self._refusal(request)
        if refused is not None:
            return refused
        bucket = request.path_params["bucket"]
        removed = []
        for name in (await request.json())["prefixes"]:
            if self.objects.pop((bucket, name), None) is not None:
                removed.append({"name": name, "bucket_id": bucket})
        return JSONResponse(removed)
