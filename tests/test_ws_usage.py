"""Usage and cost of turns, end to end through the real provider SDKs: who answered,
tokens of cancelled and cut turns, prices from MODEL_PRICES, and the stored rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from chat_server.accounting import CHARS_PER_TOKEN
from tests.server import RunningServer, running_server
from tests.test_ws_providers import (
    anthropic_up,
    catan,
    history,
    openai_settings,
    openai_up,
    settings_for,
)
from tests.upstreams import AnthropicUpstream, GeminiUpstream, OpenAIUpstream, Script, Upstream
from tests.wsclient import ws_client

__all__ = ["anthropic_up", "openai_up"]  # the fixtures, used by name


def text_of(frames: list[dict[str, Any]]) -> str:
    return "".join(f["text"] for f in frames if f["type"] == "turn.delta")


def tokens_for(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN)


def usage_rows(server: RunningServer, group_by: str) -> dict[str, dict[str, Any]]:
    admin = {"Authorization": f"Bearer {server.token('root', 'admin')}"}
    response = httpx.get(
        f"{server.url}/admin/usage", params={"group_by": group_by}, headers=admin, timeout=5
    )
    assert response.status_code == 200, response.text
    return {r["key"]: r for r in response.json()["rows"]}


async def test_fallback_names_the_provider_and_model_that_answered(
    tmp_path: Path, openai_up: OpenAIUpstream, anthropic_up: AnthropicUpstream
) -> None:
    """OpenAI fails before a token, Anthropic answers: turn.completed names anthropic and
    its model, priced from the built-in table, and the usage row is Anthropic's."""
    openai_up.script = Script(fail_status=500)
    anthropic_up.script = Script(tokens=["From ", "Claude."], input_tokens=200)
    settings = openai_settings(
        tmp_path,
        openai_up,
        anthropic_api_key="sk-ant",
        anthropic_base_url=anthropic_up.base_url,
        provider_fallback="openai,anthropic",
    )
    with running_server(settings) as server:
        async with ws_client(server.ws_url, server.token()) as client:
            ready = await client.start(catan(server), provider="openai")
            frames = await client.ask("How do I win?")
        rows = usage_rows(server, "model")
    assert ready["session"]["provider"] == "openai"
    completed = frames[-1]
    assert (completed["provider"], completed["model"]) == ("anthropic", "claude-sonnet-5-5")
    # claude-sonnet-5-5: $3 input, $15 output per million tokens
    assert completed["usage"] == {
        "input_tokens": 200,
        "output_tokens": 2,
        "estimated": False,
        "cost_usd": round((200 * 3 + 2 * 15) / 1_000_000, 8),
    }
    assert set(rows) == {"claude-sonnet-5-5"}
    assert rows["claude-sonnet-5-5"]["cost_usd"] == completed["usage"]["cost_usd"]


async def test_cost_comes_from_the_model_prices_file(
    tmp_path: Path, openai_up: OpenAIUpstream
) -> None:
    """A MODEL_PRICES file prices a model the built-in table lacks, cached input apart."""
    prices = tmp_path / "prices.toml"
    prices.write_text(
        'as_of = "2026-12-01"\n[models."gpt-test"]\ninput = 2.5\ncached_input = 1.0\noutput = 10\n',
        encoding="utf-8",
    )
    openai_up.script = Script(
        tokens=[f"t{i} " for i in range(60)], input_tokens=1000, cache_read_tokens=200
    )
    settings = openai_settings(tmp_path, openai_up, openai_model="gpt-test", model_prices=prices)
    with running_server(settings) as server:
        async with ws_client(server.ws_url, server.token()) as client:
            await client.start(catan(server))
            completed = (await client.ask("robber"))[-1]
    # 800 uncached input at 2.5, 200 cached at 1.0, 60 output at 10 (per million)
    assert completed["usage"] == {
        "input_tokens": 1000,
        "output_tokens": 60,
        "estimated": False,
        "cost_usd": round((800 * 2.5 + 200 * 1.0 + 60 * 10) / 1_000_000, 8),
    }


async def test_a_model_without_a_price_costs_null(
    tmp_path: Path, openai_up: OpenAIUpstream
) -> None:
    """A model in no price table: cost_usd null in the frame and in the report."""
    settings = openai_settings(tmp_path, openai_up, openai_model="gpt-nobody-priced")
    with running_server(settings) as server:
        async with ws_client(server.ws_url, server.token()) as client:
            await client.start(catan(server))
            completed = (await client.ask("robber"))[-1]
        row = usage_rows(server, "model")["gpt-nobody-priced"]
    assert completed["usage"]["cost_usd"] is None
    assert (row["cost_usd"], row["unpriced"], row["turns"]) == (None, 1, 1)


async def test_a_cancelled_anthropic_turn_counts_its_tokens(
    tmp_path: Path, anthropic_up: AnthropicUpstream
) -> None:
    """Cancelled mid-answer: input tokens from message_start, output estimated from the
    streamed text, estimated true, priced, and stored as a cancelled turn."""
    anthropic_up.script = Script(
        tokens=[f"word{i} " for i in range(2000)],
        token_delay=0.01,
        input_tokens=500,
        cache_read_tokens=40,
    )
    settings = settings_for(
        tmp_path, anthropic_api_key="sk-ant", anthropic_base_url=anthropic_up.base_url
    )
    with running_server(settings) as server:
        async with ws_client(server.ws_url, server.token()) as client:
            await client.start(catan(server), provider="anthropic")
            await client.send({"type": "message", "text": "robber"})
            await client.expect("turn.started")
            for _ in range(3):
                await client.expect("turn.delta")
            await client.send({"type": "cancel"})
            frames = await client.until("turn.completed")
        row = usage_rows(server, "provider")["anthropic"]
    completed = frames[-1]
    assert completed["finish_reason"] == "cancelled"
    output = completed["usage"]["output_tokens"]
    assert output >= tokens_for("word0 word1 word2 ") and output > 1
    assert completed["usage"]["input_tokens"] == 540  # 500 + 40 cache reads
    assert completed["usage"]["estimated"] is True
    assert completed["usage"]["cost_usd"] == round((500 * 3 + 40 * 0.3 + output * 15) / 1e6, 8)
    assert (row["turns"], row["cancelled"], row["estimated"]) == (1, 1, 1)
    assert (row["input_tokens"], row["output_tokens"]) == (540, output)


