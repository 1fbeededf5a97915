"""The REST side: thin routes over ``chat_server``."""

from .router import api_router

__all__ = ["api_router"]
