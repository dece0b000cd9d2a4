"""The schema comes only from migrations; they must match the models and run both ways."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

import layerfleet.migrations.tables  # noqa: F401  (registers every table)
from conftest import BACKENDS, POSTGRES_URL
from layerfleet.database import Base, create_engine, downgrade, migrate


def _run(coroutine):  # type: ignore[no-untyped-def]
    return asyncio.run(coroutine)


async def own_postgres_database(suffix: str = "migrations") -> str:
    """A database of this test's own, so the one the other tests hold stays untouched."""
    name = f"{make_url(POSTGRES_URL).database}_{suffix}"
    server = make_url(POSTGRES_URL).set(database="postgres").render_as_string(hide_password=False)
    admin = create_engine(server, pooled=False).execution_options(isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        await conn.execute(text(f"CREATE DATABASE {name}"))
    await admin.dispose()
    return make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)


async def _diff_and_tables(url: str) -> tuple[list[object], set[str]]:
    engine = create_engine(url, pooled=False)
    try:
        async with engine.connect() as conn:
            def compare(sync_conn):  # type: ignore[no-untyped-def]
                context = MigrationContext.configure(sync_conn)
                return compare_metadata(context, Base.metadata), set(inspect(sync_conn).get_table_names())

            return await conn.run_sync(compare)
    finally:
        await engine.dispose()


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_migrations_create_exactly_the_models_schema_and_downgrade(backend_name: str, tmp_path: Path) -> None:
    if backend_name == "postgresql":
        url = _run(own_postgres_database())
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / 'migrations.db'}"
    migrate(url)
    diff, tables = _run(_diff_and_tables(url))
    assert diff == []
    assert {"organizations", "users", "api_tokens", "printers", "prints", "print_shot_feedbacks",
            "gcode_files"} <= tables
    downgrade(url, "base")
    _, tables = _run(_diff_and_tables(url))
    assert tables <= {"alembic_version"}
    migrate(url)
    migrate(url)  # running it again on an up-to-date database changes nothing
    diff, _ = _run(_diff_and_tables(url))
    assert diff == []


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'pragmas.db'}"
    migrate(url)

    async def pragmas() -> tuple[str, int, int]:
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                mode = (await conn.execute(text("PRAGMA journal_mode"))).scalar_one()
                keys = (await conn.execute(text("PRAGMA foreign_keys"))).scalar_one()
                sync = (await conn.execute(text("PRAGMA synchronous"))).scalar_one()
                return mode, keys, sync
        finally:
            await engine.dispose()

    assert _run(pragmas()) == ("wal", 1, 2)  # synchronous 2 = FULL
