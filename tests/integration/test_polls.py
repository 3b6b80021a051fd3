"""Cheap polls: ETag / If-None-Match answered 304 from the job's validator in Redis, Retry-After.

A poll that presents its ETag while nothing changed costs no SQL; every change of the row (the
worker's claim and result, a cancel, a retry, a delete) makes the old ETag stale at once, and
without a validator (Redis lost it, a write could not reach it) the row answers as before.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator

import pytest
from redis.exceptions import RedisError
from sqlalchemy import event

from imgsvc import create_app
from imgsvc.queue.changes import validator_key
from imgsvc.storage.db import db
from tests.conftest import image_bytes
from tests.integration.test_api import submit


@contextlib.contextmanager
def sql_statements(app) -> Iterator[list[str]]:
    """The SQL statements the app sends meanwhile."""
    seen: list[str] = []

    def note(_conn, _cursor, statement, *_args) -> None:
        seen.append(statement)

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", note)


@pytest.mark.parametrize("what", ["status", "result"])
def test_a_poll_with_its_etag_is_answered_304_without_sql_while_the_job_waits(client, app, what):
    job_id = submit(client, image_bytes()).get_json()["job_id"]
    first = client.get(f"/api/v1/{what}/{job_id}")
    assert first.status_code in (200, 202) and first.get_json()["status"] == "queued"
    assert first.headers["ETag"] and first.headers["Retry-After"] == "1"

    with sql_statements(app) as statements:
        again = client.get(f"/api/v1/{what}/{job_id}", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304 and again.get_data() == b""
    assert again.headers["ETag"] == first.headers["ETag"] and again.headers["Retry-After"] == "1"
    assert statements == []


def test_the_old_etag_gets_the_result_once_the_worker_has_written_it(client, run_worker):
    job_id = submit(client, image_bytes()).get_json()["job_id"]
    tag = client.get(f"/api/v1/result/{job_id}").headers["ETag"]
    run_worker()
    done = client.get(f"/api/v1/result/{job_id}", headers={"If-None-Match": tag})
    assert done.status_code == 200 and done.get_json()["image_description"]
    assert done.headers["ETag"] != tag and "Retry-After" not in done.headers
    # A finished result is answered 304 too, to a client that asks again with its new tag.
    assert (
        client.get(f"/api/v1/result/{job_id}", headers={"If-None-Match": done.headers["ETag"]}).status_code
        == 304
    )


def test_a_cancel_makes_the_tag_stale(client):
    job_id = submit(client, image_bytes()).get_json()["job_id"]
    tag = client.get(f"/api/v1/status/{job_id}").headers["ETag"]
    assert client.delete(f"/api/v1/jobs/{job_id}").get_json()["status"] == "cancelled"
    after = client.get(f"/api/v1/status/{job_id}", headers={"If-None-Match": tag})
    assert after.status_code == 200 and after.get_json()["status"] == "cancelled"


def test_a_status_tag_is_no_tag_for_the_result(client):
    job_id = submit(client, image_bytes()).get_json()["job_id"]
    tag = client.get(f"/api/v1/status/{job_id}").headers["ETag"]
    assert client.get(f"/api/v1/result/{job_id}", headers={"If-None-Match": tag}).status_code == 202


def test_another_keys_tag_never_matches(settings):
    app = create_app(settings.with_(api_keys=("alpha", "beta")))
    client = app.test_client()
    job_id = client.post(
        "/api/v1/submit",
        data={"file": (io.BytesIO(image_bytes()), "a.jpg", "image/jpeg")},
        headers={"X-API-Key": "alpha"},
    ).get_json()["job_id"]
    tag = client.get(f"/api/v1/status/{job_id}", headers={"X-API-Key": "alpha"}).headers["ETag"]
    other = client.get(f"/api/v1/status/{job_id}", headers={"X-API-Key": "beta", "If-None-Match": tag})
    assert other.status_code == 404
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def test_without_a_validator_the_row_answers(client, app):
    job_id = submit(client, image_bytes()).get_json()["job_id"]
    tag = client.get(f"/api/v1/status/{job_id}").headers["ETag"]
    app.redis.delete(validator_key(job_id))  # expired, or Redis lost it
    again = client.get(f"/api/v1/status/{job_id}", headers={"If-None-Match": tag})
    assert again.status_code == 200 and again.get_json()["status"] == "queued"
    assert "ETag" not in again.headers


def test_a_change_that_cannot_be_published_drops_the_validator(client, app, run_worker, monkeypatch):
    from redis.client import Pipeline

    job_id = submit(client, image_bytes()).get_json()["job_id"]
    tag = client.get(f"/api/v1/result/{job_id}").headers["ETag"]

    def unreachable(self, *args, **kwargs):
        if any(validator_key(job_id).encode() in b" ".join(map(_bytes, c[0])) for c in self.command_stack):
            raise RedisError("connection lost")
        return original(self, *args, **kwargs)

    original = Pipeline.execute
    monkeypatch.setattr(Pipeline, "execute", unreachable)
    run_worker()
    monkeypatch.undo()
    # The row is done; the tag the client holds must not be vouched for by a stale validator.
    done = client.get(f"/api/v1/result/{job_id}", headers={"If-None-Match": tag})
    assert done.status_code == 200 and done.get_json()["status"] == "done"


def _bytes(part) -> bytes:
    return part if isinstance(part, bytes) else str(part).encode()


def test_a_deleted_job_is_not_answered_304(client, run_worker):
    job_id = submit(client, image_bytes()).get_json()["job_id"]
    run_worker()
    tag = client.get(f"/api/v1/result/{job_id}").headers["ETag"]
    assert client.delete(f"/api/v1/jobs/{job_id}").get_json()["status"] == "deleted"
    assert client.get(f"/api/v1/result/{job_id}", headers={"If-None-Match": tag}).status_code == 404
