"""``GET /admin``: one static page that watches live sessions (no build step)."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter()

# Read once, when the module is imported (before the event loop serves anything).
_HTML = files("chat_server").joinpath("static/admin.html").read_text(encoding="utf-8")


@router.get("/admin", response_class=HTMLResponse, include_in_schema=False)
async def admin_page() -> HTMLResponse:
    return HTMLResponse(
        _HTML,
        headers={
            "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline' 'self'; "
            "style-src 'unsafe-inline'",
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer",
        },
    )
