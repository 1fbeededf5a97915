"""``/docs`` (Swagger UI), ``/redoc`` (ReDoc) and ``/``, with no request to another host.

FastAPI's own pages load Swagger UI and ReDoc from a CDN (and ReDoc's fonts from Google):
offline or behind a strict proxy they are blank. Here the same pages load the scripts
from ``/docs/assets/``, served from the ``fastapi-offline`` package's copies (read once at
import). ``GET /`` sends a visitor, who followed the address ``serve`` prints, to ``/docs``.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from chat_server import __version__
from chat_server.errors import NotFound

router = APIRouter()

ASSETS_PATH = "/docs/assets"
_MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
}
_WANTED = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")


def _read_assets() -> dict[str, tuple[bytes, str]]:
    static = files("fastapi_offline").joinpath("static")
    return {
        name: (static.joinpath(name).read_bytes(), _MEDIA_TYPES[name[name.rfind(".") :]])
        for name in _WANTED
    }


_ASSETS = _read_assets()
_TITLE = f"chat-server {__version__}"


def _openapi_url(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/") + "/openapi.json"


def _asset(request: Request, name: str) -> str:
    return request.scope.get("root_path", "").rstrip("/") + f"{ASSETS_PATH}/{name}"


@router.get("/", include_in_schema=False)
async def root(request: Request) -> RedirectResponse:
    """The address ``serve`` prints leads to the API's documentation."""
    return RedirectResponse(request.scope.get("root_path", "").rstrip("/") + "/docs")


@router.get("/docs", include_in_schema=False)
async def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=_openapi_url(request),
        title=f"{_TITLE}: REST API",
        swagger_js_url=_asset(request, "swagger-ui-bundle.js"),
        swagger_css_url=_asset(request, "swagger-ui.css"),
        swagger_favicon_url=_asset(request, "favicon.png"),
        # No spec validator badge (it would ask validator.swagger.io).
        swagger_ui_parameters={"validatorUrl": None},
    )


@router.get("/redoc", include_in_schema=False)
async def redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(
        openapi_url=_openapi_url(request),
        title=f"{_TITLE}: REST API",
        redoc_js_url=_asset(request, "redoc.standalone.js"),
        redoc_favicon_url=_asset(request, "favicon.png"),
        with_google_fonts=False,
    )


@router.get(ASSETS_PATH + "/{name}", include_in_schema=False)
async def docs_asset(name: str) -> Response:
    """Swagger UI's and ReDoc's scripts, styles and icon (public: they hold no data)."""
    asset = _ASSETS.get(name)
    if asset is None:
        raise NotFound("no such asset", error_code="ASSET_NOT_FOUND")
    body, media_type = asset
    return Response(body, media_type=media_type, headers={"Cache-Control": "max-age=86400"})
