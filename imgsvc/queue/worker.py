"""The RQ worker that loads the model once and then describes images for its whole life.

It is a :class:`rq.SimpleWorker` (no fork per job): the model stays in this process,
and CUDA, which cannot be re-initialised in a forked child, keeps working.
Start it with ``python worker.py`` or ``rq worker -w imgsvc.queue.worker.ImgsvcWorker imgsvc``.

Dynamic batching: when BATCH_SIZE > 1, after taking one job the worker drains up to
BATCH_SIZE-1 more that are already waiting (or arrive within BATCH_WAIT_MS), registers
them all as started, runs ONE forward pass over their images, then lets RQ perform each
job as usual; each job finds its result ready. A failure in one image only fails that job.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

from flask import Flask
from redis.exceptions import RedisError
from rq import Queue, SimpleWorker, Worker
from rq.job import Job as RQJob
from rq.worker import WorkerStatus

from imgsvc.config import Settings
from imgsvc.decoding import Decoder, DecoderUnavailable
from imgsvc.metrics import RedisMetrics
from imgsvc.queue import reaper
from imgsvc.queue.connection import job_queue, publish_model, redis_connection
from imgsvc.queue.tasks import PermanentJobError, WorkerRuntime, job_options, load_images
from imgsvc.storage.uploads import ORPHAN_AGE, open_upload_store
from imgsvc.vision import load_describer
from imgsvc.vision.base import Describer, ModelLoadError, UnsupportedOption

log = logging.getLogger("imgsvc.worker")


class _PerJobLinesAtDebug(logging.LoggerAdapter):
    """RQ's own lines about each job, moved to DEBUG.

    ``imgsvc.jobs`` logs every job event (processing, done, retrying, failed) with its
    ``job_id``; RQ's "queue: describe ... (id)", "Job OK" and "Successfully completed"
    say the same things again, so at INFO each job event is logged once.
    """

    PER_JOB = frozenset(
        {
            "Worker %s: %s: %s (%s)",  # a job taken from the queue; also "Job OK"
            "Worker %s: %s: %s",
            "Successfully completed %s job in %ss on worker %s",
            "Successfully completed job %s in %ss on worker %s",
        }
    )

    @property
    def level(self) -> int:
        """RQ reads its logger's level (to start its scheduler with the same one)."""
        return self.logger.level

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level == logging.INFO and msg in self.PER_JOB:
            level = logging.DEBUG
        super().log(level, msg, *args, **kwargs)


class PromptStop:
    """Stop within seconds of SIGINT/SIGTERM, not minutes.

    A signal the kernel hands to another thread (redis-py's pub/sub thread, the heartbeat, a
    model's thread pool) runs its Python handler only once the main thread's blocking read
    returns, and RQ waits for a job for its TTL minus 15 s in one read (~400 s by default).
    Ctrl+C on ``make run`` and ``docker stop`` waited that long now and then; a short wait
    bounds it, at a Redis round trip every few seconds per idle worker.
    """

    dequeue_timeout = 5


class WebhookWorker(PromptStop, Worker):
    """A plain (forking) RQ worker for webhook deliveries, which load no model."""


