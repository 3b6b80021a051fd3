"""Several images in one request: ``POST /api/v1/batch``, its summary, and the file names that
come back (the worker's dynamic batching is ``test_batching.py``)."""

from __future__ import annotations

import io

from imgsvc import create_app
from tests.conftest import image_bytes
from tests.integration.test_api import row_count, submit


def files(*payloads: tuple[bytes, str]) -> dict:
    return {"file": [(io.BytesIO(data), name) for data, name in payloads]}


def test_batch_accepts_good_files_and_reports_bad_ones(client, run_worker):
    response = client.post(
        "/api/v1/batch",
        data=files((image_bytes("JPEG"), "a.jpg"), (b"not an image", "b.jpg"), (image_bytes("PNG"), "c.png")),
        content_type="multipart/form-data",
    )
    assert response.status_code == 202
    body = response.get_json()
    assert (body["accepted"], body["rejected"]) == (2, 1)
    good, bad, other = body["jobs"]
    assert good["status"] == "queued" and other["status"] == "queued"
    assert bad["error"]["code"] == "unsupported_media_type" and bad["filename"] == "b.jpg"

    run_worker()

    summary = client.get(f"/api/v1/batch/{body['batch_id']}").get_json()
    assert summary["finished"] is True and summary["counts"] == {"done": 2}
    assert {j["job_id"] for j in summary["jobs"]} == {good["job_id"], other["job_id"]}
    assert all(j["image_description"].strip() for j in summary["jobs"])
    # Each result carries the name its file was sent under, so results match files without the submit answer.
    assert {j["job_id"]: j["filename"] for j in summary["jobs"]} == {
        good["job_id"]: "a.jpg",
        other["job_id"]: "c.png",
    }


def test_the_clients_file_name_comes_back_sanitised_as_plain_json_text(client):
    # (no CR/LF or backslashes: the test client would put them into the part's header unescaped)
    hostile = "/home/me/<img src=x onerror=alert(1)>\u202egnp\x07.jpg\t"
    job_id = submit(client, image_bytes("PNG"), filename=hostile, content_type="image/png").get_json()[
        "job_id"
    ]
    queued = client.post(
        "/api/v1/batch",
        data=files((image_bytes("GIF"), "../../../x.gif")),
        content_type="multipart/form-data",
    ).get_json()["jobs"][0]
    assert queued["filename"] == "x.gif"

    listed = client.get("/api/v1/jobs")
    assert listed.mimetype == "application/json"
    names = {job["job_id"]: job["filename"] for job in listed.get_json()["jobs"]}
    assert names == {job_id: "<img src=x onerror=alert(1)>gnp.jpg", queued["job_id"]: "x.gif"}
    assert client.get(f"/api/v1/status/{job_id}").get_json()["filename"] == names[job_id]
    assert client.get(f"/api/v1/result/{job_id}").get_json()["filename"] == names[job_id]


def test_batch_of_only_bad_files_is_400(client, app):
    response = client.post(
        "/api/v1/batch", data=files((b"", "a.jpg"), (b"text", "b.txt")), content_type="multipart/form-data"
    )
    assert response.status_code == 400 and response.get_json()["accepted"] == 0
    assert row_count(app) == 0
    assert client.get("/api/v1/batch/00000000-0000-0000-0000-000000000000").status_code == 404


def test_submit_with_several_files_points_at_batch(client, app):
    response = client.post(
        "/api/v1/submit",
        data=files((image_bytes("JPEG"), "a.jpg"), (image_bytes("PNG"), "b.png")),
        content_type="multipart/form-data",
    )
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "bad_request" and error["batch_url"] == "/api/v1/batch"
    assert "/api/v1/batch" in error["message"] and "has 2" in error["message"]
    assert row_count(app) == 0


def test_a_batch_summary_is_only_visible_to_the_key_that_submitted_it(settings, redis_db):
    app = create_app(settings.with_(api_keys=("alpha", "beta")))
    client = app.test_client()
    alpha, beta = {"X-API-Key": "alpha"}, {"X-API-Key": "beta"}
    batch_id = client.post(
        "/api/v1/batch",
        data=files((image_bytes("PNG"), "a.png"), (image_bytes("JPEG"), "b.jpg")),
        headers=alpha,
        content_type="multipart/form-data",
    ).get_json()["batch_id"]
    mine = client.get(f"/api/v1/batch/{batch_id}", headers=alpha)
    assert mine.status_code == 200 and mine.get_json()["counts"] == {"queued": 2}
    theirs = client.get(f"/api/v1/batch/{batch_id}", headers=beta)
    assert theirs.status_code == 404 and theirs.get_json()["error"]["code"] == "not_found"
    assert client.get(f"/api/v1/batch/{batch_id}").status_code == 401


def test_a_batch_summary_lists_its_jobs_in_the_order_of_the_files(client):
    payloads = [(image_bytes("PNG", color=(n * 50, 20, 20)), f"{n}.png") for n in range(5)]
    body = client.post("/api/v1/batch", data=files(*payloads), content_type="multipart/form-data").get_json()
    summary = client.get(f"/api/v1/batch/{body['batch_id']}").get_json()
    assert [j["job_id"] for j in summary["jobs"]] == [j["job_id"] for j in body["jobs"]]
