"""What an operator sees: health, readiness, metrics, the dashboard, retention, the CLI."""

from __future__ import annotations

import io
import os
import sqlite3
import time
from datetime import UTC, datetime, timedelta

import pytest
from rq import Worker
from rq.job import Job as RQJob
from rq.utils import now, utcformat
from sqlalchemy import inspect, text, update

from imgsvc import create_app
from imgsvc.queue.connection import waiting_key
from imgsvc.queue.worker import ImgsvcWorker
from imgsvc.storage import jobs
from imgsvc.storage.db import db
from imgsvc.storage.retention import prune
from tests.conftest import image_bytes
from tests.integration.test_api import FailsOnce, stored_files, submit


def test_healthz_and_readyz_name_the_missing_part(client, app, tiny_describer):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    not_ready = client.get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.get_json()["checks"] == {
        "database": "ok",
        "redis": "ok",
        "workers": 0,
        "queue_depth": 0,
        "model": None,
    }
    worker = ImgsvcWorker([app.task_queue], connection=app.redis, app=app, describer=tiny_describer)
    worker.load_runtime()  # publishes which model the workers run
    worker.register_birth()
    try:
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.get_json()["checks"]["workers"] == 1
        assert ready.get_json()["checks"]["model"] == tiny_describer.name
        assert "model_components" not in ready.get_json()["checks"]  # one model, nothing to list
    finally:
        worker.register_death()


def test_readyz_lists_the_scene_describers_components_and_what_it_runs_without(client, app, tmp_path):
    from imgsvc.vision.scene.describer import SceneDescriber

    # Weights of none of the detectors: the describer runs on its classifier alone, and says so.
    describer = SceneDescriber.load(tmp_path / "empty-models", ocr="off")
    worker = ImgsvcWorker([app.task_queue], connection=app.redis, app=app, describer=describer)
    worker.load_runtime()
    worker.register_birth()
    try:
        checks = client.get("/readyz").get_json()["checks"]
        assert checks["model"] == "builtin:scene(efficientnet-lite0)"
        assert checks["model_components"] == {
            "running": ["efficientnet-lite0"],
            "missing": ["ssdlite-person", "centernet", "blazeface", "emotion"],
        }
    finally:
        worker.register_death()


def test_readyz_is_503_when_redis_is_down(settings, redis_db):
    app = create_app(settings.with_(redis_url="redis://127.0.0.1:1/0"))
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["checks"]["redis"].startswith("error")


def test_metrics_count_jobs_and_time_the_model(client, run_worker, jpeg_bytes, png_bytes):
    submit(client, jpeg_bytes)
    submit(client, png_bytes, "b.png", "image/png")
    submit(client, b"not an image")
    run_worker()
    response = client.get("/metrics")
    # One charset, as Prometheus' own constant gives it (Flask must not add a second).
    assert response.headers["Content-Type"] == "text/plain; version=1.0.0; charset=utf-8"
    text = response.get_data(as_text=True)
    assert 'imgsvc_jobs_total{outcome="submitted"} 2.0' in text
    assert 'imgsvc_jobs_total{outcome="done"} 2.0' in text
    assert "imgsvc_queue_depth 0.0" in text
    assert "imgsvc_job_duration_seconds_count 2.0" in text
    assert "imgsvc_inference_seconds_count 2.0" in text


def test_metrics_count_the_live_workers_readyz_counts(client, app):
    """A SIGKILLed worker stays registered until its key expires (WORKER_TTL + 60 s): only its
    silence says it is gone, and /metrics must not report it alive while /readyz says it is not."""
    ttl = app.config["IMGSVC"].worker_ttl
    fresh, killed, stopped = (Worker([app.task_queue], connection=app.redis, name=n) for n in "abc")
    for worker in (fresh, killed, stopped):
        worker.register_birth()
    app.redis.hset(killed.key, "last_heartbeat", utcformat(now() - timedelta(seconds=ttl + 5)))
    stopped.register_death()
    assert len(Worker.all(queue=app.task_queue)) == 2  # the killed one is still registered
    assert "imgsvc_workers 1.0" in client.get("/metrics").get_data(as_text=True)
    assert client.get("/readyz").get_json()["checks"]["workers"] == 1


