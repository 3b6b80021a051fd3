"""The OpenAPI document: valid, complete, browsable offline, and true to what the app answers."""

from __future__ import annotations

import io
import re

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from openapi_spec_validator import validate
from rq import Worker
from schemathesis import checks

from imgsvc.web.docs import openapi_spec
from tests.conftest import image_bytes
from tests.integration.scene_double import FixedSceneDescriber

DOCUMENTED_BLUEPRINTS = {"api", "health"}
IGNORED_METHODS = {"HEAD", "OPTIONS"}


def test_spec_is_valid_openapi_3_1(client):
    spec = client.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.1")
    validate(spec)
    assert spec == openapi_spec()


def test_every_api_and_health_route_is_documented_and_nothing_else(app):
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint.partition(".")[0] in DOCUMENTED_BLUEPRINTS:
            path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
            routes |= {(path, method.lower()) for method in rule.methods - IGNORED_METHODS}
    documented = {
        (path, method)
        for path, item in openapi_spec()["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    }
    assert routes == documented


def test_docs_page_works_offline(client):
    page = client.get("/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert client.get("/docs/").data == page.data  # with a trailing slash, as people type it
    html = page.get_data(as_text=True)
    assert "SwaggerUIBundle" in html and "/openapi.json" in html
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert len(assets) >= 3
    for url in assets:
        assert not re.match(r"(https?:)?//", url), f"{url} would need the network"
        response = client.get(url)
        assert response.status_code == 200, url
        assert response.content_length, url


def post_images(client, *images: bytes, path: str = "/api/v1/submit", headers=None, **fields: str):
    form: dict = {"file": [(io.BytesIO(data), f"image-{i}", "image/jpeg") for i, data in enumerate(images)]}
    return client.post(path, data=form | fields, content_type="multipart/form-data", headers=headers)


@pytest.fixture()
def conforms(app):
    """``conforms("GET", "/api/v1/status/{job_id}", response)``: the response is as the spec says."""
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)

    def check(method: str, template: str, response):
        schema[template][method].validate_response(response)
        return response

    return check


def test_a_job_through_every_state_answers_as_documented(client, settings, run_worker, conforms):
    """The fuzzer never sends a decodable image: walk real jobs through their states by hand."""
    status, result = "/api/v1/status/{job_id}", "/api/v1/result/{job_id}"
    assert conforms("GET", "/readyz", client.get("/readyz")).status_code == 503  # no worker yet

    good = conforms("POST", "/api/v1/submit", post_images(client, image_bytes("JPEG")))
    bad = conforms("POST", "/api/v1/submit", post_images(client, image_bytes("PNG")))
    assert good.status_code == bad.status_code == 202
    assert good.headers["Location"] == f"/api/v1/status/{good.json['job_id']}"
    good_id, bad_id = good.json["job_id"], bad.json["job_id"]
    assert conforms("GET", result, client.get(f"/api/v1/result/{good_id}")).status_code == 202
    conforms("GET", status, client.get(f"/api/v1/status/{good_id}"))

    bad_stored = next(p for p in settings.upload_dir.iterdir() if p.suffix == ".png")
    bad_stored.write_bytes(b"not a png any more")  # a permanent failure: the job fails for good
    run_worker()

    assert conforms("GET", result, client.get(f"/api/v1/result/{good_id}")).status_code == 200
    assert conforms("GET", result, client.get(f"/api/v1/result/{bad_id}")).status_code == 422
    conforms("GET", status, client.get(f"/api/v1/status/{bad_id}"))
    again = conforms("POST", "/api/v1/submit", post_images(client, image_bytes("JPEG")))
    assert again.status_code == 202

    first = conforms("GET", "/api/v1/jobs", client.get("/api/v1/jobs?limit=1"))
    assert first.status_code == 200 and first.json["next_cursor"]
    rest = client.get(f"/api/v1/jobs?limit=100&cursor={first.json['next_cursor']}")
    assert len(conforms("GET", "/api/v1/jobs", rest).json["jobs"]) == 2
    conforms("GET", "/api/v1/jobs", client.get("/api/v1/jobs?status=failed"))

    queued = post_images(client, image_bytes("JPEG", size=(32, 32))).json["job_id"]
    cancelled = conforms("DELETE", "/api/v1/jobs/{job_id}", client.delete(f"/api/v1/jobs/{queued}"))
    assert cancelled.json["status"] == "cancelled"
    assert conforms("GET", result, client.get(f"/api/v1/result/{queued}")).status_code == 422
    deleted = conforms("DELETE", "/api/v1/jobs/{job_id}", client.delete(f"/api/v1/jobs/{good_id}"))
    assert deleted.json["status"] == "deleted"


def test_objects_and_people_answer_as_documented(client, run_worker, conforms):
    job_id = post_images(client, image_bytes("JPEG")).json["job_id"]
    run_worker(FixedSceneDescriber())
    result = conforms("GET", "/api/v1/result/{job_id}", client.get(f"/api/v1/result/{job_id}"))
    assert result.json["objects"] and result.json["people"]["faces"]


def test_refusals_answer_as_documented(client, conforms):
    submit = "/api/v1/submit"
    for response in (
        post_images(client, b""),
        post_images(client, b"not an image"),
        post_images(client, image_bytes(), max_length="0"),
        post_images(client, image_bytes(), colour="blue"),
        client.post(submit),
    ):
        assert conforms("POST", submit, response).status_code in (400, 415)
    missing = client.get("/api/v1/result/00000000-0000-4000-8000-000000000000")
    assert conforms("GET", "/api/v1/result/{job_id}", missing).status_code == 404
    wrong_method = client.put(submit)
    assert wrong_method.status_code == 405 and wrong_method.headers["Allow"]
    assert wrong_method.json["error"]["code"] == "method_not_allowed"
    assert conforms("GET", "/api/v1/jobs", client.get("/api/v1/jobs?limit=0")).status_code == 400


def test_a_batch_answers_as_documented(client, run_worker, conforms):
    batch = post_images(client, image_bytes("JPEG"), b"not an image", path="/api/v1/batch")
    assert conforms("POST", "/api/v1/batch", batch).status_code == 202
    assert batch.json["accepted"] == 1 and batch.json["rejected"] == 1
    url = f"/api/v1/batch/{batch.json['batch_id']}"
    conforms("GET", "/api/v1/batch/{batch_id}", client.get(url))
    run_worker()
    assert conforms("GET", "/api/v1/batch/{batch_id}", client.get(url)).json["finished"] is True
    refused = post_images(client, b"", b"nope", path="/api/v1/batch")
    assert conforms("POST", "/api/v1/batch", refused).status_code == 400


def test_models_and_the_refusals_of_a_model_answer_as_documented(app, client, settings, conforms):
    from imgsvc.queue.routing import ModelEntry, ModelRegistry

    registry = ModelRegistry(app.task_queue, settings.worker_ttl)
    live = Worker([app.task_queue], connection=app.redis)
    live.register_birth()
    registry.publish(ModelEntry("blip", "blip", ("max_length", "prompt"), app.task_queue.name, live.name))
    registry.publish(ModelEntry("builtin:scene", "builtin:scene(x)", (), "imgsvc.builtin:scene", "gone"))
    models = conforms("GET", "/api/v1/models", client.get("/api/v1/models"))
    assert [(m["name"], m["workers"]) for m in models.json["models"]] == [("blip", 1), ("builtin:scene", 0)]
    submit = "/api/v1/submit"
    assert conforms("POST", submit, post_images(client, image_bytes(), model="nope")).status_code == 400
    down = conforms("POST", submit, post_images(client, image_bytes(), model="builtin:scene"))
    assert down.status_code == 503 and down.json["error"]["code"] == "model_unavailable"
    batch = conforms(
        "POST", "/api/v1/batch", post_images(client, image_bytes(), path="/api/v1/batch", model="x")
    )
    assert batch.status_code == 400 and batch.json["error"]["code"] == "unknown_model"
    live.register_death()


def test_api_keys_answer_as_documented(app, conforms):
    app.config["IMGSVC"] = app.config["IMGSVC"].with_(api_keys=("secret-key",))
    client = app.test_client()
    refused = conforms("POST", "/api/v1/submit", post_images(client, image_bytes()))
    assert refused.status_code == 401
    accepted = post_images(client, image_bytes(), headers={"X-API-Key": "secret-key"})
    assert conforms("POST", "/api/v1/submit", accepted).status_code == 202
    assert client.get("/healthz").status_code == 200  # the probes never need a key


@pytest.fixture()
def settings(settings):
    """No DNS look-ups for the fuzzer's made-up callback_url and image_url hosts."""
    return settings.with_(webhook_allow_private=True, image_url_allow_private=True)


@pytest.fixture()
def ready_app(app):
    """The app with one worker registered in Redis, so /readyz may answer 200 as well."""
    worker = Worker([app.task_queue], connection=app.redis)
    worker.register_birth()
    yield app
    worker.register_death()


# Whether these are accepted depends on more than a schema can say: an upload must be an image
# that decodes, a cursor must be one the server handed out. The fuzzer's values are rightly refused.
CONTENT_CHECKED = {"/api/v1/submit", "/api/v1/batch", "/api/v1/jobs"}

# Built from the packaged spec (served verbatim, see the first test), not with
# schemathesis.pytest.from_fixture: its lazy loader writes Node._nodeid, which pytest 9.2 removed.
# One plain pytest parameter per operation (not schemathesis' own parametrize, whose items all share
# one node id: pytest-xdist, which schedules by node id, would run only the first operation).
OPERATIONS = [result.ok() for result in schemathesis.openapi.from_dict(openapi_spec()).get_all_operations()]


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda operation: operation.label)
def test_app_answers_as_documented(operation, ready_app):
    """Every documented operation: status codes, headers, bodies as the spec says, never a 5xx."""
    excluded = [checks.positive_data_acceptance] if operation.path in CONTENT_CHECKED else []

    @given(case=operation.as_strategy())
    @hypothesis_settings(
        max_examples=25,
        deadline=None,
        derandomize=True,  # the same cases on every run: CI must not pass or fail by luck
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    def answers_as_documented(case) -> None:
        case.call_and_validate(app=ready_app, excluded_checks=excluded)

    answers_as_documented()
