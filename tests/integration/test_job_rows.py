"""The job rows a worker claims and writes a batch at a time, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from imgsvc import create_app
from imgsvc.storage import jobs
from imgsvc.storage.db import db
from imgsvc.vision.base import Description, Tag


@pytest.fixture(params=["sqlite", "postgresql"])
def db_app(request, settings):
    postgresql = request.param == "postgresql"
    app = create_app(
        settings.with_(database_url=request.getfixturevalue("postgres_url")) if postgresql else settings
    )
    with app.app_context():
        yield app
        db.session.remove()
        if postgresql:
            db.drop_all()
        db.engine.dispose()


def new_row(**fields) -> str:
    values = {"image_format": "PNG", "width": 1, "height": 1, "size_bytes": 1, "sha256": "0" * 64}
    return jobs.create_job(**(values | fields)).id


def test_claiming_a_batch_returns_what_the_worker_needs_and_skips_what_is_not_claimable(db_app):
    queued = new_row(upload_name="a" * 32 + ".png", options={"max_length": 9}, callback_url="http://x.test/")
    again = new_row(upload_name="b" * 32 + ".png")
    jobs.claim_jobs([again])  # processing: its worker died, it may be claimed again
    done, cancelled = new_row(upload_name="c" * 32 + ".png"), new_row(upload_name="d" * 32 + ".png")
    jobs.finish_jobs({done: (Description("x"), "m", 1)})
    jobs.mark_cancelled(cancelled)
    waiting = new_row(upload_name="e" * 32 + ".png")

    claims, ahead = jobs.claim_jobs([queued, again, done, cancelled, jobs.new_id()], peek=[waiting, done])

    assert set(claims) == {queued, again}
    assert claims[queued] == jobs.Claim(queued, "a" * 32 + ".png", {"max_length": 9}, "http://x.test/")
    assert ahead == {waiting: "e" * 32 + ".png"}  # only rows still queued, and not claimed
    db.session.expire_all()
    assert (jobs.get_job(queued).status, jobs.get_job(queued).attempts) == (jobs.Status.PROCESSING, 1)
    assert jobs.get_job(again).attempts == 2
    assert (jobs.get_job(waiting).status, jobs.get_job(waiting).attempts) == (jobs.Status.QUEUED, 0)


def test_a_batchs_outcomes_are_written_together_except_where_the_user_cancelled(db_app):
    ids = [new_row(upload_name=f"{i:032x}.png") for i in range(4)]
    jobs.claim_jobs(ids)
    jobs.mark_cancelled(ids[1])  # pressed cancel while the model ran
    result = Description("a cat", tags=[Tag("cat", 0.9)])

    written = jobs.finish_jobs(
        {ids[0]: (result, "model", 12), ids[1]: (result, "model", 12), ids[2]: (result, "model", 12)},
        {ids[3]: "cannot decode image"},
    )

    assert written == {ids[0], ids[2], ids[3]}
    db.session.expire_all()
    rows = [jobs.get_job(i) for i in ids]
    assert [row.status for row in rows] == ["done", "cancelled", "done", "failed"]
    assert rows[0].description == "a cat" and rows[0].tags == [{"label": "cat", "score": 0.9}]
    assert rows[0].duration_ms == 12 and rows[0].generated_by == "model" and rows[0].completed_at
    assert rows[3].error == "cannot decode image"
    assert jobs.finish_jobs({ids[0]: (result, "model", 1)}) == set()  # finished rows stay as they are


def test_rows_of_submits_that_arrive_together_go_in_with_their_own_columns(db_app):
    """One INSERT per set of columns: an upload's row and an image_url's row in one group."""
    image = {"image_format": "PNG", "width": 1, "height": 1, "size_bytes": 1, "sha256": "1" * 64}
    no_image = {"image_format": "", "width": 0, "height": 0, "size_bytes": 0, "sha256": ""}
    upload, by_url = jobs.insert_jobs(
        [
            image | {"upload_name": "f" * 32 + ".png", "filename": "cat.png"},
            no_image | {"id": (chosen := jobs.new_id()), "image_url": "https://example.test/a.jpg"},
        ]
    )
    assert by_url["id"] == chosen
    db.session.expire_all()
    assert (jobs.get_job(upload["id"]).upload_name, jobs.get_job(upload["id"]).status) == (
        "f" * 32 + ".png",
        "queued",
    )
    assert (jobs.get_job(chosen).image_url, jobs.get_job(chosen).upload_name) == (
        "https://example.test/a.jpg",
        None,
    )
