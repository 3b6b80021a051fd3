"""Dynamic batching in the worker: one forward pass for waiting jobs, failures stay per job."""

from __future__ import annotations

import time

from rq.job import Job as RQJob

from imgsvc import create_app
from imgsvc.queue.worker import ImgsvcWorker
from imgsvc.storage import jobs
from imgsvc.vision.base import Describer
from tests.conftest import empty_owned_db, image_bytes
from tests.integration.test_api import submit


class Recording(Describer):
    """Delegates to the real model and remembers the size of every batch (and image) it was given."""

    def __init__(self, inner: Describer) -> None:
        self.inner = inner
        self.name = inner.name
        self.supported_options = inner.supported_options
        self.input_side = inner.input_side
        self.batches: list[int] = []
        self.sizes: list[tuple[int, int]] = []

    def describe_full(self, images, options=None):
        self.batches.append(len(images))
        self.sizes += [image.size for image in images]
        return self.inner.describe_full(images, options)


def test_a_photo_is_decoded_no_larger_than_the_model_reads(settings, tiny_describer):
    """The tiny BLIP squeezes every image to 32x32: a 640x480 JPEG reaches it at 1/8 scale, and
    the job's row still says what was uploaded."""
    app = create_app(settings)
    client = app.test_client()
    job_id = submit(client, image_bytes("JPEG", size=(640, 480)), "x.jpg", "image/jpeg").get_json()["job_id"]
    recording = Recording(tiny_describer)

    ImgsvcWorker([app.task_queue], connection=app.redis, app=app, describer=recording).work(burst=True)

    assert recording.sizes == [(80, 60)]
    result = client.get(f"/api/v1/result/{job_id}").get_json()
    assert result["status"] == "done" and result["image_description"]
    assert (result["image"]["width"], result["image"]["height"]) == (640, 480)


def test_waiting_jobs_share_one_forward_pass(settings, tiny_describer):
    app = create_app(settings.with_(batch_size=4))
    client = app.test_client()
    payloads = [image_bytes("PNG", color=(i * 40, 80, 120)) for i in range(5)]
    ids = [submit(client, data, "x.png", "image/png").get_json()["job_id"] for data in payloads]
    with app.app_context():  # the second job's image, in the first batch, no longer decodes
        (settings.upload_dir / jobs.get_job(ids[1]).upload_name).write_bytes(b"broken")
    recording = Recording(tiny_describer)

    ImgsvcWorker([app.task_queue], connection=app.redis, app=app, describer=recording).work(burst=True)

    statuses = [client.get(f"/api/v1/status/{job_id}").get_json()["status"] for job_id in ids]
    assert statuses == ["done", "failed", "done", "done", "done"]
    assert recording.batches == [3, 1]  # 4 jobs drained, the broken one left out; then the 5th
    # a batched description is the same as describing the image alone
    for job_id, data in zip(ids, payloads, strict=True):
        result = client.get(f"/api/v1/result/{job_id}").get_json()
        if result["status"] == "done":
            from io import BytesIO

            from PIL import Image

            alone = tiny_describer.describe([Image.open(BytesIO(data)).convert("RGB")])[0]
            assert result["image_description"] == alone


def test_batch_size_one_runs_one_image_per_pass(client, run_worker, tiny_describer):
    for i in range(3):
        submit(client, image_bytes("PNG", color=(i, 2, 3)), "x.png", "image/png")
    recording = Recording(tiny_describer)
    run_worker(describer=recording)
    assert recording.batches == [1, 1, 1]


class FailsInBatches(Recording):
    """A forward pass that raises for more than one image (as an out-of-memory would), fine alone."""

    def describe_full(self, images, options=None):
        self.batches.append(len(images))
        if len(images) > 1:
            raise RuntimeError("CUDA out of memory for a batch")
        return self.inner.describe_full(images, options)


