"""The SQLAlchemy handle, SQLite tuning, and the ``init-db`` command."""

from __future__ import annotations

import click
from flask import Flask
from flask.cli import with_appcontext
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase


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
        db.create_all()
    app.cli.add_command(init_db_command)


@click.command("init-db")
@with_appcontext
def init_db_command() -> None:
    """Create the tables (also done on every start; safe to repeat)."""
    db.create_all()
    click.echo(f"Initialised the database at {db.engine.url.render_as_string(hide_password=True)}")
