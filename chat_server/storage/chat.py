"""Chat sessions and messages: what survives reconnects and restarts.

A turn writes twice, never per token, each time atomically (one statement on
Postgres, one transaction on SQLite): ``begin_turn`` stores the user's message
(``complete``) and the assistant's placeholder (``streaming``); ``finish_turn`` stores
the assistant's text with its final status and the turn's ``usage_events`` row.
``fail_stale_turns`` gives a final status to placeholders whose instance died.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy import and_, bindparam, select, update

from ..text import clean
from .engine import Database
from .games import GAME_FIELDS
from .group_commit import GroupCommit
from .ids import as_utc, new_id, utcnow
from .pages import decode_cursor, encode_cursor
from .schema import chat_messages, chat_sessions, games, usage_events
from .upsert import upsert

__all__ = [
    "ClosedTurn",
    "SessionRead",
    "TurnRecord",
    "begin_turn",
    "create_session",
    "fail_stale_turns",
    "finish_turn",
    "get_session",
    "history",
    "list_sessions",
    "session_with_history",
    "streaming_instances",
]


def session_dict(row: Any) -> dict[str, Any]:
    m = row._mapping
    return {
        "id": m["id"],
        "user_id": m["user_id"],
        "game_id": m["game_id"],
        "language": m["language"],
        "provider": m["provider"],
        "model": m["model"],
        "created_at": as_utc(m["created_at"]),
    }


def message_dict(row: Any) -> dict[str, Any]:
    m = row._mapping
    data = {
        "id": m["id"],
        "role": m["role"],
        "content": m["content"],
        "status": m["status"],
        "created_at": as_utc(m["created_at"]),
        "turn_id": m["turn_id"],
    }
    if m["role"] == "assistant":
        data["citations"] = m["citations"] or []
        data["finish_reason"] = m["finish_reason"]
    return data


async def create_session(
    db: Database,
    *,
    user_id: str,
    game_id: str,
    language: str,
    provider: str,
    model: str,
    session_id: str | None = None,
) -> dict[str, Any]:
    """A new session; ``session_id`` is the client's own (an AI SDK chat id), else new."""
    now = utcnow()
    values = {
        "id": session_id or new_id(),
        "user_id": user_id,
        "game_id": game_id,
        "language": language,
        "provider": provider,
        "model": model,
        "created_at": now,
        "updated_at": now,
    }
    async with db.write() as conn:
        await conn.execute(chat_sessions.insert().values(**values))
    return {
        k: values[k]
        for k in ("id", "user_id", "game_id", "language", "provider", "model", "created_at")
    }


async def get_session(
    db: Database, session_id: str, *, statuses: tuple[str, ...] | None = None
) -> dict[str, Any] | None:
    """The session, or None; with ``statuses``, None too unless its game has one of them
    (a session of a game its user may no longer see is not found)."""
    query = select(chat_sessions).where(chat_sessions.c.id == session_id)
    if statuses is not None:
        query = query.where(chat_sessions.c.game_id.in_(_games_in(statuses)))
    async with db.read() as conn:
        row = (await conn.execute(query)).first()
    return session_dict(row) if row else None


def _games_in(statuses: tuple[str, ...]) -> Any:
    return select(games.c.id).where(games.c.status.in_(statuses))


