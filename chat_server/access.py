"""Who may see what: game visibility by role, in one place for REST and WebSocket."""

from __future__ import annotations

from typing import Any

from .auth import STAFF_ROLES, is_staff

__all__ = ["STAFF_ROLES", "can_see_game", "is_staff", "visible_statuses"]


def visible_statuses(role: str) -> tuple[str, ...] | None:
    """The game statuses a role may see; None means all (staff)."""
    return None if is_staff(role) else ("active",)


def can_see_game(role: str, game: dict[str, Any] | None) -> bool:
    if game is None:
        return False
    statuses = visible_statuses(role)
    return statuses is None or game["status"] in statuses
