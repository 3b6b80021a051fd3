"""The multi-host deployment on one machine: uploads in S3, and nothing else shared but Redis and SQL.

The web side (gunicorn) and the workers (``python worker.py``) each run in a working directory and
temp directory of their own, sharing no path; PostgreSQL is the database, Redis the broker, and a
real S3 server (SeaweedFS on loopback, started once per session) holds the uploads.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import requests

from imgsvc import create_app
from imgsvc.config import PROJECT_ROOT, Settings
from imgsvc.queue.worker import ImgsvcWorker
from imgsvc.storage import jobs
from imgsvc.storage.db import db
from imgsvc.storage.retention import prune
from imgsvc.storage.uploads import DOWNLOAD_PREFIX
from tests.conftest import image_bytes, worker_env
from tests.integration.procs import free_port, kill_group, start_worker, wait_until
from tests.integration.test_faults import rows, statuses, submit_image, submit_ok

ANY_AGE = timedelta(0)  # an orphan age that spares nothing


@pytest.fixture()
def deployed(settings: Settings, s3_upload_dir: str, postgres_url: str):
    """Settings for the three shared services, with the tables made (as compose's init-db does)
    before any process starts, and dropped afterwards."""
    shared = settings.with_(database_url=postgres_url, upload_dir=s3_upload_dir)
    app = create_app(shared)
    with app.app_context():
        db.create_all()
    yield shared
    with app.app_context():
        db.session.remove()
        db.drop_all()
        db.engine.dispose()


@dataclass
class Host:
    """A machine of its own: a working directory and a temp directory nothing else uses."""

    root: Path

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    def env(self, settings: Settings, s3_env: dict[str, str], **extra: str) -> dict[str, str]:
        """The test's settings (reaper and retries without waiting, too), and this host's own dirs."""
        return (
            worker_env(
                settings,
                STALE_AFTER=str(settings.stale_after),
                TASK_RETRY_DELAY=str(settings.task_retry_delay),
                TMPDIR=str(self.tmp),
                STAGING_DIR=str(self.tmp / "staging"),
                HOME=str(self.root),
                **extra,
            )
            | s3_env
        )

    def files(self) -> list[str]:
        """Every file on this host's disk: an upload left here would be a shared-path assumption."""
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file())


def new_host(tmp_path: Path, name: str) -> Host:
    host = Host(tmp_path / name)
    host.tmp.mkdir(parents=True)
    return host


