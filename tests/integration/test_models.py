"""The new model families end to end: submit over HTTP, ``python worker.py`` loads the tiny checkpoint
of the real architecture through the production path, the result comes back through the API."""

from __future__ import annotations

import io

import pytest

from tests.conftest import image_bytes, open_rgb, worker_env
from tests.integration.test_api import run_worker_script


def submit(client, **fields: str) -> tuple[int, dict]:
    response = client.post(
        "/api/v1/submit",
        data={"file": (io.BytesIO(image_bytes("PNG")), "x.png"), **fields},
        content_type="multipart/form-data",
    )
    return response.status_code, response.get_json()


def test_florence2_returns_a_caption_objects_and_text_through_the_worker(
    client, settings, tiny_florence2_dir
):
    status, asked = submit(client, detail="detailed", ocr="always")
    assert status == 202, asked
    _, plain = submit(client, ocr="never")
    proc = run_worker_script(
        worker_env(settings, VISION_MODEL=str(tiny_florence2_dir), MAX_ANSWER_TOKENS="12")
    )
    assert proc.returncode == 0, proc.stderr[-2000:]

    result = client.get(f"/api/v1/result/{asked['job_id']}").get_json()
    assert result["status"] == "done", result
    assert result["generated_by"] == str(tiny_florence2_dir)
    assert result["options"] == {"detail": "detailed", "ocr": "always"}
    assert result["image_description"]  # the random model's own words
    assert isinstance(result["objects"], list)
    for found in result["objects"]:
        assert set(found) == {"label", "score", "box"} and found["label"]
        assert all(0 <= found["box"][side] <= 1 for side in ("x1", "y1", "x2", "y2"))
    assert isinstance(result["text"], list)  # ocr=always: read, whatever it found
    assert all(set(line) == {"text", "confidence"} for line in result["text"])

    never = client.get(f"/api/v1/result/{plain['job_id']}").get_json()
    assert never["status"] == "done" and never["text"] is None


def test_after_florence2_has_started_a_prompt_is_refused_at_submit(client, app, settings, tiny_florence2_dir):
    from imgsvc.queue.routing import ModelEntry, ModelRegistry
    from imgsvc.vision.captioners.capabilities import options_for

    # What a Florence-2 worker on the default queue publishes when it starts.
    name = str(tiny_florence2_dir)
    registry = ModelRegistry(app.task_queue, settings.worker_ttl)
    options = tuple(sorted(options_for("florence2")))
    registry.publish(ModelEntry(name, name, options, app.task_queue.name, worker="w1"))
    status, body = submit(client, prompt="How many people wear helmets?")
    assert status == 400
    assert "prompt" in body["error"]["message"] and str(tiny_florence2_dir) in body["error"]["message"]
    assert sorted(body["error"]["supported"]) == ["detail", "max_length", "ocr"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"detail": "huge"}, "option detail must be one of brief, detailed, paragraph"),
        ({"ocr": "yes"}, "option ocr must be one of auto, always, never"),
        ({"prompt": "x" * 1001}, "option prompt must be between 1 and 1000 characters"),
        ({"prompt": "ask\x00me"}, "option prompt must be plain text, without control characters"),
    ],
)
def test_bad_option_values_are_400_before_anything_is_stored(client, fields, message):
    status, body = submit(client, **fields)
    assert status == 400 and body["error"]["message"] == message


def test_a_chat_vlm_answers_the_jobs_prompt_through_the_worker(client, settings, tiny_smolvlm_dir):
    from imgsvc.vision import load_describer

    question = "How many people here are wearing helmets?"
    _, asked = submit(client, prompt=question)
    _, plain = submit(client, max_length="6")
    env = worker_env(settings, VISION_MODEL=str(tiny_smolvlm_dir), MAX_ANSWER_TOKENS="8")
    proc = run_worker_script(env)
    assert proc.returncode == 0, proc.stderr[-2000:]

    answer = client.get(f"/api/v1/result/{asked['job_id']}").get_json()
    default = client.get(f"/api/v1/result/{plain['job_id']}").get_json()
    assert answer["status"] == default["status"] == "done"
    assert answer["generated_by"] == str(tiny_smolvlm_dir) and answer["options"] == {"prompt": question}
    # The worker's answer is the model's answer to that very prompt (random weights: nonsense, but its own).
    describer = load_describer(settings.with_(vision_model=str(tiny_smolvlm_dir), max_answer_tokens=8))
    image = open_rgb(image_bytes("PNG"))
    assert answer["image_description"] == describer.describe([image], {"prompt": question})[0]
    assert default["image_description"] == describer.describe([image], {"max_length": 6})[0]
    assert answer["image_description"] != default["image_description"]
