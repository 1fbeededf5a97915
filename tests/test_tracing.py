"""OpenTelemetry (the `otel` extra): one span per turn, with the checks and the provider
call as its children."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.server import make_settings, running_server
from tests.wsclient import ws_client

otel_trace = pytest.importorskip("opentelemetry.trace")
sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
export = pytest.importorskip("opentelemetry.sdk.trace.export")
in_memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")


@pytest.fixture(scope="module")
def spans() -> Iterator[object]:
    exporter = in_memory.InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(export.SimpleSpanProcessor(exporter))
    otel_trace.set_tracer_provider(provider)
    yield exporter
    provider.shutdown()


async def test_a_turn_is_one_span_with_checks_and_provider_as_children(
    tmp_path: Path, spans: object
) -> None:
    """chat.turn holds chat.start_queue (its wait for a place), chat.flag_check,
    chat.quota_reserve and chat.provider, and says how the turn ended."""
    with running_server(make_settings(tmp_path)) as server:
        token = server.token("alice")
        async with httpx.AsyncClient(timeout=5) as http:
            listing = await http.get(
                f"{server.url}/games", headers={"Authorization": f"Bearer {token}"}
            )
        async with ws_client(server.ws_url, token) as client:
            await client.start(listing.json()["games"][0]["id"])
            frames = await client.ask("How do I win?")
    finished = spans.get_finished_spans()  # type: ignore[attr-defined]
    turn = next(s for s in finished if s.name == "chat.turn")
    assert turn.attributes["chat.turn_id"] == frames[0]["turn_id"]
    assert turn.attributes["chat.finish_reason"] == "stop"
    children = {s.name for s in finished if s.parent and s.parent.span_id == turn.context.span_id}
    assert {"chat.start_queue", "chat.flag_check", "chat.quota_reserve", "chat.provider"} <= (
        children
    )
    queue = next(s for s in finished if s.name == "chat.start_queue")
    assert queue.attributes["chat.queue_full"] is False  # the only turn: a place at once
    assert all(
        s.context.trace_id == turn.context.trace_id
        for s in finished
        if s.name.startswith("chat.")
        and s.name != "chat.turn"
        and s.parent
        and s.parent.span_id == turn.context.span_id
    )
