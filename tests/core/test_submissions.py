"""The submit use case run directly, as the benches run it: no request, no blueprint.

An app context gives the job rows their database session; everything else the use case
needs is passed in through :class:`Intake`, built here from the test's own objects.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from collections.abc import Iterator

import pytest
from flask import has_request_context

from imgsvc.errors import BadRequest, UnsupportedImage
from imgsvc.metrics import RedisMetrics
from imgsvc.queue.connection import job_queue, publish_model, redis_connection
from imgsvc.storage import jobs
from imgsvc.storage.uploads import LocalUploadStore
from imgsvc.submissions import Intake, Submission, accept_upload
from imgsvc.vision.base import Description
from tests.conftest import image_bytes


@pytest.fixture()
def intake(app, settings) -> Iterator[Intake]:
    redis = redis_connection(settings)
    store = LocalUploadStore(settings.upload_dir, settings.max_file_size)
    with app.app_context():
        assert not has_request_context()
        yield Intake(
            settings, store, redis, job_queue(settings, redis), RedisMetrics(redis, settings.queue_name)
        )


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
    publish_model(intake.redis, intake.settings, "tiny-blip", [])
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
    publish_model(intake.redis, intake.settings, "tiny-blip", [])
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
    publish_model(intake.redis, intake.settings, "scene", [])

    with pytest.raises(BadRequest, match="not supported by the running model scene") as refused:
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


def test_a_model_switch_by_another_process_is_seen_within_a_second(intake, jpeg_bytes, monkeypatch):
    """The running model is read at most once a second (issue 27: a switch is rare, and
    ``generated_by`` always says what ran); the process that publishes it knows at once."""
    from imgsvc.queue import connection

    worker_side = redis_connection(intake.settings)  # another process's connection
    publish_model(worker_side, intake.settings, "scene", [])
    with pytest.raises(BadRequest, match="running model scene"):
        accept_upload(intake, io.BytesIO(jpeg_bytes), Submission(options={"max_length": 5}))

    publish_model(worker_side, intake.settings, "tiny-blip", ["max_length"])
    with pytest.raises(BadRequest, match="running model scene"):  # still what it read < 1 s ago
        accept_upload(intake, io.BytesIO(jpeg_bytes), Submission(options={"max_length": 5}))

    now = connection.time.monotonic()
    monkeypatch.setattr(connection.time, "monotonic", lambda: now + connection.MODEL_CACHE_SECONDS)
    accepted = accept_upload(intake, io.BytesIO(jpeg_bytes), Submission(options={"max_length": 5}))
    assert accepted.status == jobs.Status.QUEUED


def test_the_process_that_publishes_a_model_sees_it_at_once(intake):
    publish_model(intake.redis, intake.settings, "scene", [])
    assert connection_model(intake)["name"] == "scene"
    publish_model(intake.redis, intake.settings, "tiny-blip", ["max_length"])
    assert connection_model(intake)["name"] == "tiny-blip"


def connection_model(intake: Intake) -> dict:
    from imgsvc.queue.connection import running_model

    return running_model(intake.redis, intake.settings)