def test_dashboard_is_mounted_behind_basic_auth(settings, redis_db, jpeg_bytes):
    app = create_app(settings.with_(rq_dashboard_username="ops", rq_dashboard_password="pw"))
    client = app.test_client()
    submit(client, jpeg_bytes)
    assert client.get("/rq/").status_code == 401
    assert client.get("/rq/", auth=("ops", "wrong")).status_code == 401
    page = client.get("/rq/", auth=("ops", "pw"))
    assert page.status_code == 200 and b"RQ" in page.data
    queues = client.get("/rq/0/data/queues.json", auth=("ops", "pw")).get_json()
    assert {"name": "imgsvc", "count": 1} in [
        {"name": q["name"], "count": q["count"]} for q in queues["queues"]
    ]
    assert client.get("/api/v1/jobs").status_code == 200  # the API is not behind the dashboard's auth
    cross_site = client.post("/rq/queue/imgsvc/queued/empty", auth=("ops", "pw"))
    assert cross_site.status_code == 403 and cross_site.get_json()["error"]["code"] == "forbidden"
    assert client.get("/rq/0/data/queues.json", auth=("ops", "pw")).get_json()["queues"][0]["count"] == 1


def test_the_dashboard_needs_the_username_as_well_as_the_password(settings, redis_db):
    client = create_app(settings.with_(rq_dashboard_username="ops", rq_dashboard_password="pw")).test_client()
    assert client.get("/rq/", auth=("someone", "pw")).status_code == 401
    assert client.get("/rq/", auth=("", "pw")).status_code == 401
    assert client.get("/rq/", auth=("ops", "pw")).status_code == 200


@pytest.mark.parametrize(
    "origin",
    [
        "http://localhost.evil.example",
        "http://evil.example/http://localhost",
        "http://xlocalhost",
        "http://local",
    ],
)
def test_an_origin_that_only_contains_the_host_is_cross_site(settings, redis_db, origin):
    client = create_app(settings.with_(rq_dashboard_username="ops", rq_dashboard_password="pw")).test_client()
    refused = client.get("/rq/requeue/imgsvc", auth=("ops", "pw"), headers={"Origin": origin})
    assert refused.status_code == 403
    accepted = client.get("/rq/requeue/imgsvc", auth=("ops", "pw"), headers={"Origin": "http://localhost"})
    assert accepted.get_json() == {"status": "OK", "count": 0}


def test_guessing_the_dashboard_password_is_limited_per_address(settings, redis_db):
    dashboard = settings.with_(rq_dashboard_username="ops", rq_dashboard_password="pw")
    client = create_app(dashboard).test_client()
    guesses = [client.get("/rq/", auth=("ops", f"guess{n}")).status_code for n in range(11)]
    assert guesses == [401] * 10 + [429]
    # Now the right password is refused too: a different answer would confirm a lucky guess.
    limited = client.get("/rq/", auth=("ops", "pw"))
    assert limited.status_code == 429 and 0 < int(limited.headers["Retry-After"]) <= 60
    assert limited.get_json()["error"] == {
        "code": "too_many_requests",
        "message": "too many failed dashboard logins from this address; try again later",
        "status": 429,
    }
    # Counted in Redis: another web process refuses the address as well.
    assert create_app(dashboard).test_client().get("/rq/", auth=("ops", "pw")).status_code == 429

    # Another address has its own count; a browser's visits without credentials count nothing.
    other = {"REMOTE_ADDR": "127.0.0.2"}
    assert {client.get("/rq/", environ_base=other).status_code for _ in range(12)} == {401}
    assert client.get("/rq/", auth=("ops", "pw"), environ_base=other).status_code == 200


def test_without_credentials_there_is_no_dashboard_and_the_404_says_how_to_turn_it_on(client):
    for response in (client.get("/rq"), client.get("/rq/"), client.post("/rq/queue/imgsvc/queued/empty")):
        assert response.status_code == 404
        # Issue 22: not a generic "check your spelling", but what is off and which settings turn it on.
        message = response.get_json()["error"]["message"]
        assert "dashboard is off" in message
        assert "RQ_DASHBOARD_USERNAME" in message and "RQ_DASHBOARD_PASSWORD" in message


