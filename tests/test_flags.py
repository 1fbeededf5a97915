"""Feature-flag decisions: scope precedence, roles, environments, admins and limits."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from chat_server.flags import SCOPE_ORDER, Decision, Flag, FlagSet, ScopeType

ENV = "prod"
USER = "user-1"
GAME = "game-1"
SECTION = "strategy"
SCOPE_IDS: dict[ScopeType, str | None] = {
    "user": USER,
    "game": GAME,
    "section": SECTION,
    "global": None,
}

_ids = itertools.count(1)


def flag(
    scope_type: ScopeType,
    *,
    enabled: bool = True,
    role: str | None = None,
    environment: str = ENV,
    feature: str = "chat",
    scope_id: str | None = "",
    metadata: dict[str, Any] | None = None,
) -> Flag:
    """A flag for the standard user, game or section unless ``scope_id`` says otherwise."""
    return Flag(
        id=f"{scope_type}-{role}-{enabled}-{next(_ids)}",
        feature_key=feature,
        scope_type=scope_type,
        scope_id=SCOPE_IDS[scope_type] if scope_id == "" else scope_id,
        role=role,
        environment=environment,
        enabled=enabled,
        metadata=metadata or {},
    )


def decide(
    flags: list[Flag],
    *,
    role: str = "basic",
    game_id: str | None = GAME,
    section: str | None = SECTION,
    feature: str = "chat",
) -> Decision:
    return FlagSet(flags, environment=ENV).decide(
        feature=feature, user_id=USER, role=role, game_id=game_id, section=section
    )


@pytest.mark.parametrize("environment", [ENV, "staging"])
@pytest.mark.parametrize("flag_role", ["basic", None])
@pytest.mark.parametrize("scope", SCOPE_ORDER)
def test_single_flag_applies_in_its_environment_only(
    scope: ScopeType, flag_role: str | None, environment: str
) -> None:
    """A lone flag of any scope, for the user's role or every role, decides in its environment."""
    only = flag(scope, role=flag_role, environment=environment, metadata={"daily_limit": 7})
    decision = decide([only])
    if environment == ENV:
        assert decision == Decision(enabled=True, daily_limit=7, flag_id=only.id)
    else:
        assert decision == Decision(enabled=False, daily_limit=None, flag_id=None)


@pytest.mark.parametrize("specific_enabled", [True, False])
@pytest.mark.parametrize(("specific", "general"), list(itertools.combinations(SCOPE_ORDER, 2)))
def test_more_specific_scope_wins(
    specific: ScopeType, general: ScopeType, specific_enabled: bool
) -> None:
    """The most specific scope decides, whether it turns the feature on or off."""
    near = flag(specific, enabled=specific_enabled, metadata={"daily_limit": 1})
    far = flag(general, enabled=not specific_enabled, metadata={"daily_limit": 99})
    for order in ([near, far], [far, near]):
        assert decide(order) == Decision(specific_enabled, 1, near.id)


@pytest.mark.parametrize("scope", SCOPE_ORDER)
def test_role_flag_beats_any_role_flag_in_same_scope(scope: ScopeType) -> None:
    """Within one scope a flag for the user's role beats the every-role flag."""
    for_role = flag(scope, role="basic", enabled=False)
    for_all = flag(scope, role=None, enabled=True)
    for order in ([for_role, for_all], [for_all, for_role]):
        assert decide(order) == Decision(False, None, for_role.id)


def test_any_role_flag_in_specific_scope_beats_role_flag_in_general_scope() -> None:
    """Scope is compared before role: a user's every-role flag beats a global role flag."""
    user_any = flag("user", role=None, enabled=False)
    global_role = flag("global", role="basic", enabled=True)
    assert decide([global_role, user_any]) == Decision(False, None, user_any.id)


def test_disabled_specific_flag_beats_enabled_general_one() -> None:
    """A user switched off stays off although the feature is on for everyone."""
    flags = [flag("global", enabled=True), flag("game", enabled=True), flag("user", enabled=False)]
    assert decide(flags).enabled is False


