"""The admin page's HTML, scripts and styles as a browser fetches them."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from tests.http_api.support import TIMEOUT
from tests.server import make_settings, running_server


def test_the_page_runs_no_inline_script(tmp_path: Path) -> None:
    """The CSP allows scripts from this origin only, and the page has none inline."""
    with running_server(make_settings(tmp_path)) as srv, httpx.Client(timeout=TIMEOUT) as http:
        page = http.get(f"{srv.url}/admin")
        assert page.status_code == 200
        csp = page.headers["content-security-policy"]
        script_src = re.search(r"script-src ([^;]*)", csp)
        assert script_src is not None
        assert "'unsafe-inline'" not in script_src.group(1)
        assert "'unsafe-eval'" not in csp
        assert re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page.text) is None
        for src in re.findall(r'(?:src|href)="(/admin/assets/[^"]+)"', page.text):
            asset = http.get(f"{srv.url}{src}")
            assert asset.status_code == 200, src
            assert asset.headers["content-type"].startswith(("text/javascript", "text/css"))


def test_an_unknown_asset_is_404_with_the_flat_body(tmp_path: Path) -> None:
    """Only the page's own files are served; nothing else under static/ or beyond."""
    with running_server(make_settings(tmp_path)) as srv, httpx.Client(timeout=TIMEOUT) as http:
        for name in ("admin.html", "nope.js", "..%2Fconfig.py"):
            response = http.get(f"{srv.url}/admin/assets/{name}")
            assert response.status_code == 404, name
            assert response.json()["error_code"].endswith("NOT_FOUND"), name
