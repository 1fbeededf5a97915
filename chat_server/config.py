"""Settings: every variable of the contract, from the environment or a ``.env`` file.

``load_settings()`` is the one way to build them; it turns a validation failure into a
``ConfigError`` whose message is one line naming the variable, which the CLI prints
before exiting with status 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from .prices import PriceTable, load_prices

__all__ = ["ConfigError", "Settings", "load_settings"]

ProviderName = Literal["local", "openai", "anthropic", "gemini"]
PROVIDER_NAMES: tuple[str, ...] = ("local", "openai", "anthropic", "gemini")
DEFAULT_DATA_DIR = Path(".chat-data")


class ConfigError(Exception):
    """A configuration value is invalid; the message is one line for an operator."""


class Settings(BaseSettings):
    """The server's configuration. Field names map to upper-case variables."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )
    _prices: PriceTable = PrivateAttr()

    # Storage and coordination
    database_url: str | None = None
    redis_url: str | None = None
    chat_data_dir: Path = DEFAULT_DATA_DIR
    database_prepared_statement_cache: bool = Field(
        default=True,
        description="Turn off for Supabase's transaction pooler (port 6543).",
    )
    database_pool_size: int = Field(default=10, ge=1, le=1000)
    database_timeout: float = Field(
        default=2.5,
        gt=0,
        le=600,
        description="Deadline for one unit of database work on the request path.",
    )
    auto_migrate: bool = True
    seed_demo: bool | None = Field(
        default=None, description="Seed demo games; default: only on the embedded SQLite."
    )
    redis_timeout: float = Field(default=1.0, gt=0, le=60)
    redis_max_connections: int = Field(
        default=32,
        ge=2,
        le=100_000,
        description="Per instance; instances x this must fit the Redis plan's client limit.",
    )
    redis_idle_timeout: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Pooled Redis connections unused this long are closed.",
    )
    redis_cluster: bool = Field(
        default=False, description="REDIS_URL names one node of a Redis Cluster."
    )
    redis_prefix: str = Field(default="chat", pattern=r"^[A-Za-z0-9_.-]{1,40}$")
    quota_fail_open: bool = False
    registry_ttl: float = Field(default=15.0, gt=0, le=3600)
    registry_heartbeat: float = Field(default=5.0, gt=0, le=600)
    orphan_sweep_interval: float = Field(default=30.0, gt=0, le=3600)

    # Auth
    supabase_jwt_secret: str | None = None
    supabase_url: str | None = None
    supabase_jwks_url: str | None = None
    supabase_service_key: str | None = None
    jwt_leeway: float = Field(default=10.0, ge=0, le=300)
    role_cache_ttl: float = Field(default=30.0, ge=0, le=3600)
    environment: str = "dev"

    # Providers
    default_provider: ProviderName | None = None
    provider_fallback: str = ""
    openai_api_key: str | None = None
    openai_base_url: str | None = None
    openai_model: str = "gpt-4o-mini"
    anthropic_api_key: str | None = None
    anthropic_base_url: str | None = None
    anthropic_model: str = "claude-sonnet-5-5"
    gemini_api_key: str | None = None
    gemini_base_url: str | None = None
    gemini_model: str = "gemini-2.5-flash"
    model_prices: Path | None = Field(
        default=None, description="JSON or TOML file of model prices over the built-in table."
    )
    provider_connect_timeout: float = Field(default=5.0, gt=0, le=120)
    provider_first_token_timeout: float = Field(default=30.0, gt=0, le=600)
    provider_idle_timeout: float = Field(default=30.0, gt=0, le=600)
    provider_max_output_tokens: int = Field(default=1024, ge=1, le=64000)
    local_token_delay: float = Field(default=0.02, ge=0, le=5)
    history_turns: int = Field(default=6, ge=0, le=100)
    history_chars: int = Field(default=8000, ge=0, le=1_000_000)
    grounding_passages: int = Field(default=6, ge=1, le=20)

    # Documents (rulebooks, FAQs, errata)
    document_max_bytes: int = Field(
        default=20 * 1024 * 1024,
        ge=1024,
        le=1024**3,
        description="The largest document file an admin may upload (PDF, Markdown, text).",
    )
    documents_bucket: str = Field(
        default="documents",
        pattern=r"^[a-z0-9][a-z0-9._-]{1,62}$",
        description="The Supabase Storage bucket of original documents "
        "(with SUPABASE_URL and SUPABASE_SERVICE_KEY).",
    )

    # BoardGameGeek
    bgg_base_url: str = "https://boardgamegeek.com/xmlapi2"
    bgg_api_token: str | None = None
    bgg_timeout: float = Field(default=10.0, gt=0, le=120)
    bgg_max_wait: float = Field(default=30.0, ge=0, le=600)

    # WebSocket limits
    ws_auth_timeout: float = Field(default=10.0, gt=0, le=600)
    ws_max_frame_bytes: int = Field(default=65536, ge=256, le=16 * 1024 * 1024)
    ws_max_text_chars: int = Field(default=4000, ge=1, le=1_000_000)
    ws_max_frames_per_second: float = Field(default=20.0, gt=0, le=10_000)
    ws_frame_burst: int = Field(default=40, ge=1, le=100_000)
    ws_max_connections: int = Field(default=10_000, ge=1, le=1_000_000)
    http_max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=1024**3)
    ws_max_connections_per_user: int = Field(default=10, ge=1, le=100_000)
    ws_resume_grace: float = Field(default=20.0, ge=0, le=3600)
    ws_max_delta_chars: int = Field(default=8192, ge=1, le=16 * 1024 * 1024)
    ws_allowed_origins: str = ""
    ws_send_timeout: float = Field(default=30.0, gt=0, le=3600)
    #: a comment line on an idle AI SDK SSE stream this often (load balancers close at 60 s)
    sse_heartbeat: float = Field(default=10.0, gt=0, le=15)
    ws_ping_interval: float = Field(default=20.0, gt=0, le=3600)
    ws_ping_timeout: float = Field(default=20.0, gt=0, le=3600)
    shutdown_grace: float = Field(default=30.0, ge=0, le=3600)

    # Connections before their first request (admission.py)
    http_header_timeout: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="Close a connection without a whole request head, or idle, this long.",
    )
    http_max_pending: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description="Connections without a first request head or WebSocket auth; past it, 503.",
    )
    fd_reserve: int = Field(
        default=128,
        ge=0,
        le=1_000_000,
        description="File descriptors kept for backing services; new connections refused within.",
    )

    # Process
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator(
        "database_url",
        "redis_url",
        "supabase_jwt_secret",
        "supabase_url",
        "supabase_jwks_url",
        "openai_api_key",
        "anthropic_api_key",
        "gemini_api_key",
        "openai_base_url",
        "anthropic_base_url",
        "gemini_base_url",
        "bgg_api_token",
        "default_provider",
        "model_prices",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("chat_data_dir", mode="before")
    @classmethod
    def _empty_is_default_dir(cls, value: object) -> object:
        return DEFAULT_DATA_DIR if isinstance(value, str) and not value.strip() else value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme = value.split("://", 1)[0].lower() if "://" in value else ""
        if scheme not in {
            "postgres",
            "postgresql",
            "postgresql+asyncpg",
            "sqlite",
            "sqlite+aiosqlite",
        }:
            raise ValueError("must be a postgresql:// URL or sqlite:///path")
        return value

    @field_validator("redis_cluster")
    @classmethod
    def _check_redis_cluster(cls, value: bool, info: ValidationInfo) -> bool:
        url = info.data.get("redis_url")
        if value and not (url or "").startswith(("redis://", "rediss://")):
            raise ValueError("needs REDIS_URL set to a redis:// or rediss:// URL of one node")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("provider_fallback")
    @classmethod
    def _check_fallback(cls, value: str) -> str:
        names = [n.strip() for n in value.split(",") if n.strip()]
        for name in names:
            if name not in PROVIDER_NAMES:
                raise ValueError(f"unknown provider {name!r}; known: {', '.join(PROVIDER_NAMES)}")
        return ",".join(names)

    @model_validator(mode="after")
    def _load_prices(self) -> Settings:
        try:
            self._prices = load_prices(self.model_prices)
        except ValueError as exc:
            # Raised as the field's own error so the message names MODEL_PRICES.
            raise ValidationError.from_exception_data(
                "Settings",
                [
                    {
                        "type": "value_error",
                        "loc": ("model_prices",),
                        "input": str(self.model_prices),
                        "ctx": {"error": str(exc)},
                    }
                ],
            ) from None
        return self

    @property
    def prices(self) -> PriceTable:
        """The model prices: the built-in table with ``MODEL_PRICES`` laid over it."""
        return self._prices

    @model_validator(mode="after")
    def _default_provider(self) -> Settings:
        if self.default_provider is None:
            for name, key in (
                ("openai", self.openai_api_key),
                ("anthropic", self.anthropic_api_key),
                ("gemini", self.gemini_api_key),
            ):
                if key:
                    self.default_provider = name  # type: ignore[assignment]
                    break
            else:
                self.default_provider = "local"
        return self

    @property
    def fallback_providers(self) -> list[str]:
        return [n for n in self.provider_fallback.split(",") if n]

    @property
    def allowed_origins(self) -> frozenset[str] | None:
        """``WS_ALLOWED_ORIGINS`` as a set (lower case, no trailing slash); None: any."""
        origins = {o.strip().rstrip("/").lower() for o in self.ws_allowed_origins.split(",")}
        origins.discard("")
        return frozenset(origins) or None

    @property
    def jwks_url(self) -> str | None:
        if self.supabase_jwks_url:
            return self.supabase_jwks_url
        if self.supabase_url:
            return self.supabase_url.rstrip("/") + "/auth/v1/.well-known/jwks.json"
        return None

    @property
    def jwt_issuer(self) -> str | None:
        return self.supabase_url.rstrip("/") + "/auth/v1" if self.supabase_url else None

    @property
    def is_prod(self) -> bool:
        return self.environment.lower() in {"prod", "production"}


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment (and ``.env``), raising ``ConfigError``."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = err.get("loc") or ("settings",)
        name = str(loc[0]).upper()
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        value = err.get("input")
        shown = (
            f" (got {value!r})"
            if isinstance(value, str | int | float) and not _secret(name)
            else ""
        )
        raise ConfigError(f"invalid configuration: {name}: {msg}{shown}") from None
    except (OSError, UnicodeDecodeError) as exc:
        # Only the .env file is read here; say so rather than show a traceback.
        reason = exc.reason if isinstance(exc, UnicodeDecodeError) else exc.strerror or str(exc)
        raise ConfigError(f"invalid configuration: .env cannot be read: {reason}") from None


def _secret(name: str) -> bool:
    return any(part in name for part in ("KEY", "SECRET", "TOKEN", "PASSWORD", "URL"))