class ImgsvcWorker(PromptStop, SimpleWorker):
    #: "job ... result kept for" says nothing a user of imgsvc needs (results live in SQL).
    log_result_lifespan = False

    def __init__(
        self, *args: Any, app: Flask | None = None, describer: Describer | None = None, **kwargs: Any
    ) -> None:
        """``describer`` lets a caller that already loaded the model (tests, CLI) hand it over."""
        super().__init__(*args, **kwargs)
        self.log = _PerJobLinesAtDebug(self.log)
        self.app = app
        self.describer = describer
        self.runtime: WorkerRuntime | None = None
        self._heartbeat_stop = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None
        self._next_full_reconcile = 0.0

    # -- start-up ---------------------------------------------------------------
    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        """Load the model before registering: a registered worker is a ready worker."""
        self.load_runtime()
        super().bootstrap(*args, **kwargs)
        self._heartbeat_thread = threading.Thread(target=self._beat, name="imgsvc-heartbeat", daemon=True)
        self._heartbeat_thread.start()
        self._reconcile()

    def load_runtime(self) -> WorkerRuntime:
        if self.runtime is not None:
            return self.runtime
        if self.app is None:
            from imgsvc import create_app

            self.app = create_app()
        settings: Settings = self.app.config["IMGSVC"]
        # A heartbeat every WORKER_TTL/3 s; silent for WORKER_TTL s = dead to /readyz and
        # the reaper, which every worker runs every WORKER_TTL/3 s (RQ's default is 7 min).
        self.worker_ttl = settings.worker_ttl
        self.maintenance_interval = max(1, settings.worker_ttl // 3)
        started = time.perf_counter()
        describer = self.describer or load_describer(settings)
        log.info(
            "model loaded",
            extra={"model": describer.name, "load_s": round(time.perf_counter() - started, 2)},
        )
        self.runtime = WorkerRuntime(
            settings,
            describer,
            open_upload_store(settings),
            RedisMetrics(self.connection, settings.queue_name),
            self.connection,
            Decoder.from_settings(settings),
        )
        self.runtime.decoder.start()
        self.app.extensions["imgsvc.runtime"] = self.runtime
        publish_model(
            self.connection,
            settings,
            describer.name,
            sorted(describer.supported_options),
            describer.components,
            describer.missing,
        )
        return self.runtime

    # -- the loop ------------------------------------------------------------------
    def execute_job(self, job: RQJob, queue: Queue) -> None:
        assert self.app is not None and self.runtime is not None
        with self.app.app_context():
            batch = [job, *self._drain(queue)]
            executions = [self.prepare_execution(j) for j in batch]
            if len(batch) > 1:
                self._prefetch(batch)
            for member, execution in zip(batch, executions, strict=True):
                self.perform_job(member, queue, execution)
            self.runtime.prefetched.clear()
        self.set_state(WorkerStatus.IDLE)

    def _drain(self, queue: Queue) -> list[RQJob]:
        """Take jobs that are already waiting, up to the batch size, within BATCH_WAIT_MS."""
        settings = self.runtime.settings
        wanted = settings.batch_size - 1
        deadline = time.monotonic() + settings.batch_wait_ms / 1000
        taken: list[RQJob] = []
        while len(taken) < wanted:
            result = queue.dequeue_any([queue], None, connection=self.connection, job_class=self.job_class)
            if result is not None:
                taken.append(result[0])
                continue
            if time.monotonic() >= deadline:
                break
            time.sleep(0.002)
        return taken

    def _prefetch(self, batch: list[RQJob]) -> None:
        """One forward pass per group of equal options; errors stay with their own job."""
        runtime = self.runtime
        groups: dict[str, tuple[dict[str, Any], list[str], list[Any]]] = {}
        wanted: dict[str, dict[str, Any]] = {}
        for member in batch:
            job_id = member.args[0]
            options = job_options(job_id)
            try:
                runtime.describer.check_options(options)
            except UnsupportedOption as exc:
                runtime.prefetched[job_id] = exc
                continue
            wanted[job_id] = options
        try:
            images = load_images(runtime, list(wanted))
        except Exception:  # the decoder itself failed (not an image): each job will retry on its own
            log.exception("decoding the batch failed; each job decodes on its own")
            return
        for (job_id, options), image in zip(wanted.items(), images, strict=True):
            if isinstance(image, PermanentJobError):
                runtime.prefetched[job_id] = image
                continue
            if isinstance(image, Exception):
                continue  # the store did not answer: not prefetched, the job runs alone and RQ retries it
            group = groups.setdefault(json.dumps(options, sort_keys=True), (options, [], []))
            group[1].append(job_id)
            group[2].append(image)
        for options, ids, images in groups.values():
            started = time.perf_counter()
            try:
                results = runtime.describer.describe_full(images, options)
            except Exception:
                log.exception("batched forward pass failed; falling back to one image at a time")
                continue
            per_image = (time.perf_counter() - started) / len(images)
            for _ in images:
                runtime.metrics.observe("inference_seconds", per_image)
            runtime.prefetched.update(zip(ids, results, strict=True))

    def run_maintenance_tasks(self) -> None:
        super().run_maintenance_tasks()
        if self.runtime is not None:
            self._reconcile()

    def _reconcile(self) -> None:
        """Dead workers' jobs every round; every row left behind, and the temp files of killed
        workers on this host, at start-up and every STALE_AFTER/2 s."""
        settings = self.runtime.settings
        queue = job_queue(settings, self.connection)
        with self.app.app_context():
            if time.monotonic() < self._next_full_reconcile:
                reaper.reap_dead_workers(settings, queue)
                return
            reaper.reconcile(settings, queue)
        self.runtime.uploads.remove_stale_temp_files(datetime.now(UTC) - ORPHAN_AGE)
        self._next_full_reconcile = time.monotonic() + min(600, max(10, settings.stale_after // 2))

    def _beat(self) -> None:
        """RQ beats only between jobs; a forward pass may outlast WORKER_TTL, so a thread beats too.

        It stops with the process: a SIGKILLed or wedged-for-good worker falls silent.
        """
        while not self._heartbeat_stop.wait(max(1, self.worker_ttl // 3)):
            try:
                self.heartbeat()
            except RedisError as exc:
                log.warning("heartbeat not sent: %s", exc)

    def teardown(self) -> None:
        self._heartbeat_stop.set()
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join(timeout=5)
        super().teardown()
        if self.runtime is not None:
            self.runtime.decoder.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run an imgsvc worker: load the model once, then take jobs.")
    parser.add_argument("--burst", action="store_true", help="quit when the queue is empty")
    parser.add_argument("--max-jobs", type=int, default=None, help="quit after this many jobs")
    parser.add_argument("--name", default=None, help="worker name shown in rq-dashboard")
    args = parser.parse_args(argv)

    from imgsvc import create_app

    app = create_app()
    settings: Settings = app.config["IMGSVC"]
    connection = redis_connection(settings)
    worker = ImgsvcWorker(
        [job_queue(settings, connection)],
        connection=connection,
        name=args.name,
        app=app,
    )
    try:
        worker.load_runtime()
    except ModelLoadError as exc:
        log.critical("cannot load the model, worker not started: %s", exc)
        return 2
    except DecoderUnavailable as exc:
        log.critical("cannot start the decoder, worker not started: %s", exc)
        return 2
    worker.work(
        burst=args.burst,
        max_jobs=args.max_jobs,
        with_scheduler=True,
        logging_level=settings.log_level,
    )
    return 0
