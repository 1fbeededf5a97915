"""``GET /admin``: a static page for staff (no build step), and its scripts and styles.

The page's HTML, scripts and styles are separate files so that its Content-Security-Policy
allows scripts from this origin only (no ``'unsafe-inline'``): text that reaches the page
from a user (a question, a game's name) can never run as script.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from chat_server.errors import NotFound

router = APIRouter()

_STATIC = files("chat_server").joinpath("static")
_MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".LICENSE": "text/plain; charset=utf-8",  # a vendored library's license, beside it
}
_FOLDERS = ("", "vendor")  # static/ and static/vendor/ (third-party libraries, README there)


def _read_assets() -> dict[str, tuple[bytes, str]]:
    """Every script and style the page may load, read once at import (before serving):
    the allowlist of ``/admin/assets/{name}``, keyed ``admin.js``, ``vendor/uPlot.min.css``."""
    assets: dict[str, tuple[bytes, str]] = {}
    for folder in _FOLDERS:
        where = _STATIC.joinpath(folder) if folder else _STATIC
        for entry in where.iterdir():
            suffix = entry.name[entry.name.rfind(".") :]
            if entry.is_file() and suffix in _MEDIA_TYPES:
                name = f"{folder}/{entry.name}" if folder else entry.name
                assets[name] = (entry.read_bytes(), _MEDIA_TYPES[suffix])
    return assets


_HTML = _STATIC.joinpath("admin.html").read_text(encoding="utf-8")
_ASSETS = _read_assets()
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


@router.get("/admin", response_class=HTMLResponse, include_in_schema=False)
async def admin_page() -> HTMLResponse:
    return HTMLResponse(_HTML, headers=_HEADERS)


@router.get("/admin/assets/{name:path}", include_in_schema=False)
async def admin_asset(name: str) -> Response:
    """The page's own scripts and styles, and the vendored libraries it uses (public:
    they hold no data). Only the files read at import are served: no path is opened."""
    asset = _ASSETS.get(name)
    if asset is None:
        raise NotFound("no such asset", error_code="ASSET_NOT_FOUND")
    body, media_type = asset
    return Response(body, media_type=media_type, headers={"Cache-Control": "no-cache"})
