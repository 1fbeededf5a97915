"""OpenTelemetry traces, when the ``otel`` extra is installed (``pip install
chat-server[otel]``); without it every call here is a no-op.

One span per turn (``chat.turn``), with the flag check, the quota reservation, the
storage writes and each provider call as children. The exporter is the application's
business: configure the OpenTelemetry SDK (e.g. ``opentelemetry-instrument`` or
``OTEL_*`` variables); this module only uses the global tracer provider.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

try:  # the optional extra
    from opentelemetry import trace as _trace
    from opentelemetry.trace import Status, StatusCode
except ImportError:  # pragma: no cover - exercised when the extra is absent
    _trace = None  # type: ignore[assignment]

__all__ = ["TurnSpan", "start_turn_span"]


class TurnSpan:
    """A turn's span, or nothing when OpenTelemetry is not installed or the span is not
    recorded (no SDK configured, or the trace sampled out)."""

    def __init__(self, span: Any) -> None:
        self._span = span

    @contextmanager
    def child(self, name: str, **attributes: Any) -> Iterator[None]:
        """A child span around a step of the turn; an exception marks it as an error."""
        if self._span is None or _trace is None:
            yield
            return
        tracer = _trace.get_tracer("chat_server")
        context = _trace.set_span_in_context(self._span)
        with tracer.start_as_current_span(
            name, context=context, attributes=_clean(attributes), record_exception=True
        ):
            yield

    def event(self, name: str) -> None:
        """Mark a moment of the turn (the first token): where its latency went."""
        if self._span is not None:
            self._span.add_event(name)

    def set(self, **attributes: Any) -> None:
        if self._span is not None:
            self._span.set_attributes(_clean(attributes))

    def end(self, *, error: str | None = None, **attributes: Any) -> None:
        """End the turn's span (once); ``error`` names the failure, if any."""
        if self._span is None:
            return
        self._span.set_attributes(_clean(attributes))
        if error is not None and _trace is not None:
            self._span.set_status(Status(StatusCode.ERROR, error))
        self._span.end()
        self._span = None


def start_turn_span(**attributes: Any) -> TurnSpan:
    if _trace is None:
        return TurnSpan(None)
    tracer = _trace.get_tracer("chat_server")
    span = tracer.start_span("chat.turn", attributes=_clean(attributes))
    # Not recorded: its children would not be either. Skipping them saves about 3 % of
    # a turn's CPU (``bench/run.py --profile-turn``: no-op spans and their contexts).
    return TurnSpan(span if span.is_recording() else None)


def _clean(attributes: dict[str, Any]) -> dict[str, Any]:
    return {f"chat.{k}": v for k, v in attributes.items() if v is not None}