def test_a_failing_batched_pass_runs_each_job_alone(settings, tiny_describer):
    """No retries configured: a job that failed with its batch would be failed for good."""
    app = create_app(settings.with_(batch_size=4, task_max_retries=0))
    client = app.test_client()
    payloads = [image_bytes("PNG", color=(i * 60, 30, 90)) for i in range(3)]
    ids = [submit(client, data, "x.png", "image/png").get_json()["job_id"] for data in payloads]
    describer = FailsInBatches(tiny_describer)

    ImgsvcWorker([app.task_queue], connection=app.redis, app=app, describer=describer).work(burst=True)

    assert describer.batches == [3, 1, 1, 1]
    for job_id in ids:
        status = client.get(f"/api/v1/status/{job_id}").get_json()
        assert status["status"] == "done" and status["attempts"] == 1 and "error" not in status


# --- the batch's bookkeeping: per batch, not per job (issue 16) --------------------------------
def submit_many(app, count: int) -> list[str]:
    client = app.test_client()
    payloads = [image_bytes("PNG", color=(i * 9 % 256, i * 31 % 256, 7)) for i in range(count)]
    return [submit(client, data, "x.png", "image/png").get_json()["job_id"] for data in payloads]


class Tally:
    """Redis round trips (a command sent alone, or a whole pipeline) and SQL statements and
    commits, counted only while a worker runs ``execute_job`` (not its start-up or its loop),
    the batch's RQ finish on the finisher thread included."""

    def __init__(self, monkeypatch, worker: ImgsvcWorker) -> None:
        from redis.client import Pipeline, Redis
        from sqlalchemy import event

        from imgsvc.storage.db import db

        self.counts = {"round trips": 0, "statements": 0, "commits": 0}
        self.on = False
        for owner, name in ((Redis, "execute_command"), (Pipeline, "execute")):
            real = getattr(owner, name)

            def counting(obj, *args, _real=real, _pipeline=owner is Pipeline, **kwargs):
                if self.on and (_pipeline or not isinstance(obj, Pipeline)):
                    self.counts["round trips"] += 1
                return _real(obj, *args, **kwargs)

            monkeypatch.setattr(owner, name, counting)
        with worker.app.app_context():
            engine = db.engine
        event.listen(engine, "before_cursor_execute", lambda *_: self._add("statements"))
        event.listen(engine, "commit", lambda *_: self._add("commits"))
        execute_job = worker.execute_job

        def counted(job, queue):
            self.on = True
            try:
                execute_job(job, queue)
                worker.settle()
            finally:
                self.on = False

        monkeypatch.setattr(worker, "execute_job", counted)

    def _add(self, what: str) -> None:
        if self.on:
            self.counts[what] += 1


def test_a_batch_costs_the_same_round_trips_and_statements_as_one_job(settings, tiny_describer, monkeypatch):
    """Before: about ten Redis round trips and three SQL statements with two commits per job."""
    tallies = {}
    for count in (1, 8):
        app = create_app(settings.with_(batch_size=8))
        ids = submit_many(app, count)
        worker = ImgsvcWorker([app.task_queue], connection=app.redis, app=app, describer=tiny_describer)
        tally = Tally(monkeypatch, worker)
        worker.work(burst=True)
        tallies[count] = tally.counts
        with app.app_context():
            assert {jobs.get_job(i).status for i in ids} == {jobs.Status.DONE}
        empty_owned_db(app.redis)
    one, eight = tallies[1], tallies[8]
    assert eight["round trips"] <= one["round trips"] + 1  # + fetching the 7 drained jobs
    assert (eight["statements"], eight["commits"]) == (one["statements"], one["commits"]) == (2, 2)


def job_keys(connection, job_id: str) -> set[str]:
    """Every Redis key that names the job, with the job's id (and execution ids) made generic."""
    return {
        key.decode().replace(job_id, "<job>")
        for key in connection.scan_iter(count=1000)
        if job_id in key.decode()
    }


