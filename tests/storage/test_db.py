"""The schema's creation at start-up (``imgsvc/storage/db.py``)."""

from __future__ import annotations

from sqlalchemy import create_engine, inspect

from imgsvc.storage import db as db_module
from imgsvc.storage.db import create_or_upgrade, db


def test_tables_another_process_created_meanwhile_do_not_stop_start_up(app, monkeypatch):
    """Two gunicorn workers on a new SQLite file: the second's CREATE TABLE meets the first's table."""
    with app.app_context():
        db.drop_all()
        url = db.engine.url
        real_create_all = db.create_all
        calls = []

        def racing_create_all(*args, **kwargs):
            calls.append(1)
            if len(calls) == 1:
                # Another process wins the race: its tables appear after our check, before our CREATE.
                other = create_engine(url)
                db.metadata.create_all(other)
                other.dispose()
                return db.metadata.create_all(db.engine, checkfirst=False)
            return real_create_all(*args, **kwargs)

        monkeypatch.setattr(db_module.db, "create_all", racing_create_all)
        assert create_or_upgrade() == []
        assert len(calls) == 2
        assert "jobs" in inspect(db.engine).get_table_names()
