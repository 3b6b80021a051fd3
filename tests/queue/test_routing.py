"""The routing rules of a deployment with several models (imgsvc/queue/routing.py), on a real Redis.

Workers are RQ worker records (born, beating or dead) plus the entry each publishes; no model runs.
"""

from __future__ import annotations

import io
import time
from datetime import timedelta

import pytest
from rq import Queue, Worker
from rq.utils import now, utcformat

from imgsvc.errors import BadRequest
from imgsvc.queue import routing
from imgsvc.queue.routing import ModelEntry, ModelRegistry, ModelUnavailable, UnknownModel, model_queue_name
from imgsvc.storage import jobs
from imgsvc.submissions import Intake, Submission, accept_upload
from tests.conftest import image_bytes

TTL = 30


@pytest.fixture()
def registry(redis_db) -> ModelRegistry:
    return ModelRegistry(Queue("imgsvc", connection=redis_db), TTL)


def serve(registry: ModelRegistry, model: str, *, queue: str | None = None, options=(), alive=True) -> Worker:
    """A worker record on ``queue`` (the model's own by default) and the entry it publishes."""
    queue = queue or model_queue_name("imgsvc", model)
    worker = Worker([Queue(queue, connection=registry.connection)], connection=registry.connection)
    worker.register_birth()
    if alive:
        worker.heartbeat()
    else:  # SIGKILLed: registered, but silent for longer than WORKER_TTL
        stale = utcformat(now() - timedelta(seconds=TTL + 5))
        registry.connection.hset(worker.key, "last_heartbeat", stale)
    registry.publish(ModelEntry(model, f"{model}@run", tuple(options), queue, worker.name))
    return worker


def test_a_model_queue_is_named_after_the_model_and_two_names_never_share_one():
    assert model_queue_name("imgsvc", "builtin:scene") == "imgsvc.builtin:scene"
    hub = model_queue_name("imgsvc", "Salesforce/blip-image-captioning-base")
    assert hub.startswith("imgsvc.Salesforce-blip-image-captioning-base-") and "/" not in hub
    # Replaced characters would make these two the same; the hash of the real name keeps them apart.
    assert model_queue_name("imgsvc", "a/b") != model_queue_name("imgsvc", "a-b") == "imgsvc.a-b"
    assert len(model_queue_name("imgsvc", "x" * 255)) < 110


def test_a_job_without_model_goes_to_the_default_queue_even_with_no_worker_up(registry):
    assert registry.route(None).queue is registry.default_queue and registry.route(None).model is None
    serve(registry, "blip", queue="imgsvc", options=("max_length",), alive=False)
    route = registry.route(None)
    # Queued for the default model's workers to come; its word (options, generated_by) still counts.
    assert route.queue is registry.default_queue and route.is_default
    assert (route.model.name, route.model.generated_by, route.model.options) == (
        "blip",
        "blip@run",
        ("max_length",),
    )


def test_the_default_model_is_remembered_for_up_to_a_second_and_never_while_unknown(registry):
    cache = routing.DefaultModelCache(seconds=1.0)
    assert registry.route(None, cache).model is None  # no worker has said yet: nothing kept
    serve(registry, "blip", queue="imgsvc")
    assert registry.route(None, cache).model.name == "blip"
    time.sleep(0.01)  # the switch is published later than the first entry
    serve(registry, "git", queue="imgsvc")
    assert registry.route(None, cache).model.name == "blip"  # within the second: as remembered
    cache.forget()
    assert registry.route(None, cache).model.name == "git"
    assert registry.route(None, routing.DefaultModelCache(seconds=0)).model.name == "git"


def test_a_named_model_goes_to_the_queue_its_live_workers_serve(registry):
    serve(registry, "blip", queue="imgsvc")
    serve(registry, "builtin:scene")
    route = registry.route("builtin:scene")
    assert route.queue.name == "imgsvc.builtin:scene" and not route.is_default
    assert route.model.name == "builtin:scene" and route.model.workers == 1
    # Naming the default model is the default queue.
    assert registry.route("blip").queue is registry.default_queue and registry.route("blip").is_default


def test_a_name_never_served_is_a_400_naming_what_is_served(registry):
    serve(registry, "blip", queue="imgsvc")
    serve(registry, "builtin:scene", alive=False)
    with pytest.raises(UnknownModel) as refused:
        registry.route("<script>florence")
    error = refused.value
    assert error.status == 400 and error.code == "unknown_model"
    assert "models served now: blip" in error.message and "script" not in error.message  # input not echoed
    assert error.details["served"] == ["blip"]


def test_a_known_model_whose_workers_are_gone_is_a_503_naming_what_is_served(registry):
    serve(registry, "blip", queue="imgsvc")
    serve(registry, "builtin:scene", alive=False)
    with pytest.raises(ModelUnavailable) as refused:
        registry.route("builtin:scene")
    error = refused.value
    assert error.status == 503 and error.headers["Retry-After"]
    assert error.message == (
        "no live worker serves the model builtin:scene now; retry shortly (models served now: blip)"
    )
    assert error.details == {"model": "builtin:scene", "served": ["blip"]}


