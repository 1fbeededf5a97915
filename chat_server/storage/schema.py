"""The one schema, as SQLAlchemy Core tables, for Postgres and SQLite alike.

Full-text search differs per database and lives in ``fulltext.py``: on Postgres a
``search`` tsvector column on ``document_passages`` (added by the migration), on
SQLite an FTS5 table ``document_passages_fts``.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

__all__ = [
    "admin_audit",
    "chat_messages",
    "chat_sessions",
    "document_files",
    "document_passages",
    "feature_flags",
    "game_documents",
    "games",
    "metadata",
    "profiles",
    "usage_events",
]

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

ID = String(36)
#: Session ids: ours are UUIDs, an AI SDK chat's id is the client's (1-64 characters).
SESSION_ID = String(64)
TS = DateTime(timezone=True)

profiles = Table(
    "profiles",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("role", String(32), nullable=False, server_default="basic"),
    Column("created_at", TS, nullable=False),
)

games = Table(
    "games",
    metadata,
    Column("id", ID, primary_key=True),
    Column("bgg_id", Integer, nullable=True, unique=True),
    Column("name", String(300), nullable=False),
    Column("status", String(16), nullable=False, server_default="active"),
    Column("section", String(100), nullable=True),
    Column("min_players", Integer),
    Column("max_players", Integer),
    Column("playing_time", Integer),
    Column("rating", Float),
    Column("thumbnail_url", String(1000)),
    Column("image_url", String(1000)),
    Column("year_published", Integer),
    Column("description", Text),
    Column("details", JSON, nullable=False, default=dict),
    Column("last_synced_at", TS),
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    Index(None, "status", "name"),
)

game_documents = Table(
    "game_documents",
    metadata,
    Column("id", ID, primary_key=True),
    Column("game_id", ID, ForeignKey("games.id", ondelete="CASCADE"), nullable=False),
    Column("language", String(16), nullable=False),
    Column("title", String(300), nullable=False),
    Column("format", String(16), nullable=False),
    Column("content", Text, nullable=False),
    Column("openai_vector_store_id", String(100)),
    # rulebook, faq, errata or expansion: errata and FAQs outrank the rulebook.
    Column("kind", String(16), nullable=False, server_default="rulebook"),
    Column("media_type", String(100)),
    Column("pages", Integer),
    Column("bytes", Integer, nullable=False, server_default="0"),
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS),
    Index(None, "game_id", "language"),
)

document_passages = Table(
    "document_passages",
    metadata,
    Column("id", ID, primary_key=True),
    Column("document_id", ID, ForeignKey("game_documents.id", ondelete="CASCADE"), nullable=False),
    Column("game_id", ID, nullable=False),
    Column("language", String(16), nullable=False),
    Column("ordinal", Integer, nullable=False),
    Column("heading", String(300)),
    Column("text", Text, nullable=False),
    # The document's kind, kept on each passage so that ranking needs no join.
    Column("kind", String(16), nullable=False, server_default="rulebook"),
    # The PDF page (1-based) the passage comes from; null for text and Markdown.
    Column("page", Integer),
    Index(None, "game_id", "language"),
)

# The original file of a document: its bytes here (the default), or the key of the
# object that holds them in Supabase Storage (``storage_key``, with ``data`` null).
document_files = Table(
    "document_files",
    metadata,
    Column(
        "document_id",
        ID,
        ForeignKey("game_documents.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("data", LargeBinary),
    Column("storage_key", String(300)),
)

feature_flags = Table(
    "feature_flags",
    metadata,
    Column("id", ID, primary_key=True),
    Column("feature_key", String(100), nullable=False),
    Column("scope_type", String(16), nullable=False),
    # '' for "no scope id" (global) and '' for "every role": NULLs never collide in
    # a unique constraint, empty strings do.
    Column("scope_id", String(200), nullable=False, server_default=""),
    Column("role", String(32), nullable=False, server_default=""),
    Column("environment", String(32), nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("metadata", JSON, nullable=False, default=dict),
    Column("updated_at", TS, nullable=False),
    UniqueConstraint("feature_key", "scope_type", "scope_id", "role", "environment"),
)

chat_sessions = Table(
    "chat_sessions",
    metadata,
    Column("id", SESSION_ID, primary_key=True),
    Column("user_id", String(64), nullable=False),
    Column("game_id", ID, ForeignKey("games.id", ondelete="CASCADE"), nullable=False),
    Column("language", String(16), nullable=False),
    Column("provider", String(32), nullable=False),
    Column("model", String(100), nullable=False),
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    Index(None, "user_id", "game_id", "id"),
)

chat_messages = Table(
    "chat_messages",
    metadata,
    Column("id", ID, primary_key=True),
    Column(
        "session_id",
        SESSION_ID,
        ForeignKey("chat_sessions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("turn_id", ID, nullable=False),
    Column("role", String(16), nullable=False),
    Column("content", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("finish_reason", String(16)),
    Column("citations", JSON, nullable=False, default=list),
    Column("instance_id", String(64)),
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    Index(None, "session_id", "id"),
    Index(None, "status"),
)

usage_events = Table(
    "usage_events",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("turn_id", ID, nullable=False, unique=True),
    Column("session_id", SESSION_ID, nullable=False),
    Column("user_id", String(64), nullable=False),
    Column("game_id", ID, nullable=False),
    Column("provider", String(32), nullable=False),
    Column("model", String(100), nullable=False),
    Column("input_tokens", Integer, nullable=False, server_default="0"),
    Column("output_tokens", Integer, nullable=False, server_default="0"),
    Column("cache_read_tokens", Integer, nullable=False, server_default="0"),
    Column("cache_creation_tokens", Integer, nullable=False, server_default="0"),
    # Some of the tokens are estimated (a cancelled or cut turn; accounting.py).
    Column("estimated", Boolean, nullable=False, server_default="0"),
    # USD from the model's price (prices.py); NULL when the model has no price.
    Column("cost_usd", Float),
    Column("first_token_ms", Integer),
    Column("total_ms", Integer, nullable=False),
    Column("finish_reason", String(16), nullable=False),
    Column("error_code", String(32)),
    Column("created_at", TS, nullable=False),
    Index(None, "created_at"),
)

admin_audit = Table(
    "admin_audit",
    metadata,
    Column("id", ID, primary_key=True),
    Column("actor_id", String(64), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(200), nullable=False),
    Column("reason", Text),
    Column("created_at", TS, nullable=False),
)
