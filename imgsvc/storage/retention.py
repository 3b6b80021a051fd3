"""Retention: delete uploads and rows of finished jobs once they are old enough, and orphans.

Uploads of finished jobs go after UPLOAD_RETENTION seconds (results stay readable);
the rows themselves after RESULT_TTL. Orphans, uploads that no row names (a web process
died between storing a file and writing its row), and temp files of killed processes, go once
they are ORPHAN_AGE old, so an upload still on its way to its row is never touched.
Run ``flask --app imgsvc prune`` from cron.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import islice

import click
from flask import current_app
from flask.cli import with_appcontext
from sqlalchemy import delete, select, update

from imgsvc.config import Settings, app_settings
from imgsvc.storage import jobs
from imgsvc.storage.db import db
from imgsvc.storage.uploads import ORPHAN_AGE, UploadStore


def prune(settings: Settings, store: UploadStore, orphan_age: timedelta = ORPHAN_AGE) -> dict[str, int]:
    now = jobs.utcnow()
    file_cutoff = now - timedelta(seconds=settings.upload_retention)
    row_cutoff = now - timedelta(seconds=settings.result_ttl)
    finished = jobs.Job.status.in_(jobs.FINISHED)

    old_files = db.session.execute(
        select(jobs.Job.id, jobs.Job.upload_name).where(
            finished, jobs.Job.completed_at < file_cutoff, jobs.Job.upload_name.is_not(None)
        )
    ).all()
    for _, name in old_files:
        store.delete(name)
    if old_files:
        db.session.execute(
            update(jobs.Job).where(jobs.Job.id.in_([i for i, _ in old_files])).values(upload_name=None)
        )
    rows = db.session.execute(delete(jobs.Job).where(finished, jobs.Job.completed_at < row_cutoff)).rowcount
    db.session.commit()
    orphans = sweep_orphans(store, now.replace(tzinfo=UTC) - orphan_age)
    return {"files_deleted": len(old_files), "rows_deleted": rows, "orphans_deleted": orphans}


def sweep_orphans(store: UploadStore, cutoff: datetime) -> int:
    """Delete stored uploads older than ``cutoff`` that no row names, and stale temp files."""
    deleted = store.remove_stale_temp_files(cutoff)
    candidates = store.names_older_than(cutoff)
    while names := set(islice(candidates, 500)):  # one query per 500 names
        named = set(db.session.scalars(select(jobs.Job.upload_name).where(jobs.Job.upload_name.in_(names))))
        for name in names - named:
            store.delete(name)
            deleted += 1
    return deleted


@click.command("prune")
@with_appcontext
def prune_command() -> None:
    """Delete uploads older than UPLOAD_RETENTION, job rows older than RESULT_TTL, and orphaned uploads."""
    counts = prune(app_settings(), current_app.uploads)
    click.echo(", ".join(f"{n} {what.replace('_', ' ')}" for what, n in counts.items()))