def test_a_dead_worker_record_counts_as_down(registry):
    worker = serve(registry, "builtin:scene")
    assert registry.route("builtin:scene").model.workers == 1
    worker.register_death()
    with pytest.raises(ModelUnavailable, match="no model is served now"):
        registry.route("builtin:scene")


def test_the_list_puts_the_default_first_with_live_workers_depth_and_options(registry):
    serve(registry, "git", options=("max_length", "prompt"))
    serve(registry, "blip", queue="imgsvc", options=("max_length",))
    serve(registry, "blip", queue="imgsvc", options=("max_length",))
    serve(registry, "builtin:scene", alive=False)
    registry.queue(model_queue_name("imgsvc", "git")).enqueue("os.getpid")
    models = {m.name: m for m in registry.served(depths=True)}
    assert [m.name for m in registry.served()] == ["blip", "builtin:scene", "git"]
    assert models["blip"].to_json() == {
        "name": "blip",
        "default": True,
        "workers": 2,
        "queue_depth": 0,
        "options": ["max_length"],
        "generated_by": "blip@run",
    }
    assert (models["git"].workers, models["git"].queue_depth, models["git"].default) == (1, 1, False)
    assert models["git"].options == ("max_length", "prompt")
    assert models["builtin:scene"].workers == 0


def test_a_model_changed_under_the_default_queue_is_the_live_workers_one(registry):
    serve(registry, "blip", queue="imgsvc", alive=True)
    serve(registry, "florence", queue="imgsvc", alive=False)  # published later, but gone
    assert registry.route(None).model.name == "blip"
    assert [m.name for m in registry.served() if m.default] == ["blip"]


def test_a_model_silent_for_forget_after_is_unknown_and_its_entry_goes(registry, monkeypatch):
    serve(registry, "builtin:scene", alive=False)
    later = time.time() + routing.FORGET_AFTER + 60
    monkeypatch.setattr(routing.time, "time", lambda: later)
    with pytest.raises(UnknownModel):
        registry.route("builtin:scene")
    serve(registry, "blip", queue="imgsvc")  # the next publish prunes the forgotten entry
    assert [e.name for e in registry._read(keep_forgotten=True)] == ["blip"]


def test_the_reaper_and_metrics_go_over_the_default_queue_then_every_model_queue(registry):
    assert [q.name for q in registry.queues()] == ["imgsvc"]
    serve(registry, "git")
    serve(registry, "builtin:scene", alive=False)  # down, but its queue may hold jobs to reap
    names = [q.name for q in registry.queues()]
    assert names == ["imgsvc", "imgsvc.builtin:scene", "imgsvc.git"]


def test_an_entry_not_written_by_a_worker_is_ignored(registry):
    registry.connection.hset(registry.key, "junk", b"{not json")
    registry.connection.hset(registry.key, "other", b'{"name": "x"}')
    assert registry.entries() == [] and registry.served() == []


# -- the submit use case with a model ----------------------------------------------------------------


@pytest.fixture()
def intake(app, settings, registry):
    with app.app_context():
        yield Intake(settings, app.uploads, app.redis, app.task_queue, app.metrics)


def test_a_job_for_a_model_is_kept_and_enqueued_on_that_models_queue(intake, registry):
    serve(registry, "builtin:scene")
    accepted = accept_upload(intake, io.BytesIO(image_bytes()), Submission(model="builtin:scene"))
    queue = registry.queue("imgsvc.builtin:scene")
    assert queue.job_ids == [accepted.id] and intake.task_queue.count == 0
    assert jobs.get_job(accepted.id).queue == "imgsvc.builtin:scene"  # where the reaper requeues it
    default = accept_upload(intake, io.BytesIO(image_bytes()), Submission())
    assert intake.task_queue.job_ids == [default.id] and jobs.get_job(default.id).queue is None


def test_options_the_chosen_model_does_not_take_are_refused_naming_it(intake, registry):
    serve(registry, "blip", queue="imgsvc", options=("max_length", "prompt"))
    serve(registry, "builtin:scene")
    submission = Submission(options={"prompt": "how many people?"}, model="builtin:scene")
    with pytest.raises(BadRequest, match="not supported by the model builtin:scene, which takes none"):
        accept_upload(intake, io.BytesIO(image_bytes()), submission)
    assert accept_upload(intake, io.BytesIO(image_bytes()), Submission(options={"prompt": "a"})).id
    assert registry.queue("imgsvc.builtin:scene").count == 0


def test_identical_bytes_are_deduplicated_per_model(intake, registry):
    serve(registry, "blip", queue="imgsvc")
    serve(registry, "builtin:scene")
    data = image_bytes()
    first = accept_upload(intake, io.BytesIO(data), Submission())
    jobs.finish_jobs({first.id: (jobs.Description("a red square"), "blip@run", 5)})
    assert accept_upload(intake, io.BytesIO(data), Submission(model="blip")).cached
    # Another model has not described these bytes: it runs.
    assert not accept_upload(intake, io.BytesIO(data), Submission(model="builtin:scene")).cached