def test_a_job_finished_in_a_batch_looks_to_rq_like_a_job_rq_finished_itself(app, tiny_describer):
    """The batch's bookkeeping writes RQ's own keys with RQ's own methods, only pipelined."""
    from rq import SimpleWorker
    from rq.job import JobStatus
    from rq.results import Result

    by_rq, by_batch = submit_many(app, 2)
    worker = ImgsvcWorker([app.task_queue], connection=app.redis, app=app, describer=tiny_describer)
    worker.load_runtime()
    worker.register_birth()
    queue = app.task_queue
    job, _ = queue.dequeue_any([queue], None, connection=app.redis)
    assert job.id == by_rq
    with app.app_context():
        SimpleWorker.execute_job(worker, job, queue)  # RQ's own path: prepare, perform, finish
    job, _ = queue.dequeue_any([queue], None, connection=app.redis)
    worker.execute_job(job, queue)  # the batch path
    worker.settle()  # its RQ finish, run on the finisher thread

    jobs_ = {name: RQJob.fetch(i, connection=app.redis) for name, i in (("rq", by_rq), ("batch", by_batch))}
    for name, rq_job in jobs_.items():
        assert rq_job.get_status() == JobStatus.FINISHED, name
        assert rq_job.return_value() == {"job_id": rq_job.id, "status": "done"}, name
        assert rq_job.latest_result().type == Result.Type.SUCCESSFUL, name
        assert rq_job.id in queue.finished_job_registry, name
        assert rq_job.id not in queue.started_job_registry.get_job_ids(cleanup=False), name
        assert app.redis.ttl(rq_job.key) > 0, name  # kept for RESULT_TTL, then gone
    assert set(app.redis.hkeys(jobs_["rq"].key)) == set(app.redis.hkeys(jobs_["batch"].key))
    assert job_keys(app.redis, by_rq) == job_keys(app.redis, by_batch)
    assert queue.intermediate_queue.get_job_ids() == []
    assert worker.executions == {} and app.redis.scard(worker.executions_key) == 0
    assert int(app.redis.hget(worker.key, "successful_job_count")) == 2


def test_a_worker_that_stops_has_finished_its_last_batch_in_rq(settings, tiny_describer, monkeypatch):
    """RQ's finish of a batch runs beside the next batch; a worker that stops (burst, SIGTERM)
    waits for it, so RQ, the dashboard and ``rq info`` never see a stopped worker's jobs started."""
    import threading

    from imgsvc.queue import batches

    app = create_app(settings.with_(batch_size=2))
    ids = submit_many(app, 4)
    finished_on: list[str] = []
    real_finish = batches.finish

    def slow_finish(*args, **kwargs):
        time.sleep(0.3)  # a busy Redis: the finish ends after the worker's loop has nothing left
        finished_on.append(threading.current_thread().name)
        return real_finish(*args, **kwargs)

    monkeypatch.setattr(batches, "finish", slow_finish)
    worker = ImgsvcWorker([app.task_queue], connection=app.redis, app=app, describer=tiny_describer)
    worker.work(burst=True)

    assert len(finished_on) == 2 and threading.main_thread().name not in finished_on
    queue = app.task_queue
    assert sorted(queue.finished_job_registry.get_job_ids()) == sorted(ids)
    assert queue.started_job_registry.get_job_ids(cleanup=False) == []
    assert int(app.redis.hget(worker.key, "successful_job_count")) == 4


def test_the_workers_own_reaper_leaves_the_batch_it_is_finishing_alone(app, tiny_describer, monkeypatch):
    """The reaper takes a worker under its own pid for a dead one; the maintenance round that
    runs it comes after the last batch's RQ finish, so that batch is not run again."""
    from rq.job import JobStatus

    from imgsvc.queue import batches

    (job_id,) = submit_many(app, 1)
    real_finish = batches.finish

    def slow_finish(*args, **kwargs):
        time.sleep(0.3)
        return real_finish(*args, **kwargs)

    monkeypatch.setattr(batches, "finish", slow_finish)
    worker = ImgsvcWorker([app.task_queue], connection=app.redis, app=app, describer=tiny_describer)
    worker.load_runtime()
    worker.register_birth()
    job, queue = app.task_queue.dequeue_any([app.task_queue], None, connection=app.redis)
    worker.execute_job(job, queue)
    worker.run_maintenance_tasks()
    worker.settle()

    assert RQJob.fetch(job_id, connection=app.redis).get_status() == JobStatus.FINISHED
    assert app.task_queue.get_job_ids() == []
    assert job_id in app.task_queue.finished_job_registry


