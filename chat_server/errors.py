"""The one exception tree of the app.

Every domain error carries the contract's ``code`` (the WebSocket ``error`` frame's
``code``), the REST ``error_code`` and the HTTP status it maps to. Handlers raise;
``http_api.errors`` and ``chat_server.ws`` turn them into responses and frames, in one
place each.

    ChatServerError
    ├── Unauthorized            (unauthorized, 401)
    │   └── TokenExpired        (token_expired, 401)
    ├── Forbidden               (forbidden, 403)
    ├── NotFound                (not_found, 404)
    ├── Conflict                (conflict, 409)
    ├── InvalidInput            (invalid_frame / 422)
    ├── TooLarge                (payload_too_large, 413): an upload over its limit
    ├── RequestTimeout          (request_timeout, 408): an upload that did not arrive in time
    ├── SessionRequired         (session_required, 409)
    ├── TurnInProgress          (turn_in_progress, 409)
    ├── FeatureDisabled         (feature_disabled, 403)
    ├── QuotaExceeded           (quota_exceeded, 429)
    ├── RateLimited             (rate_limited, 429)
    ├── Unavailable             (unavailable, 503): our database or Redis is down
    ├── ShuttingDown            (server_shutting_down, 503)
    ├── UpstreamError           (upstream_error, 502): BoardGameGeek and the like
    └── ProviderError           (provider_error, 502)
        └── ProviderUnavailable (provider_unavailable, 503)
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "ChatServerError",
    "Conflict",
    "FeatureDisabled",
    "Forbidden",
    "InvalidInput",
    "NotFound",
    "ProviderError",
    "ProviderUnavailable",
    "QuotaExceeded",
    "RateLimited",
    "RequestTimeout",
    "SessionRequired",
    "ShuttingDown",
    "TokenExpired",
    "TooLarge",
    "TurnInProgress",
    "Unauthorized",
    "Unavailable",
    "UpstreamError",
]


class ChatServerError(Exception):
    """Root of every error the app raises on purpose."""

    code: ClassVar[str] = "internal_error"
    status_code: ClassVar[int] = 500
    default_message: ClassVar[str] = "internal error"

    def __init__(
        self,
        message: str | None = None,
        *,
        error_code: str | None = None,
        context: dict[str, Any] | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.error_code = error_code or self.code.upper()
        self.context = context or {}
        super().__init__(self.message)


class Unauthorized(ChatServerError):
    code = "unauthorized"
    status_code = 401
    default_message = "missing or invalid token"


class TokenExpired(Unauthorized):
    code = "token_expired"
    default_message = "token expired"


class Forbidden(ChatServerError):
    code = "forbidden"
    status_code = 403
    default_message = "not allowed"


class NotFound(ChatServerError):
    code = "not_found"
    status_code = 404
    default_message = "not found"


class Conflict(ChatServerError):
    code = "conflict"
    status_code = 409
    default_message = "conflict"


class InvalidInput(ChatServerError):
    code = "invalid_frame"
    status_code = 422
    default_message = "invalid input"

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("error_code", "VALIDATION_ERROR")
        super().__init__(message, **kwargs)


class BadRequest(ChatServerError):
    """A request the server cannot make sense of (a malformed header, say): 400."""

    code = "invalid_frame"
    status_code = 400
    default_message = "bad request"

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("error_code", "BAD_REQUEST")
        super().__init__(message, **kwargs)


class TooLarge(ChatServerError):
    code = "payload_too_large"
    status_code = 413
    default_message = "request body too large"


class RequestTimeout(ChatServerError):
    code = "request_timeout"
    status_code = 408
    default_message = "the request body did not arrive in time"


class SessionRequired(ChatServerError):
    code = "session_required"
    status_code = 409
    default_message = "start or resume a session first"


class TurnInProgress(ChatServerError):
    code = "turn_in_progress"
    status_code = 409
    default_message = "a turn is already running in this session"


class FeatureDisabled(ChatServerError):
    code = "feature_disabled"
    status_code = 403
    default_message = "this feature is not enabled for you"


class QuotaExceeded(ChatServerError):
    code = "quota_exceeded"
    status_code = 429
    default_message = "daily quota reached"


class RateLimited(ChatServerError):
    code = "rate_limited"
    status_code = 429
    default_message = "too many requests"


class Unavailable(ChatServerError):
    code = "unavailable"
    status_code = 503
    default_message = "a backing service is unavailable"


class ShuttingDown(ChatServerError):
    code = "server_shutting_down"
    status_code = 503
    default_message = "the server is restarting; reconnect in a moment"


class UpstreamError(ChatServerError):
    code = "upstream_error"
    status_code = 502
    default_message = "an upstream service failed"


class ProviderError(ChatServerError):
    """A provider failed: a bad status or a malformed stream."""

    code = "provider_error"
    status_code = 502
    default_message = "the model provider failed"


class ProviderUnavailable(ProviderError):
    """A provider is overloaded or unreachable: 429, 503, connect errors, timeouts, drops."""

    code = "provider_unavailable"
    status_code = 503
    default_message = "the model provider is unavailable"