def test_the_standalone_dashboard_refuses_to_start_open_and_guards_like_the_web_app(monkeypatch, settings):
    from imgsvc.web.dashboard import create_dashboard_app

    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    for name in ("RQ_DASHBOARD_USERNAME", "RQ_DASHBOARD_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit, match="RQ_DASHBOARD_USERNAME"):
        create_dashboard_app()
    monkeypatch.setenv("RQ_DASHBOARD_USERNAME", "ops")
    monkeypatch.setenv("RQ_DASHBOARD_PASSWORD", "pw")
    client = create_dashboard_app().test_client()
    assert client.get("/rq/").status_code == 401 and client.get("/rq/").is_json
    assert client.get("/rq/", auth=("ops", "pw")).status_code == 200
    refused = client.get("/rq/requeue/imgsvc", auth=("ops", "pw"), headers={"Origin": "http://evil.example"})
    assert refused.status_code == 403
    same_origin = client.get("/rq/requeue/imgsvc", auth=("ops", "pw"), headers={"Origin": "http://localhost"})
    assert same_origin.get_json() == {"status": "OK", "count": 0}


def test_prune_deletes_old_uploads_then_old_rows(client, app, settings, run_worker, jpeg_bytes, png_bytes):
    old = submit(client, jpeg_bytes).get_json()["job_id"]
    recent = submit(client, png_bytes, "b.png", "image/png").get_json()["job_id"]
    run_worker()
    with app.app_context():
        db.session.get(jobs.Job, old).completed_at = jobs.utcnow() - timedelta(days=30)
        db.session.commit()
        assert prune(settings.with_(upload_retention=86400, result_ttl=90 * 86400), app.uploads) == {
            "files_deleted": 1,
            "rows_deleted": 0,
            "orphans_deleted": 0,
        }
        assert len(stored_files(settings)) == 1
        assert client.get(f"/api/v1/result/{old}").get_json()["image_description"].strip()
        # the file is gone and recorded as gone: a second pass deletes no file, only the old row
        assert prune(settings.with_(upload_retention=86400, result_ttl=7 * 86400), app.uploads) == {
            "files_deleted": 0,
            "rows_deleted": 1,
            "orphans_deleted": 0,
        }
    assert client.get(f"/api/v1/status/{old}").status_code == 404
    assert client.get(f"/api/v1/status/{recent}").get_json()["status"] == "done"


@pytest.mark.parametrize("where", ["local", "s3"])
def test_prune_sweeps_orphans_once_they_are_old_enough(request, settings, redis_db, png_bytes, where):
    """A web process killed between storing an upload and writing its row leaves an orphan: prune
    deletes it, but only once it is older than an upload still on its way to its row could be."""
    if where == "s3":
        settings = settings.with_(upload_dir=request.getfixturevalue("s3_upload_dir"))
    app = create_app(settings)
    store = app.uploads
    job_id = submit(app.test_client(), png_bytes, "a.png", "image/png").get_json()["job_id"]
    orphan = store.commit(store.stage(io.BytesIO(png_bytes)), ".png")  # ... and then the crash
    everything = datetime.now(UTC) + timedelta(days=1)
    with app.app_context():
        named = jobs.get_job(job_id).upload_name
        assert set(store.names_older_than(everything)) == {named, orphan}
        assert prune(settings, store)["orphans_deleted"] == 0  # a second old: could be in flight
        assert prune(settings, store, orphan_age=timedelta(0))["orphans_deleted"] == 1
        assert set(store.names_older_than(everything)) == {named}
        db.session.remove()
        db.engine.dispose()


def test_prune_removes_uploads_a_killed_web_process_was_still_receiving(client, app, settings):
    staged = settings.upload_dir / ".upload-cut-off"
    staged.write_bytes(b"half an image")
    with app.app_context():
        assert prune(settings, app.uploads)["orphans_deleted"] == 0
        two_hours_ago = time.time() - 7200
        os.utime(staged, (two_hours_ago, two_hours_ago))
        assert prune(settings, app.uploads)["orphans_deleted"] == 1
    assert not staged.exists()


def test_a_starting_worker_removes_temp_files_a_killed_process_left(app, settings, run_worker):
    stale, receiving = settings.upload_dir / ".download-killed.jpg", settings.upload_dir / ".upload-now"
    for path in (stale, receiving):
        path.write_bytes(b"part of an image")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    run_worker()
    assert not stale.exists() and receiving.exists()


def test_a_failed_jobs_upload_is_kept_until_retention_removes_it(
    app, client, settings, run_worker, jpeg_bytes
):
    """Kept so that RQ's requeue (``rq requeue``, the dashboard) can run the job again."""
    job_id = submit(client, jpeg_bytes).get_json()["job_id"]
    (stored,) = stored_files(settings)
    stored.write_bytes(b"corrupted")
    run_worker()
    assert client.get(f"/api/v1/status/{job_id}").get_json()["status"] == "failed"
    assert stored_files(settings) == [stored]
    age(app, days=8)  # older than UPLOAD_RETENTION
    assert app.test_cli_runner().invoke(args=["prune"]).output.startswith("1 files deleted")
    assert stored_files(settings) == []


def test_deleting_a_job_deletes_its_rq_job(app, client, run_worker, jpeg_bytes, png_bytes):
    """The dashboard lists no job the API deleted, finished or still queued."""
    finished = submit(client, jpeg_bytes).get_json()["job_id"]
    run_worker()
    queued = submit(client, png_bytes, "b.png", "image/png").get_json()["job_id"]
    assert app.task_queue.finished_job_registry.get_job_ids() == [finished]
    for job_id in (finished, queued):
        assert client.delete(f"/api/v1/jobs/{job_id}").status_code == 200
        assert not RQJob.exists(job_id, connection=app.redis)
    assert app.task_queue.finished_job_registry.get_job_ids() == []
    assert app.task_queue.get_job_ids() == []


def age(app, days: int) -> None:
    """Move every row ``days`` into the past, as if it had been submitted (and finished) back then."""
    then = jobs.utcnow() - timedelta(days=days)
    with app.app_context():
        db.session.execute(update(jobs.Job).values(created_at=then, updated_at=then))
        for column in (jobs.Job.started_at, jobs.Job.completed_at):
            db.session.execute(update(jobs.Job).where(column.is_not(None)).values({column: then}))
        db.session.commit()


def test_prune_never_touches_unfinished_jobs(client, app, settings, run_worker, tiny_describer):
    """cron runs ``flask prune`` while a month-old job is being described and another still waits."""
    finished, running, waiting = (
        submit(client, image_bytes("PNG", color=(n * 80, 9, 9)), f"{n}.png", "image/png").get_json()["job_id"]
        for n in range(3)
    )
    pruned: list[str] = []

    class PrunesMidway(type(tiny_describer)):
        def describe_full(self, images, options=None):
            if client.get(f"/api/v1/status/{running}").get_json()["status"] == "processing":
                age(app, days=30)
                pruned.append(app.test_cli_runner().invoke(args=["prune"]).output.strip())
            return super().describe_full(images, options)

    midway = PrunesMidway.__new__(PrunesMidway)
    midway.__dict__.update(tiny_describer.__dict__)
    run_worker(describer=midway, max_jobs=2)

    assert pruned == ["1 files deleted, 1 rows deleted, 0 orphans deleted"]  # the finished job's only
    assert client.get(f"/api/v1/status/{finished}").status_code == 404
    assert client.get(f"/api/v1/result/{running}").get_json()["image_description"].strip()
    assert client.get(f"/api/v1/status/{waiting}").get_json()["status"] == "queued"
    assert len(stored_files(settings)) == 2  # the running and the waiting job keep their uploads
    run_worker()
    assert client.get(f"/api/v1/status/{waiting}").get_json()["status"] == "done"


def test_flask_cli_commands_do_what_they_say(app, client, settings, run_worker, jpeg_bytes):
    runner = app.test_cli_runner()
    with app.app_context():
        db.drop_all()
    assert "Initialised the database" in runner.invoke(args=["init-db"]).output
    with app.app_context():
        assert inspect(db.engine).has_table("jobs")
    settings.upload_dir.rmdir()
    assert "Uploads go to" in runner.invoke(args=["init-uploads"]).output
    assert settings.upload_dir.is_dir()

    job_id = submit(client, jpeg_bytes).get_json()["job_id"]
    app.redis.delete(RQJob.key_for(job_id))  # Redis lost the job
    app.redis.lrem(app.task_queue.key, 0, job_id)
    app.redis.zrem(waiting_key(app.task_queue.name), job_id)  # written with the job: lost with it
    assert runner.invoke(args=["reap"]).output.strip() == "1 requeued, 0 failed, 0 reset, 0 cancelled"
    assert app.task_queue.get_job_ids() == [job_id]

    run_worker()
    assert (
        runner.invoke(args=["reap"]).output.strip() == "0 requeued, 0 failed, 0 reset, 0 cancelled"
    )  # done: left alone
    age(app, days=30)  # older than both UPLOAD_RETENTION and RESULT_TTL (7 days)
    assert (
        runner.invoke(args=["prune"]).output.strip() == "1 files deleted, 1 rows deleted, 0 orphans deleted"
    )
    assert stored_files(settings) == []
    assert client.get(f"/api/v1/status/{job_id}").status_code == 404


def test_rq_keeps_its_own_job_records_for_result_ttl(
    settings, redis_db, tiny_describer, jpeg_bytes, png_bytes
):
    """RESULT_TTL bounds what RQ keeps in Redis, for done and for failed jobs alike (SQL keeps the rest)."""
    app = create_app(settings.with_(result_ttl=4321, task_max_retries=0))
    client = app.test_client()
    failed = submit(client, jpeg_bytes).get_json()["job_id"]
    done = submit(client, png_bytes, "b.png", "image/png").get_json()["job_id"]
    ImgsvcWorker([app.task_queue], connection=app.redis, app=app, describer=FailsOnce(tiny_describer)).work(
        burst=True
    )
    assert [client.get(f"/api/v1/status/{j}").get_json()["status"] for j in (failed, done)] == [
        "failed",
        "done",
    ]
    for job_id in (failed, done):
        assert 4000 < app.redis.ttl(RQJob.key_for(job_id)) <= 4321


def test_sqlite_is_shared_safely_by_web_and_workers(app, client, jpeg_bytes, settings):
    """WAL lets readers run beside a writer; busy_timeout makes a writer wait instead of failing."""
    submit(client, jpeg_bytes)
    with app.app_context():
        assert db.session.execute(text("PRAGMA busy_timeout")).scalar() == 10000
    with sqlite3.connect(settings.database_url.removeprefix("sqlite:///")) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)  # kept in the file itself


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Referer": "http://localhost/rq/"}, 200),  # no Origin: the Referer decides
        ({"Referer": "http://evil.example/rq/"}, 403),
        ({"Origin": "https://localhost"}, 200),
        ({"Origin": "null"}, 403),  # sandboxed frames and file:// pages send "null"
        ({"Origin": "ftp://localhost"}, 403),
        ({}, 403),
    ],
)
def test_a_state_change_needs_an_origin_or_referer_of_this_host(settings, redis_db, headers, status):
    client = create_app(settings.with_(rq_dashboard_username="ops", rq_dashboard_password="pw")).test_client()
    assert client.get("/rq/requeue/imgsvc", auth=("ops", "pw"), headers=headers).status_code == status


@pytest.mark.parametrize("credentials", [("ops", ""), ("", "pw")])
def test_one_dashboard_credential_alone_mounts_nothing(settings, redis_db, credentials):
    user, password = credentials
    client = create_app(
        settings.with_(rq_dashboard_username=user, rq_dashboard_password=password)
    ).test_client()
    assert client.get("/rq/", auth=credentials).status_code == 404
