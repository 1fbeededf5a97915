"""Storage: one schema and one set of queries for Postgres and SQLite."""

from .engine import Database

__all__ = ["Database"]
