"""Feature-flag evaluation: which flag decides a feature for a user, and with what limit.

Pure code, no I/O: storage and the cross-instance refresh live elsewhere and hand a fresh
``FlagSet`` to the chat loop whenever the flags change. A ``FlagSet`` is immutable, so
swapping one in is atomic for every reader and ``decide`` is safe to call from any number
of concurrent turns.

The rules (CONTRACT.md §4):

- a flag applies in its ``environment`` only; a ``FlagSet`` holds one environment;
- the most specific scope wins: ``user`` (``scope_id`` = user id), then ``game``
  (game id), then ``section`` (the game's section name), then ``global``;
- within a scope, a flag for the user's role beats one for every role (``role`` None);
- the first matching flag decides, enabled or disabled, with its ``daily_limit``;
  a disabled user flag therefore beats an enabled global one;
- no matching flag: disabled;
- admins always pass with no limit; developers are checked like users.

``decide`` runs on every chat turn, so flags are indexed in a dict keyed by
``(feature, scope_type, scope_id, role)``: at most eight lookups per decision.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["ADMIN_ROLE", "SCOPE_ORDER", "Decision", "Flag", "FlagSet", "ScopeType"]

ScopeType = Literal["global", "section", "game", "user"]

ADMIN_ROLE = "admin"
# Most specific first: the order in which scopes are searched.
SCOPE_ORDER: tuple[ScopeType, ...] = ("user", "game", "section", "global")

_Key = tuple[str, str, str | None, str | None]


@dataclass(frozen=True)
class Flag:
    """One feature flag row, as stored and as the contract shows it."""

    id: str
    feature_key: str
    scope_type: ScopeType
    scope_id: str | None
    role: str | None
    environment: str
    enabled: bool
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def daily_limit(self) -> int | None:
        """Turns per user, game and UTC day; None when absent (unlimited).

        A value that is present but not a non-negative integer counts as 0: a typo in
        the admin UI must close the feature, not open it without limit.
        """
        value = self.metadata.get("daily_limit")
        if value is None:
            return None
        if isinstance(value, bool):
            return 0
        if isinstance(value, int):
            return max(value, 0)
        if isinstance(value, float) and value.is_integer():
            return max(int(value), 0)
        return 0

    def to_dict(self) -> dict[str, Any]:
        """The contract's JSON shape of a flag."""
        return {
            "id": self.id,
            "feature_key": self.feature_key,
            "scope_type": self.scope_type,
            "scope_id": self.scope_id,
            "role": self.role,
            "environment": self.environment,
            "enabled": self.enabled,
            "metadata": dict(self.metadata),
        }


@dataclass(frozen=True)
class Decision:
    """The outcome of a flag check: on or off, the limit, and which flag said so."""

    enabled: bool
    daily_limit: int | None
    flag_id: str | None


_ADMIN = Decision(enabled=True, daily_limit=None, flag_id=None)
_NO_MATCH = Decision(enabled=False, daily_limit=None, flag_id=None)


class FlagSet:
    """The flags of one environment, indexed for a decision on every turn.

    Flags of other environments are ignored. When two flags share a key (feature, scope,
    scope id, role) the first one given wins; storage keeps such keys unique anyway.
    """

    def __init__(self, flags: Iterable[Flag], *, environment: str) -> None:
        self.environment = environment
        self._flags: tuple[Flag, ...] = tuple(f for f in flags if f.environment == environment)
        index: dict[_Key, Flag] = {}
        for flag in self._flags:
            # A global flag has no scope id whatever the row says.
            scope_id = None if flag.scope_type == "global" else flag.scope_id
            index.setdefault((flag.feature_key, flag.scope_type, scope_id, flag.role), flag)
        self._index = index

    def __len__(self) -> int:
        return len(self._flags)

    def __iter__(self) -> Iterator[Flag]:
        return iter(self._flags)

    def decide(
        self,
        *,
        feature: str,
        user_id: str,
        role: str,
        game_id: str | None,
        section: str | None,
    ) -> Decision:
        """Whether ``feature`` is on for this user in this game, and its daily limit."""
        if role == ADMIN_ROLE:
            return _ADMIN
        scopes: tuple[tuple[ScopeType, str | None], ...] = (
            ("user", user_id),
            ("game", game_id),
            ("section", section),
            ("global", None),
        )
        index = self._index
        for scope_type, scope_id in scopes:
            if scope_id is None and scope_type != "global":
                continue
            flag = index.get((feature, scope_type, scope_id, role)) or index.get(
                (feature, scope_type, scope_id, None)
            )
            if flag is not None:
                return Decision(enabled=flag.enabled, daily_limit=flag.daily_limit, flag_id=flag.id)
        return _NO_MATCH