async def list_sessions(
    db: Database,
    *,
    user_id: str,
    game_id: str | None,
    limit: int,
    cursor: str | None,
    statuses: tuple[str, ...] | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """A user's sessions, newest first (with ``statuses``: of games with one of them)."""
    query = select(chat_sessions).where(chat_sessions.c.user_id == user_id)
    if statuses is not None:
        query = query.where(chat_sessions.c.game_id.in_(_games_in(statuses)))
    if game_id:
        query = query.where(chat_sessions.c.game_id == game_id)
    if cursor:
        (last_id,) = decode_cursor(cursor, 1)
        query = query.where(chat_sessions.c.id < last_id)
    query = query.order_by(chat_sessions.c.id.desc()).limit(limit + 1)
    async with db.read() as conn:
        rows = (await conn.execute(query)).all()
    page = [session_dict(r) for r in rows[:limit]]
    return page, (encode_cursor(page[-1]["id"]) if len(rows) > limit else None)


async def history(db: Database, session_id: str, limit: int = 200) -> list[dict[str, Any]]:
    """The latest ``limit`` messages of a session, oldest first."""
    query = (
        select(chat_messages)
        .where(chat_messages.c.session_id == session_id)
        .order_by(chat_messages.c.id.desc())
        .limit(limit)
    )
    async with db.read() as conn:
        rows = (await conn.execute(query)).all()
    return [message_dict(r) for r in reversed(rows)]


# A session, its game and its latest messages in one statement (the session's and the
# game's columns repeated on each message's row; one row of NULL messages when it has
# none): ``session.resume`` needs all three, and one statement is one round trip and
# one pooled connection. Only the given user's session is read: another user's id
# finds nothing (not even its history leaves the database).
_SESSION_COLUMNS = [c.label(f"s_{c.name}") for c in chat_sessions.c]
_GAME_COLUMNS = [games.c[name].label(f"g_{name}") for name in GAME_FIELDS]
_MESSAGE_COLUMNS = [c.label(f"m_{c.name}") for c in chat_messages.c]
_LATEST_IDS = (
    select(chat_messages.c.id)
    .where(chat_messages.c.session_id == bindparam("session"))
    .order_by(chat_messages.c.id.desc())
    .limit(bindparam("limit"))
)
_SESSION_WITH_HISTORY = (
    select(*_SESSION_COLUMNS, *_GAME_COLUMNS, *_MESSAGE_COLUMNS)
    .select_from(
        chat_sessions.join(games, games.c.id == chat_sessions.c.game_id).outerjoin(
            chat_messages,
            and_(
                chat_messages.c.session_id == chat_sessions.c.id,
                chat_messages.c.id.in_(_LATEST_IDS),
            ),
        )
    )
    .where(chat_sessions.c.id == bindparam("session"), chat_sessions.c.user_id == bindparam("user"))
    .order_by(chat_messages.c.id)
)


@dataclass(frozen=True, slots=True)
class SessionRead:
    """What ``session.resume`` reads: the session, its game (``GAME_FIELDS``) and its
    latest messages, oldest first."""

    session: dict[str, Any]
    game: dict[str, Any]
    messages: list[dict[str, Any]]


def _prefixed(row: Any, prefix: str) -> Any:
    return SimpleNamespace(
        _mapping={k[len(prefix) :]: v for k, v in row._mapping.items() if k.startswith(prefix)}
    )


async def session_with_history(
    db: Database, session_id: str, user_id: str, limit: int = 200
) -> SessionRead | None:
    """``user_id``'s session ``session_id`` with its game and its latest ``limit``
    messages, in one statement; None if the user has no such session."""
    async with db.read() as conn:
        rows = (
            await conn.execute(
                _SESSION_WITH_HISTORY, {"session": session_id, "user": user_id, "limit": limit}
            )
        ).all()
    if not rows:
        return None
    first = rows[0]
    return SessionRead(
        session=session_dict(_prefixed(first, "s_")),
        game=dict(_prefixed(first, "g_")._mapping),
        messages=[message_dict(_prefixed(r, "m_")) for r in rows if r._mapping["m_id"] is not None],
    )


# The per-turn statements, made once (their parameters come at execution): building
# a statement costs more CPU than running it.
_TOUCH_SESSION = chat_sessions.update().where(chat_sessions.c.id == bindparam("session"))
_FINISH_MESSAGE = chat_messages.update().where(chat_messages.c.id == bindparam("message"))
_USAGE_UPDATE = (
    "session_id",
    "user_id",
    "game_id",
    "provider",
    "model",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_creation_tokens",
    "estimated",
    "cost_usd",
    "first_token_ms",
    "total_ms",
    "finish_reason",
    "error_code",
    "created_at",
)


# Postgres: each of a turn's two writes is one statement (a data-modifying CTE) run on
# the driver in autocommit (``Database.driver``), one round trip each instead of four.
# Parameters: question, answer, session, turn, text, instance, now.
_PG_BEGIN_TURN = (
    "WITH touched AS (UPDATE chat_sessions SET updated_at = $7 WHERE id = $3) "
    "INSERT INTO chat_messages (id, session_id, turn_id, role, content, status, citations, "
    "instance_id, created_at, updated_at) VALUES "
    "($1, $3, $4, 'user', $5, 'complete', '[]', $6, $7, $7), "
    "($2, $3, $4, 'assistant', '', 'streaming', '[]', $6, $7, $7)"
)
# The same for the questions of concurrent turns at once (``group_commit.py``): the
# parameters are arrays, one element per turn.
_PG_BEGIN_TURNS = (
    "WITH r AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], "
    "$5::text[], $6::text[], $7::timestamptz[]) "
    "AS r(question, answer, session, turn, content, instance, at)), "
    "touched AS (UPDATE chat_sessions s SET updated_at = r.at FROM r WHERE s.id = r.session) "
    "INSERT INTO chat_messages (id, session_id, turn_id, role, content, status, citations, "
    "instance_id, created_at, updated_at) "
    "SELECT question, session, turn, 'user', content, 'complete', '[]'::json, instance, at, at "
    "FROM r UNION ALL "
    "SELECT answer, session, turn, 'assistant', '', 'streaming', '[]'::json, instance, at, at "
    "FROM r"
)
# A question whose caller was cancelled while its batch was in flight: taken back.
_PG_UNDO_BEGIN_TURN = "DELETE FROM chat_messages WHERE id = $1 OR id = $2"
# Its parameters, in order: the answer's fields, then the usage row's.
_PG_FINISH_PARAMS = (
    *("message", "content", "status", "citations", "updated_at", "turn_id"),
    *_USAGE_UPDATE,
)


def _p(name: str) -> str:
    return f"${_PG_FINISH_PARAMS.index(name) + 1}"


_PG_FINISH_TURN = (
    f"WITH finished AS (UPDATE chat_messages SET content = {_p('content')}, "
    f"status = {_p('status')}, finish_reason = {_p('finish_reason')}, "
    f"citations = {_p('citations')}, updated_at = {_p('updated_at')} "
    f"WHERE id = {_p('message')}) "
    f"INSERT INTO usage_events (turn_id, {', '.join(_USAGE_UPDATE)}) "
    f"VALUES ({', '.join(_p(c) for c in ('turn_id', *_USAGE_UPDATE))}) "
    "ON CONFLICT (turn_id) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in _USAGE_UPDATE)
)
# Postgres types of the finish parameters, for the batched form.
_PG_FINISH_TYPES = {
    "input_tokens": "int",
    "output_tokens": "int",
    "cache_read_tokens": "int",
    "cache_creation_tokens": "int",
    "estimated": "bool",
    "cost_usd": "float8",
    "first_token_ms": "int",
    "total_ms": "int",
    "updated_at": "timestamptz",
    "created_at": "timestamptz",
}
_PG_FINISH_TURNS = (
    "WITH r AS (SELECT * FROM unnest("
    + ", ".join(
        f"${i + 1}::{_PG_FINISH_TYPES.get(n, 'text')}[]" for i, n in enumerate(_PG_FINISH_PARAMS)
    )
    + f") AS r({', '.join(_PG_FINISH_PARAMS)})), "
    "finished AS (UPDATE chat_messages m SET content = r.content, status = r.status, "
    "finish_reason = r.finish_reason, citations = r.citations::json, updated_at = r.updated_at "
    "FROM r WHERE m.id = r.message) "
    f"INSERT INTO usage_events (turn_id, {', '.join(_USAGE_UPDATE)}) "
    f"SELECT turn_id, {', '.join(_USAGE_UPDATE)} FROM r "
    "ON CONFLICT (turn_id) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in _USAGE_UPDATE)
)


def _columns(rows: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows of parameters as one array per parameter (for ``unnest``)."""
    return [list(column) for column in zip(*rows, strict=True)]


async def _pg_execute(db: Database, statement: str, *args: Any) -> None:
    async with db.driver() as driver:
        await driver.execute(statement, *args)


def _group(
    db: Database, name: str, one: str, many: str, undo: str | None = None
) -> GroupCommit[Any]:
    """The batcher of one kind of per-turn write on ``db`` (made on first use)."""
    group = db.group_commits.get(name)
    if group is None:

        async def write_one(row: tuple[Any, ...]) -> None:
            await _pg_execute(db, one, *row)

        async def write_many(rows: Sequence[tuple[Any, ...]]) -> None:
            await _pg_execute(db, many, *_columns(rows))

        async def take_back(row: tuple[Any, ...]) -> None:
            assert undo is not None
            await _pg_execute(db, undo, row[0], row[1])

        group = GroupCommit(name, write_many, write_one, undo=take_back if undo else None)
        db.group_commits[name] = group
    return group


async def begin_turn(
    db: Database, *, session_id: str, turn_id: str, text: str, instance_id: str
) -> tuple[dict[str, Any], str]:
    """Store the user's message and the assistant's ``streaming`` placeholder.

    Returns the user message and the assistant message id.
    """
    now = utcnow()
    user_id, assistant_id = new_id(), new_id()
    if db.is_postgres:  # one statement, before the turn's first token: on the driver,
        # with the questions of turns asked at the same time (``group_commit.py``)
        questions = _group(db, "questions", _PG_BEGIN_TURN, _PG_BEGIN_TURNS, _PG_UNDO_BEGIN_TURN)
        await questions.write((user_id, assistant_id, session_id, turn_id, text, instance_id, now))
    else:
        common = {
            "session_id": session_id,
            "turn_id": turn_id,
            "instance_id": instance_id,
            "created_at": now,
            "updated_at": now,
            "citations": [],
        }
        async with db.write() as conn:
            await conn.execute(
                chat_messages.insert(),
                [
                    {
                        **common,
                        "id": user_id,
                        "role": "user",
                        "content": text,
                        "status": "complete",
                    },
                    {
                        **common,
                        "id": assistant_id,
                        "role": "assistant",
                        "content": "",
                        "status": "streaming",
                    },
                ],
            )
            await conn.execute(_TOUCH_SESSION, {"session": session_id, "updated_at": now})
    user_message = {
        "id": user_id,
        "role": "user",
        "content": text,
        "status": "complete",
        "created_at": now,
        "turn_id": turn_id,
    }
    return user_message, assistant_id


@dataclass(frozen=True, slots=True)
class TurnRecord:
    """What a finished turn stores: the assistant's message and its usage row."""

    message_id: str
    turn_id: str
    session_id: str
    user_id: str
    game_id: str
    provider: str
    model: str
    content: str
    status: str
    finish_reason: str
    citations: list[dict[str, Any]]
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_creation_tokens: int
    first_token_ms: int | None
    total_ms: int
    error_code: str | None
    estimated: bool = False
    cost_usd: float | None = None


async def finish_turn(db: Database, record: TurnRecord) -> None:
    """Store the assistant's final text and status and the usage row, at once.

    The text and citations are ``clean``-ed on the way (no NUL, no lone surrogate):
    nothing a provider sent can make this write fail.
    """
    now = utcnow()
    citations = [
        {k: clean(v) if isinstance(v, str) else v for k, v in c.items()} for c in record.citations
    ]
    usage = {
        "turn_id": record.turn_id,
        "session_id": record.session_id,
        "user_id": record.user_id,
        "game_id": record.game_id,
        "provider": record.provider,
        "model": record.model,
        "input_tokens": record.input_tokens,
        "output_tokens": record.output_tokens,
        "cache_read_tokens": record.cache_read_tokens,
        "cache_creation_tokens": record.cache_creation_tokens,
        "estimated": record.estimated,
        "cost_usd": record.cost_usd,
        "first_token_ms": record.first_token_ms,
        "total_ms": record.total_ms,
        "finish_reason": record.finish_reason,
        "error_code": record.error_code,
        "created_at": now,
    }
    answer = {
        "message": record.message_id,
        "content": clean(record.content),
        "status": record.status,
        "finish_reason": record.finish_reason,
        "citations": citations,
        "updated_at": now,
    }
    # The usage row is an upsert: should the sweep of dead instances have closed this
    # turn already, what the turn really did replaces its guess (one row per turn).
    if db.is_postgres:
        params = answer | usage | {"citations": json.dumps(citations)}  # JSON as text
        answers = _group(db, "answers", _PG_FINISH_TURN, _PG_FINISH_TURNS)
        await answers.write(tuple(params[n] for n in _PG_FINISH_PARAMS))
        return
    async with db.write() as conn:
        await conn.execute(_FINISH_MESSAGE, answer)
        await conn.execute(
            upsert(db.dialect, usage_events, keys=("turn_id",), update=_USAGE_UPDATE), usage
        )


@dataclass(frozen=True, slots=True)
class ClosedTurn:
    """A turn ``fail_stale_turns`` closed: enough to give its quota back."""

    turn_id: str
    user_id: str
    game_id: str
    started_at: datetime


async def fail_stale_turns(
    db: Database,
    *,
    instance_id: str | None = None,
    older_than: datetime | None = None,
    sparing: Collection[str] = (),
) -> list[ClosedTurn]:
    """Give ``error`` to ``streaming`` placeholders left by a dead instance (or by a live
    one, for turns it no longer runs).

    ``instance_id``: only placeholders of that instance; ``older_than``: only those not
    touched since then (turns cannot run that long); both: both must hold; neither:
    nothing is touched; ``sparing``: turn ids left alone (those still running or being
    stored). Each such turn gets its ``usage_events`` row (``error``,
    ``internal_error``) so usage counts every started turn. Safe to run from several
    instances at once: a placeholder is closed once.
    """
    conditions = []
    if instance_id is not None:
        conditions.append(chat_messages.c.instance_id == instance_id)
    if older_than is not None:
        conditions.append(chat_messages.c.updated_at < as_utc(older_than))
    if not conditions:
        return []
    if sparing:
        conditions.append(chat_messages.c.turn_id.not_in(list(sparing)))
    now = utcnow()
    async with db.write() as conn:
        closed = (
            await conn.execute(
                update(chat_messages)
                .where(chat_messages.c.status == "streaming", *conditions)
                .values(status="error", finish_reason="error", updated_at=now)
                .returning(
                    chat_messages.c.turn_id,
                    chat_messages.c.session_id,
                    chat_messages.c.created_at,
                )
            )
        ).all()
        if closed:
            sessions = {
                r.id: r
                for r in await conn.execute(
                    select(chat_sessions).where(
                        chat_sessions.c.id.in_({c.session_id for c in closed})
                    )
                )
            }
            await conn.execute(
                usage_events.insert(),
                [
                    {
                        "turn_id": c.turn_id,
                        "session_id": c.session_id,
                        "user_id": sessions[c.session_id].user_id,
                        "game_id": sessions[c.session_id].game_id,
                        "provider": sessions[c.session_id].provider,
                        "model": sessions[c.session_id].model,
                        "first_token_ms": None,
                        "total_ms": 0,
                        "finish_reason": "error",
                        "error_code": "internal_error",
                        "created_at": as_utc(c.created_at),
                    }
                    for c in closed
                ],
            )
            return [
                ClosedTurn(
                    turn_id=c.turn_id,
                    user_id=sessions[c.session_id].user_id,
                    game_id=sessions[c.session_id].game_id,
                    started_at=as_utc(c.created_at),
                )
                for c in closed
            ]
    return []


async def streaming_instances(db: Database, *, older_than: datetime) -> list[str]:
    """Instances that own answers still ``streaming`` since before ``older_than``."""
    query = (
        select(chat_messages.c.instance_id)
        .where(
            chat_messages.c.status == "streaming",
            chat_messages.c.updated_at < older_than,
            chat_messages.c.instance_id.is_not(None),
        )
        .distinct()
    )
    async with db.read() as conn:
        return [r[0] for r in (await conn.execute(query)).all()]