def start_web(host: Host, env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    """gunicorn with the production config, on a loopback port, in the host's directory."""
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "-c", str(PROJECT_ROOT / "gunicorn.conf.py")]
    command += ["--bind", f"127.0.0.1:{port}", "--workers", "1", "imgsvc:create_app()"]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            command, cwd=host.root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return requests.get(f"{url}/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return proc.poll() is not None  # dead: stop waiting, the assertion below says so

    assert wait_until(answers, timeout=60, interval=0.2) and proc.poll() is None, log.read_text()[-3000:]
    return proc, url


def post_image(url: str, data: bytes) -> dict:
    response = requests.post(f"{url}/api/v1/submit", files={"file": ("photo", data)}, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()


def stored_names(s3_server, settings: Settings) -> set[str]:
    """What the bucket holds under the test's prefix, as the test's own client sees it."""
    prefix = str(settings.upload_dir).removeprefix(f"s3://{s3_server.BUCKET}/") + "/"
    listing = s3_server.client().list_objects_v2(Bucket=s3_server.BUCKET, Prefix=prefix)
    return {entry["Key"].removeprefix(prefix) for entry in listing.get("Contents", ())}


def test_hosts_share_only_redis_postgres_and_the_bucket_and_a_dead_worker_loses_nothing(
    deployed, s3_server, tmp_path
):
    """gunicorn on one host; a worker on a second host is SIGKILLed mid-job; a worker on a third
    takes over, reading every upload from the bucket. Then dedupe, delete and the orphan sweep."""
    web_host, doomed_host, next_host = (new_host(tmp_path, name) for name in ("web", "worker-1", "worker-2"))
    web, url = start_web(web_host, web_host.env(deployed, s3_server.env()), tmp_path / "web.log")
    ops = create_app(deployed)  # a fourth machine: reads rows, runs prune
    workers = []
    try:
        jpeg = image_bytes("JPEG")
        pngs = [image_bytes("PNG", size=(40, 30), color=(n * 40, 90, 200)) for n in range(3)]
        ids = [post_image(url, data)["job_id"] for data in [jpeg, *pngs]]

        doomed_env = doomed_host.env(deployed, s3_server.env())
        workers.append(start_worker(doomed_env, delay=1.0, log=tmp_path / "w1.log", cwd=doomed_host.root))

        def mid_job() -> bool:  # one done (read from the bucket on this host), the next one running
            now = statuses(ops)
            return now[jobs.Status.DONE] >= 1 and now[jobs.Status.PROCESSING] == 1

        assert wait_until(mid_job, timeout=90), (tmp_path / "w1.log").read_text()[-3000:]
        kill_group(workers[0])
        assert statuses(ops)[jobs.Status.DONE] < len(ids)

        next_env = next_host.env(deployed, s3_server.env())
        workers.append(start_worker(next_env, log=tmp_path / "w2.log", cwd=next_host.root))
        everything_done = lambda: statuses(ops) == Counter({jobs.Status.DONE: len(ids)})  # noqa: E731
        assert wait_until(everything_done, timeout=90), (tmp_path / "w2.log").read_text()[-3000:]
        for job_id in ids:
            result = requests.get(f"{url}/api/v1/result/{job_id}", timeout=5).json()
            assert result["status"] == "done" and result["image_description"]

        again = post_image(url, jpeg)  # identical bytes: answered from SQL, nothing stored
        assert again["cached"] is True and again["status"] == "done"
        names = {i: row.upload_name for i, row in rows(ops).items() if row.upload_name}
        assert stored_names(s3_server, deployed) == set(names.values()) and len(names) == len(ids)

        assert requests.delete(f"{url}/api/v1/jobs/{ids[0]}", timeout=5).json()["status"] == "deleted"
        assert stored_names(s3_server, deployed) == set(names.values()) - {names[ids[0]]}
        with ops.app_context():  # every stored upload has its row: the sweep finds no orphan
            assert prune(deployed, ops.uploads, orphan_age=ANY_AGE)["orphans_deleted"] == 0
        assert len(stored_names(s3_server, deployed)) == len(ids) - 1
    finally:
        for worker in workers:
            kill_group(worker)
        kill_group(web)
    # No upload stays on a host's disk longer than its request or its job, except the download of
    # a worker killed mid-read, which the next worker started there removes once it is stale.
    assert web_host.files() == [] and next_host.files() == []
    assert len(doomed_host.files()) <= 1 and all(DOWNLOAD_PREFIX in f for f in doomed_host.files())


def test_store_or_queue_down_at_submit_is_503_and_leaves_no_row_and_no_object(
    deployed, s3_server, redis_db, tmp_path, monkeypatch
):
    deployed = deployed.with_(staging_dir=tmp_path / "staging")  # where the web side stages
    reachable = create_app(deployed)

    # The queue is down: the upload was already in the bucket when enqueueing failed; it is removed.
    no_queue = create_app(deployed.with_(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    refused = submit_image(no_queue.test_client(), 1)
    assert refused.status_code == 503 and refused.get_json()["error"]["code"] == "queue_unavailable"

    # The store is down (nothing listens at its endpoint).
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    no_store = create_app(deployed)
    refused = submit_image(no_store.test_client(), 2)
    assert refused.status_code == 503, refused.get_data(as_text=True)
    error = refused.get_json()["error"]
    assert error["code"] == "storage_unavailable" and "127.0.0.1" not in error["message"]

    assert rows(reachable) == {} and stored_names(s3_server, deployed) == set()
    assert list((tmp_path / "staging").iterdir()) == []  # no staged file left behind either


@pytest.mark.parametrize("batch_size", [1, 2])
def test_store_down_in_the_worker_is_retried_not_failed(
    deployed, s3_server, tiny_describer, monkeypatch, batch_size
):
    """One job at a time, and a batch, whose images are read before its one forward pass."""
    settings = deployed.with_(task_max_retries=2, batch_size=batch_size)
    app = create_app(settings)
    ids = [submit_ok(app.test_client(), n) for n in range(batch_size)]

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # the worker's view
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    cut_off = create_app(settings)
    ImgsvcWorker([cut_off.task_queue], connection=cut_off.redis, app=cut_off, describer=tiny_describer).work(
        burst=True, max_jobs=1
    )
    for row in rows(app).values():
        assert row.status == jobs.Status.QUEUED and row.attempts == 1 and "StorageUnavailable" in row.error
    assert sorted(app.task_queue.get_job_ids()) == sorted(ids)  # back on the queue for the next try

    for name, value in s3_server.env().items():  # the store is back (never unset: boto3 would go to AWS)
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_MAX_ATTEMPTS")
    ImgsvcWorker([app.task_queue], connection=app.redis, app=app, describer=tiny_describer).work(burst=True)
    assert {(row.status, row.attempts) for row in rows(app).values()} == {(jobs.Status.DONE, 2)}
