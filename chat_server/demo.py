"""Demo games with short rulebooks, seeded the first time the embedded default starts,
so a newcomer can chat right away.

Instances started together on one empty database seed once: the check and the seeding
run under ``storage.migrate.exclusive`` (an advisory lock on Postgres, a file lock on
SQLite), so the others wait and then find the games there.
"""

from __future__ import annotations

from sqlalchemy import func, select

from .storage.documents import add_document
from .storage.engine import Database
from .storage.flags import upsert_flag
from .storage.games import create_game
from .storage.migrate import exclusive
from .storage.schema import games

__all__ = ["seed_demo_games"]

TIC_TAC_TOE_RULES = """# Tic-Tac-Toe rules

## Setup
Draw a grid of three rows and three columns. One player takes X, the other takes O.
X always moves first.

## Taking a turn
On your turn, write your mark in one empty square. You may not skip a turn and you may
not place a mark in a square that is already taken.

## Winning
The first player to get three of their marks in a row wins: horizontally, vertically
or diagonally.

## Draw
If all nine squares are filled and nobody has three in a row, the game is a draw.
"""

CATAN_RULES = """# Catan quick rules

## Setup
Each player places two settlements and two roads on the board. The second settlement
gives each player one resource card for each terrain hex next to it.

## Resource production
At the start of each turn the active player rolls two dice. Every hex showing the
rolled number produces resources: each settlement next to it gets one card of that
resource, and each city gets two.

## The robber
When a seven is rolled, no hex produces. Every player with more than seven resource
cards discards half of them, rounded down. The active player then moves the robber to
a new hex and steals one random resource card from a player with a settlement or city
next to that hex. The hex with the robber produces nothing until the robber moves.

## Trading
The active player may trade resource cards with other players, or with the bank at
four identical cards for one. A harbor lets its owner trade at three to one, or two to
one for its resource.

## Building
A road costs one brick and one lumber. A settlement costs one brick, one lumber, one
wool and one grain, and must be at least two intersections away from any other
settlement. A city costs three ore and two grain and replaces a settlement.
A development card costs one ore, one wool and one grain.

## Winning
The first player to reach ten victory points on their own turn wins. Settlements are
worth one point, cities two. The longest road of at least five segments and the
largest army of at least three knights are worth two points each.
"""

DEMO = [
    (
        {
            "name": "Tic-Tac-Toe",
            "status": "active",
            "section": "classics",
            "min_players": 2,
            "max_players": 2,
            "playing_time": 2,
        },
        TIC_TAC_TOE_RULES,
    ),
    (
        {
            "name": "Catan",
            "bgg_id": 13,
            "status": "active",
            "section": "family",
            "min_players": 3,
            "max_players": 4,
            "playing_time": 120,
            "rating": 7.1,
        },
        CATAN_RULES,
    ),
]


DEMO_DAILY_LIMIT = 50


async def seed_demo_games(db: Database, environment: str) -> int:
    """Add the demo games, and a global ``chat`` flag (on, 50 turns a day) so that they
    can be chatted with, when the games table is empty; returns how many were added.
    Safe to run from any number of instances at once."""
    async with exclusive(db, "seed"):
        return await _seed_if_empty(db, environment)


async def _seed_if_empty(db: Database, environment: str) -> int:
    async with db.read() as conn:
        count = (await conn.execute(select(func.count()).select_from(games))).scalar_one()
    if count:
        return 0
    await upsert_flag(
        db,
        feature_key="chat",
        scope_type="global",
        scope_id=None,
        role=None,
        environment=environment,
        enabled=True,
        metadata={"daily_limit": DEMO_DAILY_LIMIT},
    )
    for data, rules in DEMO:
        game = await create_game(db, data)
        await add_document(
            db,
            game_id=game["id"],
            language="en",
            title=f"{data['name']} rules",
            content=rules,
            fmt="markdown",
        )
    return len(DEMO)