async def test_a_cut_openai_turn_estimates_its_tokens(
    tmp_path: Path, openai_up: OpenAIUpstream
) -> None:
    """A stream dropped after two tokens (no usage report): both counts estimated, from
    the request sent and the text streamed, and priced."""
    openai_up.script = Script(tokens=["one ", "two ", "three ", "four "], drop_after=2)
    with running_server(openai_settings(tmp_path, openai_up)) as server:
        async with ws_client(server.ws_url, server.token()) as client:
            await client.start(catan(server))
            frames = await client.ask("robber")
        row = usage_rows(server, "provider")["openai"]
    usage = frames[-1]["usage"]
    assert frames[-1]["finish_reason"] == "error"
    assert usage["output_tokens"] == tokens_for("one two ") == 2
    sent = openai_up.requests[0].body["messages"]
    sent_chars = sum(len(m["content"]) for m in sent if isinstance(m["content"], str))
    assert usage["input_tokens"] >= tokens_for("x" * sent_chars) * 0.8
    assert usage["estimated"] is True
    # gpt-4o-mini: $0.15 input, $0.60 output per million
    assert usage["cost_usd"] == round((usage["input_tokens"] * 0.15 + 2 * 0.6) / 1e6, 8)
    assert (row["errors"], row["output_tokens"], row["estimated"]) == (1, 2, 1)


async def test_a_refused_request_counts_no_tokens(
    tmp_path: Path, openai_up: OpenAIUpstream
) -> None:
    """A provider that refuses before anything streams (HTTP 500): zero tokens, not estimated."""
    openai_up.script = Script(fail_status=500)
    with running_server(openai_settings(tmp_path, openai_up)) as server:
        async with ws_client(server.ws_url, server.token()) as client:
            await client.start(catan(server))
            frames = await client.ask("robber")
    assert frames[-1]["usage"] == {
        "input_tokens": 0,
        "output_tokens": 0,
        "estimated": False,
        "cost_usd": 0.0,
    }


async def test_a_cut_gemini_turn_keeps_the_reported_prompt_tokens(tmp_path: Path) -> None:
    """Gemini's first chunk counts the prompt: a stream cut later keeps that input count
    and estimates only the output."""
    with GeminiUpstream() as upstream:
        upstream.script = Script(tokens=["Gem", "ini ", "says ", "more"], input_tokens=432)
        upstream.script.drop_after = 2
        settings = settings_for(tmp_path, gemini_api_key="g-key", gemini_base_url=upstream.base_url)
        with running_server(settings) as server:
            async with ws_client(server.ws_url, server.token()) as client:
                await client.start(catan(server), provider="gemini")
                frames = await client.ask("How do I win?")
    usage = frames[-1]["usage"]
    assert frames[-1]["finish_reason"] == "error"
    assert text_of(frames) == "Gemini "
    assert (usage["input_tokens"], usage["output_tokens"]) == (432, tokens_for("Gemini "))
    assert usage["estimated"] is True


UPSTREAMS: dict[str, type[Upstream]] = {
    "openai": OpenAIUpstream,
    "anthropic": AnthropicUpstream,
    "gemini": GeminiUpstream,
}


@pytest.mark.parametrize("figure", ["100000000000000000000", "1e400"], ids=["1e20", "1e400"])
@pytest.mark.parametrize("provider", list(UPSTREAMS))
async def test_a_usage_count_out_of_range_is_a_provider_error_and_the_answer_is_stored(
    tmp_path: Path, provider: str, figure: str
) -> None:
    """An upstream reporting 10**20 or 1e400 output tokens after its text: error
    provider_error, turn.completed error with the output estimated from the text, and
    the answer stored with status error (not left streaming), its usage row counted."""
    answer = "Roll the dice."
    with UPSTREAMS[provider]() as upstream:
        upstream.script = Script(
            tokens=["Roll ", "the ", "dice."], raw_numbers={"output_tokens": figure}
        )
        keys = {f"{provider}_api_key": "key", f"{provider}_base_url": upstream.base_url}
        with running_server(settings_for(tmp_path, **keys)) as server:
            async with ws_client(server.ws_url, server.token()) as client:
                ready = await client.start(catan(server), provider=provider)
                frames = await client.ask("How do I win?")
                stored = await history(client, ready["session"]["id"])
            row = usage_rows(server, "provider")[provider]
    assert [f["type"] for f in frames][-2:] == ["error", "turn.completed"]
    assert (frames[-2]["code"], frames[-2]["turn_id"]) == ("provider_error", frames[-1]["turn_id"])
    completed = frames[-1]
    assert completed["finish_reason"] == "error"
    assert text_of(frames) == answer
    assert completed["usage"]["output_tokens"] == tokens_for(answer)
    assert completed["usage"]["estimated"] is True
    assert (stored[-1]["role"], stored[-1]["status"], stored[-1]["content"]) == (
        "assistant",
        "error",
        answer,
    )
    assert (row["turns"], row["errors"], row["output_tokens"]) == (1, 1, tokens_for(answer))
