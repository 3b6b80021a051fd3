"""Retention: delete uploads and rows of finished jobs once they are old enough.

Uploads of finished jobs go after UPLOAD_RETENTION seconds (results stay readable);
the rows themselves after RESULT_TTL. Run ``flask --app imgsvc prune`` from cron.
"""

from __future__ import annotations

from datetime import timedelta

import click
from flask import current_app
from flask.cli import with_appcontext
from sqlalchemy import delete, select, update

from imgsvc.config import Settings
from imgsvc.storage import jobs
from imgsvc.storage.db import db
from imgsvc.storage.uploads import UploadStore


def prune(settings: Settings, store: UploadStore) -> dict[str, int]:
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
    return {"files_deleted": len(old_files), "rows_deleted": rows}


@click.command("prune")
@with_appcontext
def prune_command() -> None:
    """Delete uploads older than UPLOAD_RETENTION and job rows older than RESULT_TTL."""
    counts = prune(current_app.config["IMGSVC"], current_app.uploads)
    click.echo(", ".join(f"{n} {what.replace('_', ' ')}" for what, n in counts.items()))
