"""A streaming chat backend for in-app assistants (WebSocket turns, providers, flags,
quotas), first serving a board-game rules companion."""

__version__ = "0.1.0"

__all__ = ["__version__"]
