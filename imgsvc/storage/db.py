"""The SQLAlchemy handle, SQLite tuning, the schema upgrade and the ``init-db`` command."""

from __future__ import annotations

import logging

import click
from flask import Flask
from flask.cli import with_appcontext
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import MetaData, event, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.schema import CreateColumn

log = logging.getLogger("imgsvc.storage")


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


def _tune_sqlite(dbapi_connection, _record) -> None:
    """WAL lets gunicorn and RQ workers read while one writes; busy_timeout waits instead of failing."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def init_app(app: Flask) -> None:
    db.init_app(app)
    with app.app_context():
        engine: Engine = db.engine
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _tune_sqlite)
            engine.dispose()  # connections opened before the listener would miss the pragmas
        create_or_upgrade()
    app.cli.add_command(init_db_command)


class SchemaUpgradeError(RuntimeError):
    """An existing table lacks a column that cannot be added in place (NOT NULL, no default)."""


def create_or_upgrade() -> list[str]:
    """Create missing tables, then add the model's new columns to tables an older version created.

    Several processes start at once on a new database (gunicorn's workers, the RQ workers): one
    may create a table or index between another's check and its CREATE, which then fails with
    "already exists". That one looks again (the check now finds it) instead of failing to boot.
    """
    for attempt in range(3):
        try:
            db.create_all()
            break
        except DBAPIError as exc:
            if "already exists" not in str(exc.orig) or attempt == 2:
                raise
            log.info("schema created by another process meanwhile; checking again")
    return add_missing_columns(db.engine, db.metadata)


def add_missing_columns(engine: Engine, metadata: MetaData) -> list[str]:
    """``ALTER TABLE ... ADD COLUMN`` for each column the models have and the database lacks.

    ``create_all`` never touches a table that exists, so without this a database made by an
    older imgsvc fails on the first query that names a new column. A new column must be
    nullable (or carry a server default): rows written before it have no value. Safe when
    several processes start at once: a column another one just added is simply skipped.
    Returns ``table.column`` for each column added.
    """
    added: list[str] = []
    existing_tables = set(inspect(engine).get_table_names())
    for table in metadata.sorted_tables:
        if table.name not in existing_tables:
            continue
        present = {column["name"] for column in inspect(engine).get_columns(table.name)}
        missing = [column for column in table.columns if column.name not in present]
        for column in missing:
            if not column.nullable and column.server_default is None:
                raise SchemaUpgradeError(
                    f"table {table.name} lacks column {column.name}, which is NOT NULL without a "
                    "server default and cannot be added to existing rows; migrate this database by hand"
                )
            table_name = engine.dialect.identifier_preparer.format_table(table)
            definition = CreateColumn(column).compile(dialect=engine.dialect)
            try:
                with engine.begin() as connection:
                    connection.execute(text(f"ALTER TABLE {table_name} ADD COLUMN {definition}"))
            except DBAPIError:
                if column.name not in {c["name"] for c in inspect(engine).get_columns(table.name)}:
                    raise
                continue  # another process added it first
            added.append(f"{table.name}.{column.name}")
            log.warning("database upgraded: added column %s.%s", table.name, column.name)
        for index in table.indexes:
            if {column.name for column in index.columns} & {column.name for column in missing}:
                index.create(engine, checkfirst=True)
    return added


@click.command("init-db")
@with_appcontext
def init_db_command() -> None:
    """Create the tables, or add new columns to existing ones (also done on every start; safe to repeat)."""
    create_or_upgrade()
    click.echo(f"Initialised the database at {db.engine.url.render_as_string(hide_password=True)}")