def test_flag_for_other_role_does_not_apply() -> None:
    """A flag for developers does not decide for a basic user."""
    dev_only = flag("global", role="developer", enabled=True)
    assert decide([dev_only]) == Decision(False, None, None)
    assert decide([dev_only], role="developer") == Decision(True, None, dev_only.id)


def test_admin_always_passes_without_limit() -> None:
    """Admins may chat with no flag, against a disabling flag, and without a quota."""
    off = flag("user", role="admin", enabled=False, metadata={"daily_limit": 3})
    assert decide([], role="admin") == Decision(True, None, None)
    assert decide([off, flag("global", enabled=False)], role="admin") == Decision(True, None, None)


def test_developer_is_checked_like_a_user() -> None:
    """Developers get no free pass: no flag means disabled, and limits apply."""
    limited = flag("global", metadata={"daily_limit": 5})
    assert decide([], role="developer") == Decision(False, None, None)
    assert decide([limited], role="developer") == Decision(True, 5, limited.id)
    assert decide([flag("user", enabled=False)], role="developer").enabled is False


@pytest.mark.parametrize(
    "other",
    [
        flag("global", feature="voice"),
        flag("user", scope_id="user-2"),
        flag("game", scope_id="game-2"),
        flag("section", scope_id="family"),
    ],
    ids=["other-feature", "other-user", "other-game", "other-section"],
)
def test_no_matching_flag_means_disabled(other: Flag) -> None:
    """Flags for another feature, user, game or section leave the feature off."""
    assert decide([other]) == Decision(False, None, None)


def test_game_and_section_flags_skip_when_turn_has_none() -> None:
    """Without a game (or section) only user and global flags can decide."""
    game_on = flag("game", enabled=True)
    section_on = flag("section", enabled=True)
    assert decide([game_on, section_on], game_id=None, section=None).enabled is False
    global_on = flag("global")
    assert decide([game_on, global_on], game_id=None).flag_id == global_on.id


def test_other_environment_is_ignored_even_when_more_specific() -> None:
    """A staging user flag neither blocks nor grants anything in production."""
    staging_off = flag("user", enabled=False, environment="staging")
    prod_on = flag("global", enabled=True)
    flag_set = FlagSet([staging_off, prod_on], environment=ENV)
    assert len(flag_set) == 1
    assert list(flag_set) == [prod_on]
    assert decide([staging_off, prod_on]) == Decision(True, None, prod_on.id)


def test_global_flag_ignores_a_stray_scope_id() -> None:
    """A global flag applies to everyone even if its row carries a scope id."""
    stray = flag("global", scope_id="leftover")
    assert decide([stray]).flag_id == stray.id


def test_duplicate_key_first_flag_decides() -> None:
    """Of two flags with the same feature, scope, role and environment, the first decides."""
    first, second = flag("global", enabled=False), flag("global", enabled=True)
    assert decide([first, second]).flag_id == first.id


@pytest.mark.parametrize(
    ("metadata", "limit"),
    [
        ({}, None),
        ({"daily_limit": None}, None),
        ({"daily_limit": 20}, 20),
        ({"daily_limit": 0}, 0),
        ({"daily_limit": 5.0}, 5),
        ({"daily_limit": -3}, 0),
        ({"daily_limit": "20"}, 0),
        ({"daily_limit": True}, 0),
        ({"daily_limit": 2.5}, 0),
    ],
)
def test_daily_limit_from_metadata(metadata: dict[str, Any], limit: int | None) -> None:
    """A flag's limit is its integer metadata; absent is unlimited, nonsense closes it."""
    assert flag("global", metadata=metadata).daily_limit == limit


def test_flag_to_dict_has_contract_shape() -> None:
    """The admin API shows a flag with exactly the contract's fields."""
    one = Flag("f1", "chat", "game", GAME, None, ENV, True, {"daily_limit": 20})
    assert one.to_dict() == {
        "id": "f1",
        "feature_key": "chat",
        "scope_type": "game",
        "scope_id": GAME,
        "role": None,
        "environment": ENV,
        "enabled": True,
        "metadata": {"daily_limit": 20},
    }
