"""Configuration as an operator meets it: variables, a ``.env`` file, and bad values.

The subprocess tests run ``python -m chat_server`` with an environment built here (the
outer DATABASE_URL/REDIS_URL never leak in) and a temporary working directory, so a
``.env`` is read only when a test writes one.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from chat_server.config import ConfigError, Settings, load_settings

# The contract lives beside the checkout (``../shared/CONTRACT.md``), where CI puts it too.
CONTRACT = Path(__file__).resolve().parents[2] / "shared" / "CONTRACT.md"
TIMEOUT = 60


def clean_env(tmp_path: Path, **values: str) -> dict[str, str]:
    """Just enough environment to run the CLI, plus ``values``."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "CHAT_DATA_DIR": str(tmp_path / "data"),
    }
    env.update(values)
    return env


def run_cli(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m chat_server ARGS`` in ``tmp_path``, with a timeout."""
    return subprocess.run(
        [sys.executable, "-m", "chat_server", *args],
        env=env if env is not None else clean_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def contract_variables() -> list[str]:
    """The variable names of CONTRACT §5 (Configuration)."""
    if not CONTRACT.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CONTRACT} is missing (CI puts shared/ beside the checkout)")
        pytest.skip(f"{CONTRACT} is not beside this checkout")
    text = CONTRACT.read_text(encoding="utf-8")
    section = re.search(r"^## 5\..*?(?=^## 6\.)", text, flags=re.M | re.S)
    assert section, "CONTRACT.md has no section 5"
    return sorted(set(re.findall(r"`([A-Z][A-Z0-9_]{2,})`", section.group(0))))


@pytest.fixture
def bare_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No configuration variable in the environment and no ``.env`` in the cwd."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- load_settings, in process ----------------------------------------------------------


def test_every_contract_variable_is_a_setting() -> None:
    """Every variable the contract documents is read by Settings."""
    names = contract_variables()
    assert len(names) >= 30, names  # the section was really parsed
    missing = [n for n in names if n.lower() not in Settings.model_fields]
    assert not missing, f"CONTRACT §5 variables without a Settings field: {missing}"


@pytest.mark.usefixtures("bare_env")
def test_every_contract_variable_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Setting a contract variable in the environment changes the matching setting."""
    prices = tmp_path / "prices.json"
    prices.write_text('{"models": {}}', encoding="utf-8")
    samples = {
        "MODEL_PRICES": str(prices),
        "DATABASE_URL": "postgresql://u@db.example/x",
        "REDIS_URL": "redis://cache.example:6380/2",
        "DEFAULT_PROVIDER": "gemini",
        "PROVIDER_FALLBACK": "anthropic,local",
        "HOST": "0.0.0.0",
        "PORT": "8123",
        "LOG_LEVEL": "debug",
        "CHAT_DATA_DIR": "/srv/chat",
        "DOCUMENT_MAX_BYTES": "30000000",
    }
    for name in contract_variables():
        default = getattr(load_settings(), name.lower())
        numeric = isinstance(default, int | float)
        value = samples.get(name) or ("300" if numeric else f"value-of-{name.lower()}")
        monkeypatch.setenv(name, value)
        got = getattr(load_settings(), name.lower())
        assert got == float(value) if numeric else str(got) == value, (name, got)
        monkeypatch.delenv(name)


@pytest.mark.usefixtures("bare_env")
def test_contract_defaults() -> None:
    """With nothing set, the defaults are the ones the contract promises."""
    settings = load_settings()
    assert settings.database_url is None
    assert settings.redis_url is None
    assert settings.environment == "dev"
    assert settings.bgg_base_url == "https://boardgamegeek.com/xmlapi2"
    assert settings.ws_auth_timeout == 10
    assert settings.ws_max_frame_bytes == 65536
    assert settings.ws_max_text_chars == 4000
    assert settings.ws_max_frames_per_second == 20
    assert settings.ws_frame_burst == 40
    assert settings.ws_max_connections_per_user == 10
    assert settings.ws_resume_grace == 20
    assert settings.jwt_leeway == 10
    assert settings.fallback_providers == []


@pytest.mark.usefixtures("bare_env")
def test_default_provider_is_local_without_keys() -> None:
    """No provider key configured: answers come from the offline `local` provider."""
    assert load_settings().default_provider == "local"


@pytest.mark.usefixtures("bare_env")
def test_default_provider_follows_the_configured_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """OPENAI_API_KEY alone makes `openai` the default; ANTHROPIC_API_KEY alone, `anthropic`."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert load_settings().default_provider == "openai"
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    assert load_settings().default_provider == "anthropic"


@pytest.mark.usefixtures("bare_env")
def test_explicit_default_provider_wins_and_empty_key_is_unset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DEFAULT_PROVIDER beats the key guess, and an empty key counts as no key."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("DEFAULT_PROVIDER", "local")
    assert load_settings().default_provider == "local"
    monkeypatch.delenv("DEFAULT_PROVIDER")
    monkeypatch.setenv("OPENAI_API_KEY", "  ")
    settings = load_settings()
    assert settings.openai_api_key is None
    assert settings.default_provider == "local"


@pytest.mark.usefixtures("bare_env")
def test_values_are_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    """LOG_LEVEL ignores case, PROVIDER_FALLBACK is trimmed, empty CHAT_DATA_DIR is the default."""
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    monkeypatch.setenv("PROVIDER_FALLBACK", " openai , anthropic ,")
    monkeypatch.setenv("CHAT_DATA_DIR", "")
    settings = load_settings()
    assert settings.log_level == "warning"
    assert settings.fallback_providers == ["openai", "anthropic"]
    assert settings.chat_data_dir == Path(".chat-data")


@pytest.mark.usefixtures("bare_env")
def test_supabase_url_gives_issuer_and_jwks(monkeypatch: pytest.MonkeyPatch) -> None:
    """SUPABASE_URL (with or without a trailing slash) gives the Auth issuer and JWKS URL."""
    monkeypatch.setenv("SUPABASE_URL", "https://abc.supabase.co/")
    settings = load_settings()
    assert settings.jwt_issuer == "https://abc.supabase.co/auth/v1"
    assert settings.jwks_url == "https://abc.supabase.co/auth/v1/.well-known/jwks.json"
    monkeypatch.setenv("SUPABASE_JWKS_URL", "https://keys.example/jwks.json")
    assert load_settings().jwks_url == "https://keys.example/jwks.json"


@pytest.mark.usefixtures("bare_env")
def test_load_settings_error_is_one_line_without_the_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bad URL raises ConfigError naming the variable, never echoing its password."""
    monkeypatch.setenv("DATABASE_URL", "mysql://admin:hunter2@db.example/chat")
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "DATABASE_URL" in message
    assert "hunter2" not in message
    assert "\n" not in message


@pytest.mark.usefixtures("bare_env")
def test_overrides_beat_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keyword overrides (the CLI's --host/--port) win over the environment and are validated."""
    monkeypatch.setenv("PORT", "9000")
    assert load_settings(port=9100).port == 9100
    with pytest.raises(ConfigError, match="PORT"):
        load_settings(port=70000)


# -- the CLI with bad values ---------------------------------------------------------------

BAD_VALUES = [
    ("PORT", "abc"),
    ("PORT", "70000"),
    ("DATABASE_URL", "mysql://x"),
    ("REDIS_URL", "http://localhost:6379"),
    ("WS_MAX_FRAME_BYTES", "lots"),
    ("WS_MAX_FRAME_BYTES", "-1"),
    ("WS_AUTH_TIMEOUT", "0"),
    ("LOG_LEVEL", "chatty"),
    ("PROVIDER_FALLBACK", "openai,skynet"),
    ("DEFAULT_PROVIDER", "skynet"),
    ("REDIS_CLUSTER", "true"),  # a cluster with no REDIS_URL to find it by
]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
@pytest.mark.parametrize("command", [[], ["migrate"], ["token", "--user", "u"]])
def test_bad_value_stops_with_one_line(
    tmp_path: Path, name: str, value: str, command: list[str]
) -> None:
    """A bad variable stops any command with exit 2 and one stderr line naming it."""
    result = run_cli(tmp_path, *command, env=clean_env(tmp_path, **{name: value}))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert name in lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "data").exists()  # nothing was started or created


@pytest.mark.parametrize(
    ("name", "value", "secret"),
    [
        ("DATABASE_URL", "mysql://admin:hunter2@db.example/chat", "hunter2"),
        ("REDIS_URL", "http://:hunter2@cache.example:6379/0", "hunter2"),
    ],
)
def test_bad_url_does_not_echo_its_password(
    tmp_path: Path, name: str, value: str, secret: str
) -> None:
    """The error line for a bad URL names the variable but not the password in it."""
    result = run_cli(tmp_path, "migrate", env=clean_env(tmp_path, **{name: value}))
    assert result.returncode == 2
    assert name in result.stderr
    assert secret not in result.stderr
    assert secret not in result.stdout


def test_dotenv_in_cwd_is_read(tmp_path: Path) -> None:
    """A `.env` in the working directory configures the CLI (here: a bad PORT)."""
    (tmp_path / ".env").write_text("# local settings\nPORT=not-a-port\n", encoding="utf-8")
    result = run_cli(tmp_path, "token", "--user", "u")
    assert result.returncode == 2
    assert "PORT" in result.stderr
    assert "not-a-port" in result.stderr


def test_environment_beats_dotenv(tmp_path: Path) -> None:
    """A variable set in the environment wins over the same one in `.env`."""
    (tmp_path / ".env").write_text("ENVIRONMENT=prod\n", encoding="utf-8")
    refused = run_cli(tmp_path, "token", "--user", "u")
    assert refused.returncode != 0
    assert "prod" in refused.stderr
    allowed = run_cli(tmp_path, "token", "--user", "u", env=clean_env(tmp_path, ENVIRONMENT="dev"))
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout.count(".") == 2


def test_unreadable_dotenv_is_one_line(tmp_path: Path) -> None:
    """A `.env` that is not UTF-8 stops the start with one line, not a traceback."""
    (tmp_path / ".env").write_bytes(b"PORT=80\xff\n")
    result = run_cli(tmp_path, "token", "--user", "u")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert ".env" in lines[0]
