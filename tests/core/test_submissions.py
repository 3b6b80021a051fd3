"""The submit use case run directly, as the benches run it: no request, no blueprint.

An app context gives the job rows their database session; everything else the use case
needs is passed in through :class:`Intake`, built here from the test's own objects.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import threading
from collections.abc import Iterator

import pytest
from flask import has_request_context
from sqlalchemy.exc import OperationalError

from imgsvc import submissions
from imgsvc.errors import BadRequest, QueueUnavailable, UnsupportedImage
from imgsvc.metrics import RedisMetrics
from imgsvc.queue.connection import job_queue, redis_connection
from imgsvc.queue.routing import ModelEntry, ModelRegistry
from imgsvc.storage import jobs
from imgsvc.storage.uploads import LocalUploadStore
from imgsvc.submissions import Intake, Submission, SubmitGroup, accept_upload
from imgsvc.vision.base import Description
from tests.conftest import image_bytes
from tests.integration.procs import wait_until


@pytest.fixture()
def intake(app, settings) -> Iterator[Intake]:
    redis = redis_connection(settings)
    store = LocalUploadStore(settings.upload_dir, settings.max_file_size)
    with app.app_context():
        assert not has_request_context()
        yield Intake(
            settings, store, redis, job_queue(settings, redis), RedisMetrics(redis, settings.queue_name)
        )


def publish_model(intake: Intake, name: str, options: tuple[str, ...] = ()) -> None:
    """What a worker on the default queue says it runs (its name is also its ``generated_by``)."""
    registry = ModelRegistry(intake.task_queue, intake.settings.worker_ttl)
    registry.publish(ModelEntry(name, name, options, intake.task_queue.name, worker="w1"))


def stored_files(intake: Intake) -> list[str]:
    return sorted(p.name for p in intake.settings.upload_dir.glob("*") if p.is_file())


def test_accepted_upload_is_stored_recorded_and_enqueued(intake, jpeg_bytes):
    accepted = accept_upload(intake, io.BytesIO(jpeg_bytes), Submission(), owner="k1", filename="cat.jpg")

    assert (accepted.status, accepted.cached) == (jobs.Status.QUEUED, False)
    row = jobs.get_job(accepted.id)
    assert (row.status, row.owner, row.filename, row.size_bytes) == (
        "queued",
        "k1",
        "cat.jpg",
        len(jpeg_bytes),
    )
    assert (row.image_format, row.width, row.height) == ("JPEG", 64, 48)
    assert intake.task_queue.job_ids == [accepted.id]  # the RQ job carries the row's id
    assert intake.uploads.path_of(row.upload_name).read_bytes() == jpeg_bytes


def test_identical_bytes_are_answered_from_the_same_owners_result(intake, jpeg_bytes):
    publish_model(intake, "tiny-blip")
    first = accept_upload(intake, io.BytesIO(jpeg_bytes), Submission(), owner="k1")
    assert jobs.finish_jobs({first.id: (Description("a red square"), "tiny-blip", 12)}) == {first.id}

    again = accept_upload(intake, io.BytesIO(jpeg_bytes), Submission(), owner="k1")
    other_owner = accept_upload(intake, io.BytesIO(jpeg_bytes), Submission(), owner="k2")

    assert (again.status, again.cached) == (jobs.Status.DONE, True)
    assert jobs.get_job(again.id).description == "a red square"
    assert (other_owner.status, other_owner.cached) == (jobs.Status.QUEUED, False)
    assert intake.task_queue.job_ids == [first.id, other_owner.id]  # the hit was not enqueued


def test_what_follows_the_image_is_cut_off_before_dedupe_storage_and_the_quota(intake, jpeg_bytes):
    """Issue 23 row 4: one JPEG with a different PADDING-%d after its end is one image."""
    intake = dataclasses.replace(intake, settings=intake.settings.with_(quota_bytes_per_day=10**9))
    publish_model(intake, "tiny-blip")
    first = accept_upload(intake, io.BytesIO(jpeg_bytes + b"PADDING-1" * 100), Submission(), bucket="c1")

    row = jobs.get_job(first.id)
    assert (row.size_bytes, row.sha256) == (len(jpeg_bytes), hashlib.sha256(jpeg_bytes).hexdigest())
    assert intake.uploads.path_of(row.upload_name).read_bytes() == jpeg_bytes
    (quota,) = intake.redis.scan_iter("imgsvc:quota:*")
    assert int(intake.redis.hget(quota, "bytes")) == len(jpeg_bytes)  # the stored bytes are charged

    assert jobs.finish_jobs({first.id: (Description("a red square"), "tiny-blip", 12)}) == {first.id}
    again = accept_upload(intake, io.BytesIO(jpeg_bytes + b"PADDING-2" * 100), Submission())
    assert (again.cached, jobs.get_job(again.id).description) == (True, "a red square")
    assert stored_files(intake) == [row.upload_name]


def test_options_the_running_model_does_not_take_are_refused_before_anything_is_kept(intake, jpeg_bytes):
    publish_model(intake, "scene")

    with pytest.raises(BadRequest, match="not supported by the model scene") as refused:
        accept_upload(intake, io.BytesIO(jpeg_bytes), Submission(options={"max_length": 5}))

    assert refused.value.details["supported"] == []
    assert jobs.list_jobs(status=None, owner=None, limit=10, before=None) == []
    assert intake.task_queue.count == 0
    assert stored_files(intake) == []


def test_refused_image_leaves_no_row_and_no_file(intake):
    with pytest.raises(UnsupportedImage):
        accept_upload(intake, io.BytesIO(b"not an image at all"), Submission())

    assert jobs.list_jobs(status=None, owner=None, limit=10, before=None) == []
    assert stored_files(intake) == []


def test_batch_members_share_the_batch_id(intake):
    batch = jobs.new_id()
    ids = [
        accept_upload(intake, io.BytesIO(image_bytes(color=(i, 0, 0))), Submission(), batch_id=batch).id
        for i in range(2)
    ]
    assert {job.id for job in jobs.batch_members(batch, None)} == set(ids)


# -- submits that arrive together share their writes (SubmitGroup) ------------------------------
def submit_together(app, intake: Intake, filenames: list[str]) -> dict[str, object]:
    """One thread per file, all at once through one SubmitGroup: each file's Accepted, or what it raised."""
    outcomes: dict[str, object] = {}

    def one(index: int, name: str) -> None:
        with app.app_context():
            data = image_bytes("PNG", color=(index * 40 % 256, 90, 7))
            try:
                outcomes[name] = accept_upload(intake, io.BytesIO(data), Submission(), filename=name)
            except Exception as exc:
                outcomes[name] = exc

    threads = [threading.Thread(target=one, args=(i, name)) for i, name in enumerate(filenames)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return outcomes


@pytest.fixture()
def grouped(intake, monkeypatch) -> tuple[Intake, list[int]]:
    """An intake whose group's first INSERT (of 5 submits) is held until every other submit has
    handed its row in, so the rest form one group; the sizes of the INSERTs are recorded."""
    group = SubmitGroup()
    sizes: list[int] = []
    real = jobs.insert_jobs

    def insert_jobs(rows):
        sizes.append(len(rows))
        if len(sizes) == 1:
            assert wait_until(lambda: len(rows) + len(group._pending) == 5, timeout=10)
        return real(rows)

    monkeypatch.setattr(jobs, "insert_jobs", insert_jobs)
    return dataclasses.replace(intake, group=group), sizes


def test_submits_that_arrive_together_share_one_insert_and_one_enqueue(app, grouped, monkeypatch):
    intake, sizes = grouped
    enqueues: list[int] = []
    real = submissions.enqueue_describes
    monkeypatch.setattr(
        submissions,
        "enqueue_describes",
        lambda settings, wanted: (enqueues.append(len(wanted)), real(settings, wanted))[1],
    )

    outcomes = submit_together(app, intake, [f"{i}.png" for i in range(5)])

    assert len(sizes) == 2 and sum(sizes) == 5  # the first writer's group, then all the rest together
    assert enqueues == sizes
    ids = [outcome.id for outcome in outcomes.values()]
    assert len(set(ids)) == 5 and set(intake.task_queue.job_ids) == set(ids)
    rows = [jobs.get_job(job_id) for job_id in ids]
    assert {row.status for row in rows} == {"queued"}
    assert {row.filename for row in rows} == set(outcomes)  # each row is its own submit's


def test_submits_waiting_for_their_group_hold_no_database_connection(app, intake, monkeypatch):
    """Each did its dedupe read first (a model is published); had they kept its connection while
    they waited, 15 of them would take the whole pool from the thread writing their rows (a URL
    submit reads nothing before: it needs one), and every submit would time out after 30 s."""
    from imgsvc.storage.db import db

    publish_model(intake, "tiny-blip")
    group = SubmitGroup()
    held: list[int] = []
    real = jobs.insert_jobs

    def insert_jobs(rows):
        if not held:  # the first writer: wait until the other submits wait for it
            assert wait_until(lambda: len(rows) + len(group._pending) == 5, timeout=10)
            held.append(db.engine.pool.checkedout())
        return real(rows)

    monkeypatch.setattr(jobs, "insert_jobs", insert_jobs)

    outcomes = submit_together(app, dataclasses.replace(intake, group=group), [f"{i}.png" for i in range(5)])

    assert {outcome.status for outcome in outcomes.values()} == {"queued"}
    assert held == [0]  # none held while they wait (the writer takes one for its INSERT)


def test_a_group_whose_enqueue_fails_leaves_nothing_and_every_submit_is_told(app, grouped, monkeypatch):
    intake, _ = grouped

    def redis_down(settings, wanted):
        raise QueueUnavailable()

    monkeypatch.setattr(submissions, "enqueue_describes", redis_down)

    outcomes = submit_together(app, intake, [f"{i}.png" for i in range(5)])

    assert all(isinstance(outcome, QueueUnavailable) for outcome in outcomes.values())
    assert jobs.list_jobs(status=None, owner=None, limit=10, before=None) == []
    assert stored_files(intake) == [] and intake.task_queue.job_ids == []


def test_a_row_that_cannot_be_written_spoils_no_other_row_of_its_group(app, grouped, monkeypatch):
    intake, sizes = grouped
    held = jobs.insert_jobs

    def insert_jobs(rows):
        if any(row["filename"] == "bad.png" for row in rows):
            sizes.append(len(rows))
            raise OperationalError("INSERT", {}, Exception("disk I/O error"))
        return held(rows)

    monkeypatch.setattr(jobs, "insert_jobs", insert_jobs)
    names = ["0.png", "1.png", "bad.png", "3.png", "4.png"]

    outcomes = submit_together(app, intake, names)

    assert isinstance(outcomes.pop("bad.png"), OperationalError)
    assert {outcome.status for outcome in outcomes.values()} == {"queued"}
    assert set(intake.task_queue.job_ids) == {outcome.id for outcome in outcomes.values()}
    assert len(stored_files(intake)) == 4  # the refused row's upload is gone
