"""Health, readiness and metrics (CONTRACT §3): open to anyone, honest about outages."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.server import free_port, make_settings, running_server
from tests.tcp_proxy import TcpProxy

from .support import TIMEOUT, expect_error


def test_healthz_is_open_and_ok(tmp_path: Path) -> None:
    """/healthz answers 200 without a token."""
    with running_server(make_settings(tmp_path)) as srv:
        response = httpx.get(srv.url + "/healthz", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_on_the_embedded_defaults(tmp_path: Path) -> None:
    """/readyz is 200 with the database checked and Redis reported as in-process."""
    with running_server(make_settings(tmp_path)) as srv:
        response = httpx.get(srv.url + "/readyz", timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "redis": "in-process"}}


def test_readyz_with_postgres_and_redis(tmp_path: Path, postgres_url: str, redis_url: str) -> None:
    """/readyz is 200 when Postgres and Redis both answer."""
    settings = make_settings(tmp_path, database_url=postgres_url, redis_url=redis_url)
    with running_server(settings) as srv:
        response = httpx.get(srv.url + "/readyz", timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    assert response.json()["checks"] == {"database": "ok", "redis": "ok"}


def test_readyz_names_redis_when_it_goes_down(tmp_path: Path, redis_url: str) -> None:
    """When Redis goes away under a running server, /readyz turns 503 naming redis."""
    parts = urlsplit(redis_url)
    with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 6379) as proxy:
        proxied = parts._replace(netloc=f"127.0.0.1:{proxy.port}").geturl()
        settings = make_settings(tmp_path, redis_url=proxied, redis_timeout=0.5)
        with running_server(settings) as srv:
            assert httpx.get(srv.url + "/readyz", timeout=TIMEOUT).status_code == 200
            proxy.cut()
            response = httpx.get(srv.url + "/readyz", timeout=TIMEOUT)
            health = httpx.get(srv.url + "/healthz", timeout=TIMEOUT)
    assert health.status_code == 200, "the process itself is still up"
    body = expect_error(response, 503, "UNAVAILABLE")
    assert "redis" in body["detail"]
    assert body["context"] == {
        "checks": {"database": "ok", "redis": "unavailable"},
        "failed": ["redis"],
    }


def test_readyz_names_redis_when_it_is_down_at_start(tmp_path: Path) -> None:
    """With Redis unreachable from the start, the server starts and /readyz is 503 naming it."""
    settings = make_settings(tmp_path, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    with running_server(settings) as srv:
        response = httpx.get(srv.url + "/readyz", timeout=TIMEOUT)
    body = expect_error(response, 503, "UNAVAILABLE")
    assert body["context"]["failed"] == ["redis"]


def test_metrics_are_prometheus_text(tmp_path: Path) -> None:
    """/metrics answers the Prometheus text format, parseable, without a token."""
    with running_server(make_settings(tmp_path)) as srv:
        response = httpx.get(srv.url + "/metrics", timeout=TIMEOUT)
        openmetrics = httpx.get(
            srv.url + "/metrics",
            headers={"Accept": "application/openmetrics-text; version=1.0.0"},
            timeout=TIMEOUT,
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    families = {f.name for f in text_string_to_metric_families(response.text)}
    assert families, "no metric at all"
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.rstrip().endswith("# EOF")
