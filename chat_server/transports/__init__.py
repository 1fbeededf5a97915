"""What every transport adapter shares that is not about its wire.

``client.ClientConnection`` is a client's long-lived connection (admission, limits,
token expiry, the writer and its send watchdog, the session through the core's
``SessionHub``). The adapters themselves: ``chat_server.ws`` (``/ws/chat``, kept at its
path) and the modules beside this one (``ai_sdk_*``: the Vercel AI SDK's transports).
"""

from __future__ import annotations

from .client import ClientConnection, CloseReason

__all__ = ["ClientConnection", "CloseReason"]
