"""``GET /asyncapi.json``: an AsyncAPI 3.0 document of ``/ws/chat`` (CONTRACT §9).

Generated from the models that parse the inbound frames (``frames.py``) and describe
the outbound ones (``frames_out.py``), once per process. Each frame is a message of
the one channel; the server's ``receive`` operation takes the inbound frames and its
``send`` operation the outbound ones. Schemas are the models' JSON Schemas (refs
rewritten to ``#/components/schemas``).
"""

from __future__ import annotations

import functools
from typing import Any, get_args

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from . import __version__
from .frames import InboundFrame
from .frames_out import OUTBOUND_MODELS

__all__ = ["asyncapi_document", "inbound_models"]

REF = "#/components/schemas/{model}"


def inbound_models() -> tuple[type[BaseModel], ...]:
    """The inbound frame models, from the union ``parse_frame`` validates with."""
    union = get_args(InboundFrame)[0]
    return tuple(get_args(union))


def _frame_type(model: type[BaseModel]) -> str:
    (value,) = get_args(model.model_fields["type"].annotation)
    return str(value)


def _message(model: type[BaseModel], direction: str) -> dict[str, Any]:
    kind = _frame_type(model)
    doc = (model.__doc__ or "").strip().splitlines()
    return {
        "name": kind,
        "title": kind,
        "summary": doc[0] if doc else f"the {kind} frame ({direction})",
        "contentType": "application/json",
        "payload": {"$ref": REF.format(model=model.__name__)},
    }


@functools.cache
def asyncapi_document() -> dict[str, Any]:
    inbound, outbound = inbound_models(), OUTBOUND_MODELS
    pairs = [(m, "validation") for m in inbound] + [(m, "serialization") for m in outbound]
    _, schemas = models_json_schema(pairs, ref_template=REF)  # type: ignore[arg-type]
    messages: dict[str, Any] = {}
    keys_in: list[str] = []
    keys_out: list[str] = []
    for models, keys, direction in (
        (inbound, keys_in, "client to server"),
        (outbound, keys_out, "server to client"),
    ):
        for model in models:
            key = f"{'in' if keys is keys_in else 'out'}.{_frame_type(model)}"
            messages[key] = _message(model, direction)
            keys.append(key)
    channel_messages = {k: {"$ref": f"#/components/messages/{k}"} for k in messages}
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "chat-server WebSocket chat",
            "version": __version__,
            "description": (
                "The `/ws/chat` protocol: JSON text frames with a `type`. See docs/protocol.md "
                "for the rules (authentication, sessions, turns, resume, limits)."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "localhost:8000",
                "protocol": "ws",
                "description": "a server started with `chat-server serve`",
            }
        },
        "channels": {
            "chat": {
                "address": "/ws/chat",
                "title": "WebSocket chat",
                "messages": channel_messages,
            }
        },
        "operations": {
            "receiveClientFrames": {
                "action": "receive",
                "channel": {"$ref": "#/channels/chat"},
                "summary": "frames a client sends",
                "messages": [{"$ref": f"#/channels/chat/messages/{k}"} for k in keys_in],
            },
            "sendServerFrames": {
                "action": "send",
                "channel": {"$ref": "#/channels/chat"},
                "summary": "frames the server sends",
                "messages": [{"$ref": f"#/channels/chat/messages/{k}"} for k in keys_out],
            },
        },
        "components": {"schemas": schemas.get("$defs", {}), "messages": messages},
    }