def test_jobs_next_on_the_queue_are_decoded_ahead_but_stay_queued(settings, tiny_describer):
    app = create_app(settings.with_(batch_size=2))
    ids = submit_many(app, 4)
    seen: list[dict[str, object]] = []

    class Watching(Recording):
        def describe_full(self, images, options=None):
            with app.app_context():
                later = [jobs.get_job(i) for i in ids[2:]]
                seen.append(
                    {
                        "ahead": set(runtime.loader._ahead),
                        "later rows": {(row.status, row.attempts) for row in later},
                        "later on the queue": set(ids[2:]) <= set(app.task_queue.get_job_ids()),
                    }
                )
            return super().describe_full(images, options)

    worker = ImgsvcWorker([app.task_queue], connection=app.redis, app=app, describer=Watching(tiny_describer))
    runtime = worker.load_runtime()
    decoded = []
    real = runtime.decoder.decode_many
    runtime.decoder.decode_many = lambda paths: (decoded.append(len(paths)), real(paths))[1]
    worker.work(burst=True)

    with app.app_context():
        later_names = {jobs.get_job(i).upload_name for i in ids[2:]}
        assert {jobs.get_job(i).status for i in ids} == {jobs.Status.DONE}
    first = seen[0]
    assert first["ahead"] == later_names  # decoding while the first batch is on the model ...
    assert first["later rows"] == {(jobs.Status.QUEUED, 0)} and first["later on the queue"]  # ... unclaimed
    assert decoded == [2, 2]  # and the second batch took those images: nothing decoded twice


def test_a_worker_that_shares_its_queue_does_not_decode_ahead(settings, tiny_describer):
    """Another worker would take most of what it guessed: a decode for nothing."""
    from rq import SimpleWorker

    app = create_app(settings.with_(batch_size=2))
    submit_many(app, 4)
    other = SimpleWorker([app.task_queue], connection=app.redis)
    other.register_birth()
    other.heartbeat()
    ahead: list[set[str]] = []

    class Watching(Recording):
        def describe_full(self, images, options=None):
            ahead.append(set(runtime.loader._ahead))
            return super().describe_full(images, options)

    worker = ImgsvcWorker([app.task_queue], connection=app.redis, app=app, describer=Watching(tiny_describer))
    runtime = worker.load_runtime()
    worker.work(burst=True)
    assert ahead == [set(), set()]


class Sleepy(Describer):
    name = "sleepy"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def describe_full(self, images, options=None):
        self.calls.append(len(images))
        time.sleep(30)
        raise AssertionError("JOB_TIMEOUT should have cut this")


def test_job_timeout_bounds_a_batched_forward_pass_too(settings, redis_db):
    """Before, a batch's forward pass ran outside RQ's death penalty: a wedged model held it forever."""
    app = create_app(settings.with_(batch_size=3, job_timeout=1, task_max_retries=0))
    ids = submit_many(app, 3)
    sleepy = Sleepy()
    ImgsvcWorker([app.task_queue], connection=app.redis, app=app, describer=sleepy).work(burst=True)
    # Cut by the timeout (an uncut pass would end in Sleepy's AssertionError, not JobTimeoutException),
    # once for the batch: no image-by-image second try.
    assert sleepy.calls == [3]
    with app.app_context():
        rows = [jobs.get_job(i) for i in ids]
    assert {row.status for row in rows} == {jobs.Status.FAILED}
    assert all("JobTimeoutException" in row.error for row in rows)


def other_task(marker: str) -> str:
    """Not a describe job: something else someone put on the queue."""
    return marker


def test_a_job_that_is_not_a_describe_job_runs_through_rqs_own_path(settings, tiny_describer):
    from rq.job import JobStatus

    app = create_app(settings.with_(batch_size=4))
    first = submit_many(app, 1)
    other = app.task_queue.enqueue(other_task, "hello")
    rest = submit_many(app, 2)
    recording = Recording(tiny_describer)
    ImgsvcWorker([app.task_queue], connection=app.redis, app=app, describer=recording).work(burst=True)
    assert other.get_status(refresh=True) == JobStatus.FINISHED and other.return_value() == "hello"
    with app.app_context():
        assert {jobs.get_job(i).status for i in first + rest} == {jobs.Status.DONE}
    assert recording.batches == [3]
