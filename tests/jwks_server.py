"""A loopback JWKS server for auth tests: a real HTTP endpoint the test controls.

Serves one JSON document at any path, on 127.0.0.1 and a free port, from a thread.
The test swaps the document (key rotation), makes it fail (``status``), slows it down
(``delay``, to overlap concurrent fetches) and reads how many fetches it served.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = ["JWKSServer"]


class JWKSServer:
    """``with JWKSServer(doc) as server: ... server.url ... server.fetches``."""

    def __init__(self, document: dict[str, Any] | None = None) -> None:
        self._lock = threading.Lock()
        self._body = b""
        self._fetches = 0
        self.status = 200
        self.delay = 0.0
        self.set_document(document or {"keys": []})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/auth/v1/.well-known/jwks.json"

    @property
    def fetches(self) -> int:
        with self._lock:
            return self._fetches

    def set_document(self, document: dict[str, Any]) -> None:
        """Serve ``document`` from the next request on (a key rotation)."""
        body = json.dumps(document).encode()
        with self._lock:
            self._body = body

    def _serve(self) -> tuple[int, bytes, float]:
        with self._lock:
            self._fetches += 1
            return self.status, self._body, self.delay

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body, delay = owner._serve()
                if delay:
                    time.sleep(delay)
                if status != 200:
                    body = b'{"error": "unavailable"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def __enter__(self) -> JWKSServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
