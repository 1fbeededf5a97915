"""Prometheus metrics: what an operator graphs and alerts on.

Labels have bounded cardinality: provider names, finish reasons, error codes and
outcomes — never user, session or game ids. Metrics live in the process's default
registry (``/metrics`` serves it); with several worker processes each exposes its own.
Every update here is O(1) and lock-light: nothing is recorded per token except a
sampled inter-token gap.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "CANCELS",
    "CONNECTIONS",
    "COST",
    "DB_STATEMENTS",
    "DENIALS",
    "DENIALS_DROPPED",
    "FIRST_TOKEN",
    "GAP_SAMPLE_EVERY",
    "INTER_TOKEN_GAP",
    "PROVIDER_ERRORS",
    "RESUMES",
    "SESSIONS",
    "TOKENS",
    "TOKENS_AFTER_CANCEL",
    "TURNS",
    "TURN_DURATION",
]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_GAP_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
GAP_SAMPLE_EVERY = 16

CONNECTIONS = Gauge("chat_connections_open", "Authenticated WebSocket connections open")
SESSIONS = Gauge("chat_sessions_attached", "Sessions attached to a connection")
TURNS = Counter("chat_turns_total", "Finished turns", ["provider", "finish_reason"])
FIRST_TOKEN = Histogram(
    "chat_first_token_seconds",
    "Time from turn start to the first token",
    ["provider"],
    buckets=_LATENCY_BUCKETS,
)
TURN_DURATION = Histogram(
    "chat_turn_duration_seconds",
    "Time from turn start to its end",
    ["provider"],
    buckets=_LATENCY_BUCKETS,
)
INTER_TOKEN_GAP = Histogram(
    "chat_inter_token_gap_seconds",
    f"Gap between two provider tokens (one gap in {GAP_SAMPLE_EVERY} is sampled)",
    ["provider"],
    buckets=_GAP_BUCKETS,
)
TOKENS = Counter("chat_tokens_total", "Tokens reported by providers", ["provider", "direction"])
DENIALS = Counter("chat_turn_denials_total", "Turns refused before starting", ["reason"])
DENIALS_DROPPED = Counter(
    "chat_denials_dropped_total", "Refusals not recorded in usage_events: the buffer was full"
)
COST = Counter("chat_cost_usd_total", "USD of priced turns, by provider", ["provider"])
PROVIDER_ERRORS = Counter("chat_provider_errors_total", "Provider failures", ["provider", "code"])
CANCELS = Counter("chat_cancels_total", "Turns cancelled", ["cause"])
TOKENS_AFTER_CANCEL = Counter(
    "chat_tokens_after_cancel_total",
    "Tokens that arrived from a provider after a cancel was asked (should stay near 0)",
)
#: What a step costs the database, as a rate (a reconnect storm's statements per resume).
DB_STATEMENTS = Counter(
    "chat_db_statements_total",
    "Statements sent to the database through SQLAlchemy (a turn's writes on the asyncpg "
    "driver, Database.driver(), are not counted)",
)
RESUMES = Counter("chat_resumes_total", "session.resume with a turn_id, by outcome", ["outcome"])
CONNECTIONS_REFUSED = Counter(
    "chat_connections_refused_total",
    "Connections answered 503 as they opened: too many pending, or near the descriptor limit",
    ["reason"],
)
