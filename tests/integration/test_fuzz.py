"""Hypothesis throws malformed uploads at the real app: never a 5xx, never a leftover row or file.

Each test records how many inputs it tried in tests/artifacts/fuzz-counts.json.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgsvc import create_app
from imgsvc.storage import jobs
from imgsvc.storage.db import db
from tests.conftest import image_bytes

COUNTS: Counter[str] = Counter()
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
VALID = [image_bytes(fmt) for fmt in ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")]


@pytest.fixture(scope="module", autouse=True)
def write_counts():
    yield
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "fuzz-counts.json").write_text(
        json.dumps(COUNTS | {"total": sum(COUNTS.values())}, indent=2)
    )


@pytest.fixture()
def fuzz_app(settings):
    # a small limit so "too big" is reachable by generated inputs
    app = create_app(settings.with_(max_file_size=50_000))
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def _state(app, settings) -> tuple[int, int]:
    with app.app_context():
        rows = db.session.query(jobs.Job).count()
    files = len([p for p in settings.upload_dir.glob("*")]) if settings.upload_dir.exists() else 0
    return rows, files


def _check(app, settings, response, name: str) -> None:
    COUNTS[name] += 1
    assert response.status_code < 500, response.get_data()[:300]
    assert response.is_json, response.get_data()[:300]
    if response.status_code >= 400:
        assert set(response.get_json()["error"]) >= {"code", "message", "status"}


def _rejected_leaves_nothing(app, settings, before, response) -> None:
    if response.status_code >= 400:
        assert _state(app, settings) == before


@FUZZ
@given(payload=st.binary(min_size=0, max_size=4096))
def test_random_bytes(fuzz_app, settings, payload):
    before = _state(fuzz_app, settings)
    response = fuzz_app.test_client().post(
        "/api/v1/submit", data={"file": (io.BytesIO(payload), "x.jpg")}, content_type="multipart/form-data"
    )
    _check(fuzz_app, settings, response, "random_bytes")
    assert response.status_code in (400, 413, 415)
    _rejected_leaves_nothing(fuzz_app, settings, before, response)


@FUZZ
@given(data=st.data())
def test_truncated_and_bitflipped_images(fuzz_app, settings, data):
    original = data.draw(st.sampled_from(VALID))
    cut = data.draw(st.integers(0, len(original)))
    mutated = bytearray(original[:cut])
    for _ in range(data.draw(st.integers(0, 4))):
        if mutated:
            index = data.draw(st.integers(0, len(mutated) - 1))
            mutated[index] = data.draw(st.integers(0, 255))
    before = _state(fuzz_app, settings)
    response = fuzz_app.test_client().post(
        "/api/v1/submit",
        data={"file": (io.BytesIO(bytes(mutated)), "y.png")},
        content_type="multipart/form-data",
    )
    _check(fuzz_app, settings, response, "truncated_or_flipped_image")
    assert response.status_code in (202, 400, 413, 415)
    _rejected_leaves_nothing(fuzz_app, settings, before, response)


FIELD = st.text(st.characters(codec="utf-8", exclude_characters="\x00\r\n"), min_size=1, max_size=40)


@FUZZ
@given(
    fields=st.dictionaries(FIELD, st.text(max_size=200), max_size=4),
    filename=st.text(max_size=3000),
    content_type=st.text(st.characters(codec="ascii", exclude_characters="\r\n"), max_size=300),
    as_file=st.booleans(),
    shape=st.sampled_from(["multipart", "urlencoded", "json", "raw"]),
)
def test_wrong_request_shapes_and_huge_headers(
    fuzz_app, settings, fields, filename, content_type, as_file, shape
):
    client = fuzz_app.test_client()
    before = _state(fuzz_app, settings)
    body = dict(fields)
    if as_file:
        body["file"] = (io.BytesIO(VALID[1]), filename or "f", content_type or "application/octet-stream")
    if shape == "multipart":
        response = client.post("/api/v1/submit", data=body, content_type="multipart/form-data")
    elif shape == "urlencoded":
        response = client.post("/api/v1/submit", data={k: v for k, v in fields.items()})
    elif shape == "json":
        response = client.post("/api/v1/submit", json=fields)
    else:
        response = client.post(
            "/api/v1/submit", data=filename.encode(), headers={"Content-Type": content_type or "text/plain"}
        )
    _check(fuzz_app, settings, response, "request_shape")
    if not (as_file and shape == "multipart" and set(fields) <= {"file"}):
        assert response.status_code >= 400
    _rejected_leaves_nothing(fuzz_app, settings, before, response)


@FUZZ
@given(
    route=st.sampled_from(["status", "result", "jobs", "batch"]),
    ident=st.text(st.characters(codec="utf-8", exclude_characters="/?#\x00"), min_size=1, max_size=200),
    query=st.dictionaries(
        st.sampled_from(["status", "limit", "cursor", "x"]), st.text(max_size=50), max_size=3
    ),
)
def test_lookups_with_arbitrary_ids_and_queries(fuzz_app, settings, route, ident, query):
    client = fuzz_app.test_client()
    path = "/api/v1/jobs" if route == "jobs" else f"/api/v1/{route}/{ident}"
    response = client.get(path, query_string=query)
    _check(fuzz_app, settings, response, "lookup")
    assert response.status_code in (200, 400, 404)
    if route != "jobs":
        assert response.status_code == 404
