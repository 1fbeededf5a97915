"""Migrations: idempotent, safe when instances start together, the same schema on both
databases, and printable as SQL without a database."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic.script import ScriptDirectory

from chat_server.storage import Database
from chat_server.storage.fulltext import PG_SEARCH_COLUMN, PG_SEARCH_INDEX, SQLITE_FTS_TABLE
from chat_server.storage.migrate import alembic_config, upgrade
from chat_server.storage.schema import metadata

from .conftest import WAIT

Schema = dict[str, dict[str, set[str]]]


def head_revision() -> str:
    script = ScriptDirectory.from_config(alembic_config("sqlite:///unused.db"))
    head = script.get_current_head()
    assert head is not None
    return head


def _inspect(sync_conn: Any) -> Schema:
    insp = sa.inspect(sync_conn)
    return {
        table: {
            "columns": {c["name"] for c in insp.get_columns(table)},
            "indexes": {
                str(i["name"])
                for i in insp.get_indexes(table)
                if not i.get("duplicates_constraint")  # Postgres: a unique constraint's
            },
            "unique": {",".join(u["column_names"]) for u in insp.get_unique_constraints(table)},
        }
        for table in insp.get_table_names()
    }


async def read_schema(url: str) -> Schema:
    """Every table with its columns and indexes, as the database itself reports them."""
    db = Database(url)
    try:
        async with db.read() as conn:
            return await conn.run_sync(_inspect)
    finally:
        await db.dispose()


async def versions(url: str) -> list[str]:
    db = Database(url)
    try:
        async with db.read() as conn:
            rows = await conn.execute(sa.text("SELECT version_num FROM alembic_version"))
            return [r[0] for r in rows]
    finally:
        await db.dispose()


def ours(schema: Schema) -> Schema:
    """The schema without Alembic's bookkeeping and the full-text objects of fulltext.py."""
    out: Schema = {}
    for table, parts in schema.items():
        if table == "alembic_version" or table.startswith(SQLITE_FTS_TABLE):
            continue
        out[table] = {
            "columns": parts["columns"] - {PG_SEARCH_COLUMN},
            "indexes": parts["indexes"] - {PG_SEARCH_INDEX},
            "unique": parts["unique"],
        }
    return out


def expected_schema() -> Schema:
    return {
        name: {
            "columns": {c.name for c in table.columns},
            "indexes": {str(i.name) for i in table.indexes},
            "unique": {
                ",".join(c.name for c in u.columns)
                for u in table.constraints
                if isinstance(u, sa.UniqueConstraint)
            },
        }
        for name, table in metadata.tables.items()
    }


async def run_cli(*args: str, database_url: str, cwd: Path) -> tuple[int, str, str]:
    """``python -m chat_server ARGS`` with only DATABASE_URL set, as an operator runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "CHAT_"))}
    env.update(DATABASE_URL=database_url, CHAT_DATA_DIR=str(cwd / "data"), LOG_LEVEL="warning")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chat_server",
        *args,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), WAIT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_second_upgrade_is_a_no_op(db: Database) -> None:
    """Running the migrations again changes nothing and leaves the version at head."""
    async with asyncio.timeout(WAIT):
        url = db.url
        before = await read_schema(url)
        await upgrade(db)
        await upgrade(db)
        assert await read_schema(url) == before
        assert await versions(url) == [head_revision()]


async def test_upgrade_creates_the_declared_schema(db: Database) -> None:
    """A migrated database has exactly the tables, columns, indexes and unique keys of schema.py."""
    async with asyncio.timeout(WAIT):
        assert ours(await read_schema(db.url)) == expected_schema()


async def test_concurrent_migrate_processes_do_not_collide(
    database_url: str, tmp_path: Path
) -> None:
    """Three instances running `chat-server migrate` at once all succeed, schema at head;
    one says it created the schema, the two that waited for it that nothing was to do."""
    async with asyncio.timeout(3 * WAIT):
        results = await asyncio.gather(
            *(run_cli("migrate", database_url=database_url, cwd=tmp_path) for _ in range(3))
        )
        for code, _out, err in results:
            assert code == 0, err
        said = sorted("created the schema" in err for _code, _out, err in results)
        assert said == [False, False, True], [err for _code, _out, err in results]
        assert sum("already up to date" in err for _code, _out, err in results) == 2
        assert ours(await read_schema(database_url)) == expected_schema()
        assert await versions(database_url) == [head_revision()]


async def test_postgres_and_sqlite_end_with_the_same_tables(
    postgres_url: str, sqlite_url: str
) -> None:
    """Both databases get the same tables, columns and indexes (full-text aside)."""
    async with asyncio.timeout(WAIT):
        schemas = []
        for url in (postgres_url, sqlite_url):
            db = Database(url)
            try:
                await upgrade(db)
            finally:
                await db.dispose()
            schemas.append(await read_schema(url))
        pg, lite = schemas
        assert ours(pg) == ours(lite) == expected_schema()
        # The full-text objects are where they belong, and only there.
        assert PG_SEARCH_COLUMN in pg["document_passages"]["columns"]
        assert SQLITE_FTS_TABLE in lite
        assert not any(t.startswith(SQLITE_FTS_TABLE) for t in pg)


async def test_migrate_sql_prints_postgres_ddl_without_a_database(tmp_path: Path) -> None:
    """`migrate --sql` prints the Postgres DDL even though no server answers at that URL."""
    async with asyncio.timeout(WAIT):
        code, out, err = await run_cli(
            "migrate",
            "--sql",
            database_url="postgresql://nobody@127.0.0.1:1/nowhere",
            cwd=tmp_path,
        )
    assert code == 0, err
    for table in metadata.tables:
        assert f"CREATE TABLE {table} (" in out
    assert "tsvector" in out
    assert "USING GIN" in out
    assert "fts5" not in out
    assert "INSERT INTO alembic_version" in out
    assert out.rstrip().endswith("COMMIT;")


async def test_migrate_sql_for_sqlite_creates_no_file(tmp_path: Path) -> None:
    """`migrate --sql` with a SQLite URL prints the FTS5 DDL and leaves the disk alone."""
    target = tmp_path / "never.db"
    async with asyncio.timeout(WAIT):
        code, out, err = await run_cli(
            "migrate", "--sql", database_url=f"sqlite:///{target}", cwd=tmp_path
        )
    assert code == 0, err
    assert "CREATE VIRTUAL TABLE document_passages_fts USING fts5" in out
    assert "tsvector" not in out
    assert not target.exists()


async def test_concurrent_upgrades_in_one_process_do_not_collide(database_url: str) -> None:
    """Four engines upgrading one empty database at the same moment all succeed."""
    dbs = [Database(database_url) for _ in range(4)]
    try:
        async with asyncio.timeout(WAIT):
            await asyncio.gather(*(upgrade(db) for db in dbs))
            assert ours(await read_schema(database_url)) == expected_schema()
            assert await versions(database_url) == [head_revision()]
    finally:
        for db in dbs:
            await db.dispose()


async def test_supabase_style_urls_and_the_pooler_setting_connect(postgres_url: str) -> None:
    """``?sslmode=disable`` (libpq spelling) and the transaction-pooler setting both work."""
    url = postgres_url + "?sslmode=disable"
    db = Database(url, prepared_statement_cache=False)
    try:
        async with asyncio.timeout(WAIT):
            await upgrade(db)
            for _ in range(3):  # the same statement again: no name clash, no cache
                async with db.read() as conn:
                    assert (await conn.execute(sa.text("SELECT 1"))).scalar() == 1
    finally:
        await db.dispose()
