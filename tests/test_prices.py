"""Model prices: the built-in table, a MODEL_PRICES file (JSON or TOML) laid over it,
and what a turn's usage costs, cached tokens included; no price, no cost."""

from __future__ import annotations

from pathlib import Path

import pytest

from chat_server.config import ConfigError, load_settings
from chat_server.prices import BUILTIN, BUILTIN_AS_OF, load_prices
from chat_server.providers.base import Usage
from tests.server import make_settings

TOML = """
as_of = "2026-11-30"

[models."house-model"]
input = 2.0
cached_input = 0.5
output = 8.0

[models."gpt-4o-mini"]
input = 1.0
output = 1.0
"""


def test_the_builtin_table_prices_every_default_model() -> None:
    """The default model of each provider has a price, and the table says when it was taken."""
    settings = load_settings(model_prices=None)
    for model in (settings.openai_model, settings.anthropic_model, settings.gemini_model):
        assert model in BUILTIN, model
        assert settings.prices.price(model) is not None
    assert settings.prices.as_of == BUILTIN_AS_OF


def test_cost_of_a_turn_from_a_toml_file(tmp_path: Path) -> None:
    """A file's model is priced per million tokens; OpenAI's cached tokens (inside the
    input count) at the cached rate; the file replaces a built-in price."""
    path = tmp_path / "prices.toml"
    path.write_text(TOML, encoding="utf-8")
    table = load_prices(path)
    usage = Usage(input_tokens=1_000, output_tokens=250, cache_read_tokens=400)
    # 600 uncached at 2.0, 400 cached at 0.5, 250 output at 8.0
    assert table.cost("openai", "house-model", usage) == pytest.approx(
        (600 * 2.0 + 400 * 0.5 + 250 * 8.0) / 1e6
    )
    # No cached price given: cached input costs what input costs.
    assert table.cost("openai", "gpt-4o-mini", usage) == pytest.approx((1_000 + 250) / 1e6)
    assert table.as_of == "2026-11-30"
    assert table.price("claude-sonnet-5-5") == BUILTIN["claude-sonnet-5-5"]  # kept


def test_anthropic_cache_reads_and_writes_are_priced_as_such(tmp_path: Path) -> None:
    """Anthropic reports cache reads and writes apart from input: each at its own rate."""
    path = tmp_path / "prices.json"
    path.write_text(
        '{"models": {"claude-x": {"input": 3, "cached_input": 0.3, "cache_write": 3.75,'
        ' "output": 15}}}',
        encoding="utf-8",
    )
    usage = Usage(
        input_tokens=100, output_tokens=10, cache_read_tokens=1000, cache_creation_tokens=200
    )
    cost = load_prices(path).cost("anthropic", "claude-x", usage)
    assert cost == pytest.approx((100 * 3 + 1000 * 0.3 + 200 * 3.75 + 10 * 15) / 1e6)


def test_an_unknown_model_has_no_cost_and_a_dated_name_takes_its_base_price() -> None:
    """No price: cost None, never a guess; gpt-4o-mini-2024-07-18 is priced as gpt-4o-mini."""
    table = load_prices(None)
    usage = Usage(input_tokens=1000, output_tokens=1000)
    assert table.cost("openai", "gpt-unheard-of", usage) is None
    assert table.cost("local", "rulebook-lookup", usage) is None
    assert table.cost("openai", "gpt-4o-mini-2024-07-18", usage) == table.cost(
        "openai", "gpt-4o-mini", usage
    )


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("p.json", '{"models": {"m": {"input": 1}}}', "models.m.output"),
        ("p.json", '{"models": {"m": {"input": -1, "output": 1}}}', "models.m.input"),
        ("p.json", '{"models": {"m": {"input": 1, "output": 1, "extra": 2}}}', "extra"),
        ("p.json", "{not json", "not valid JSON"),
        ("p.toml", "models = 3", "models"),
        ("p.toml", "[models.m\ninput = 1", "not valid TOML"),
        ("absent.json", None, "cannot read"),
    ],
)
def test_a_bad_price_file_stops_the_start_naming_model_prices(
    tmp_path: Path, name: str, content: str | None, reason: str
) -> None:
    """A malformed or missing MODEL_PRICES file: one line naming the variable and why."""
    path = tmp_path / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        make_settings(tmp_path, model_prices=path)
    message = str(caught.value)
    assert message.startswith("invalid configuration: MODEL_PRICES:")
    assert reason in message and "\n" not in message
