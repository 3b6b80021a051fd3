"""Per-job options (``max_length``, ``prompt``, ``options``): checked at submit against the model
the workers run, and passed through to it."""

from __future__ import annotations

import io
import json

import pytest

from imgsvc.vision.base import Describer, Description
from tests.conftest import image_bytes
from tests.integration.test_api import row_count, stored_files


def test_unknown_or_invalid_options_are_400(client, app):
    data = image_bytes("PNG")
    for form in ({"temperature": "2"}, {"max_length": "0"}, {"max_length": "many"}, {"options": "[1]"}):
        response = client.post(
            "/api/v1/submit",
            data={"file": (io.BytesIO(data), "x.png"), **form},
            content_type="multipart/form-data",
        )
        assert response.status_code == 400, form
    assert row_count(app) == 0


def test_an_option_the_running_model_cannot_honour_says_what_would(client, app, settings):
    from imgsvc.queue.routing import ModelEntry, ModelRegistry

    # What a worker of the default model says it runs.
    name = "builtin:efficientnet-lite0"
    entry = ModelEntry(name, name, (), app.task_queue.name, worker="w1")
    ModelRegistry(app.task_queue, settings.worker_ttl).publish(entry)
    response = client.post(
        "/api/v1/submit",
        data={
            "file": (io.BytesIO(image_bytes("PNG")), "x.png"),
            "max_length": "12",
            "prompt": "a picture of",
        },
        content_type="multipart/form-data",
    )
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["message"] == (
        "option(s) max_length, prompt not supported by the model builtin:efficientnet-lite0, "
        "which takes none; GET /api/v1/models says which model takes which options"
    )
    assert error["supported"] == [] and error["model"] == name
    assert row_count(app) == 0


def test_max_length_option_reaches_the_model(client, run_worker, tiny_describer):
    data = image_bytes("PNG")
    short = client.post(
        "/api/v1/submit",
        data={"file": (io.BytesIO(data), "x.png"), "max_length": "2"},
        content_type="multipart/form-data",
    ).get_json()["job_id"]
    long = client.post(
        "/api/v1/submit",
        data={"file": (io.BytesIO(data), "x.png"), "options": json.dumps({"max_length": 12})},
        content_type="multipart/form-data",
    ).get_json()["job_id"]
    run_worker()
    short_text = client.get(f"/api/v1/result/{short}").get_json()
    long_text = client.get(f"/api/v1/result/{long}").get_json()
    assert short_text["options"] == {"max_length": 2} and long_text["options"] == {"max_length": 12}
    assert len(short_text["image_description"]) < len(long_text["image_description"])


class NoOptions(Describer):
    """A model that honours no per-job option, like the built-in describer."""

    name = "no-options"

    def describe_full(self, images, options=None):
        return [Description(text="words") for _ in images]


@pytest.mark.parametrize("form", [{"max_length": "5"}, {"prompt": "a picture of"}])
def test_submit_refuses_options_the_running_model_cannot_honour(client, app, settings, run_worker, form):
    def send():
        return client.post(
            "/api/v1/submit",
            data={"file": (io.BytesIO(image_bytes("PNG")), "x.png"), **form},
            content_type="multipart/form-data",
        )

    run_worker(describer=NoOptions())  # an idle worker says what it runs
    refused = send()
    assert refused.status_code == 400 and "not supported" in refused.get_json()["error"]["message"]
    assert row_count(app) == 0 and stored_files(settings) == []
    run_worker()  # now the workers run the tiny BLIP, which honours both options
    assert send().status_code == 202


def test_prompt_option_conditions_the_caption(client, run_worker, tiny_describer):
    data = image_bytes("PNG")
    job_id = client.post(
        "/api/v1/submit",
        data={"file": (io.BytesIO(data), "x.png"), "prompt": "a picture of", "max_length": "4"},
        content_type="multipart/form-data",
    ).get_json()["job_id"]
    run_worker()
    result = client.get(f"/api/v1/result/{job_id}").get_json()
    assert result["status"] == "done"
    assert result["image_description"].startswith("a picture of")  # words of the tiny vocabulary
