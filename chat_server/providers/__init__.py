"""Model providers behind one streaming interface (``base.Provider``).

``build_providers`` makes one client per configured provider, in the app's lifespan;
``local`` is always there (it needs no key).
"""

from __future__ import annotations

from ..config import Settings
from .base import Provider
from .local import LocalProvider

__all__ = ["Provider", "build_providers"]


def build_providers(settings: Settings) -> dict[str, Provider]:
    """The configured providers by name; SDK modules are imported only when used."""
    providers: dict[str, Provider] = {
        "local": LocalProvider(token_delay=settings.local_token_delay)
    }
    timeouts = {
        "connect_timeout": settings.provider_connect_timeout,
        "read_timeout": max(settings.provider_first_token_timeout, settings.provider_idle_timeout)
        + 5.0,
    }
    if settings.openai_api_key or settings.openai_base_url:
        from .openai import OpenAIProvider

        providers["openai"] = OpenAIProvider(
            api_key=settings.openai_api_key or "not-needed",
            model=settings.openai_model,
            base_url=settings.openai_base_url,
            **timeouts,
        )
    if settings.anthropic_api_key:
        from .anthropic import AnthropicProvider

        providers["anthropic"] = AnthropicProvider(
            api_key=settings.anthropic_api_key,
            model=settings.anthropic_model,
            base_url=settings.anthropic_base_url,
            **timeouts,
        )
    if settings.gemini_api_key:
        from .gemini import GeminiProvider

        providers["gemini"] = GeminiProvider(
            api_key=settings.gemini_api_key,
            model=settings.gemini_model,
            base_url=settings.gemini_base_url,
            **timeouts,
        )
    return providers
