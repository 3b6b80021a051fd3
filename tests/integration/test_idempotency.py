"""``Idempotency-Key`` on submit and batch: a request sent again gets the first answer, not a second job."""

from __future__ import annotations

import io

import pytest

from imgsvc import create_app
from tests.conftest import image_bytes
from tests.integration.test_api import row_count


def send(client, data: bytes, key: str | None, path: str = "/api/v1/submit", api_key: str | None = None):
    headers = {"Idempotency-Key": key} if key is not None else {}
    if api_key:
        headers["X-API-Key"] = api_key
    return client.post(
        path,
        data={"file": (io.BytesIO(data), "photo.jpg", "image/jpeg")},
        content_type="multipart/form-data",
        headers=headers,
    )


def test_a_submit_sent_again_with_its_key_gets_the_first_answer_and_makes_no_second_job(client, app):
    image = image_bytes()
    answers = [send(client, image, "order-7-photo") for _ in range(5)]
    first = answers[0]
    assert first.status_code == 202 and "Idempotent-Replayed" not in first.headers
    for again in answers[1:]:
        assert again.status_code == 202 and again.get_json() == first.get_json()
        assert again.headers["Location"] == first.headers["Location"]
        assert again.headers["Idempotent-Replayed"] == "true"
    assert row_count(app) == 1
    # without a key, the same request is a new job each time, as before
    assert send(client, image, None).get_json()["job_id"] != first.get_json()["job_id"]


def test_the_same_key_with_another_request_is_422(client, app):
    assert send(client, image_bytes(color=(1, 1, 1)), "k-1").status_code == 202
    other = send(client, image_bytes(color=(2, 2, 2)), "k-1")
    assert other.status_code == 422
    assert other.get_json()["error"]["code"] == "idempotency_key_reused"
    assert row_count(app) == 1


def test_a_refused_request_keeps_nothing_and_its_key_stays_free(client, app):
    refused = send(client, b"a shopping list, not a picture" * 9, "k-2")
    assert refused.status_code == 415
    accepted = send(client, image_bytes(), "k-2")
    assert accepted.status_code == 202 and "Idempotent-Replayed" not in accepted.headers


def test_keys_are_kept_for_24_hours_per_api_key(settings, redis_db):
    client = create_app(settings.with_(api_keys=("alice", "bob"))).test_client()
    image = image_bytes()
    alice = send(client, image, "shared-key", api_key="alice").get_json()["job_id"]
    bob = send(client, image, "shared-key", api_key="bob").get_json()["job_id"]
    assert alice != bob  # one key's idempotency keys are not another's
    assert send(client, image, "shared-key", api_key="alice").get_json()["job_id"] == alice
    (slot,) = [k for k in redis_db.scan_iter("imgsvc:idempotency:*") if b":-:" not in k][:1]
    assert 24 * 3600 - 60 < redis_db.ttl(slot) <= 24 * 3600


def test_a_batch_sent_again_with_its_key_gets_the_same_batch(client, app):
    first = send(client, image_bytes(), "batch-1", path="/api/v1/batch")
    again = send(client, image_bytes(), "batch-1", path="/api/v1/batch")
    assert first.status_code == again.status_code == 202
    assert again.get_json()["batch_id"] == first.get_json()["batch_id"]
    assert row_count(app) == 1


@pytest.mark.parametrize("key", ["", "x" * 256, "naïve"])
def test_a_malformed_key_is_400(client, key):
    response = send(client, image_bytes(), key)
    assert response.status_code == 400
    assert response.get_json()["error"]["message"] == (
        "Idempotency-Key must be 1 to 255 printable ASCII characters"
    )
