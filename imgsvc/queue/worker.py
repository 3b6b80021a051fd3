"""The RQ worker that loads the model once and then describes images for its whole life.

It is a :class:`rq.SimpleWorker` (no fork per job): the model stays in this process,
and CUDA, which cannot be re-initialised in a forked child, keeps working.
Start it with ``python worker.py`` or ``rq worker -w imgsvc.queue.worker.ImgsvcWorker imgsvc``; it
serves VISION_MODEL on the default queue. ``python worker.py --model NAME`` (``imgsvc worker
--model NAME``) serves another model on that model's own queue (:mod:`imgsvc.queue.routing`).

Batches: after RQ hands the worker a job, it takes up to BATCH_SIZE-1 more that are already
waiting (or arrive within BATCH_WAIT_MS) and runs them together, at every step one round trip
for the whole batch (:mod:`imgsvc.queue.batches` for RQ's side, :func:`~imgsvc.queue.tasks.
describe_batch` for the rows and the model): take, start, claim the rows, one forward pass
per group of equal options, write the rows, finish. A failure in one image fails only that
job; a job that fails goes through RQ's own retry and failure handling. RQ's finish of a batch
whose rows are written runs on a thread of its own while the next batch is taken and run
(:meth:`ImgsvcWorker.settle`).

Decoding ahead: while a batch runs, its images having been decoded, the uploads of the jobs
next in the queue are read and decoded on the loader's thread (:mod:`imgsvc.queue.prefetch`),
so the next batch finds them ready. Nothing is claimed ahead: those jobs stay on the queue
for whichever worker takes them. With other workers on the queue the guess would mostly
decode images another worker takes, so a worker decodes ahead only while it is alone there.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from flask import Flask
from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError
from rq import Queue, SimpleWorker, Worker
from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.job import Job as RQJob
from rq.scheduler import RQScheduler
from rq.timeouts import JobTimeoutException
from rq.utils import now
from rq.worker import WorkerStatus
from rq.worker_pool import WorkerPool

from imgsvc.config import Settings, app_settings
from imgsvc.decoding import DecoderPool, DecoderUnavailable, die_with_parent
from imgsvc.metrics import RedisMetrics
from imgsvc.queue import batches, reaper, tasks
from imgsvc.queue.connection import job_queue, live_workers, redis_connection
from imgsvc.queue.prefetch import ImageLoader
from imgsvc.queue.routing import ModelEntry, ModelRegistry, model_queue_name
from imgsvc.storage.stores import open_upload_store
from imgsvc.storage.uploads import ORPHAN_AGE
from imgsvc.vision import load_describer, resolve_model
from imgsvc.vision.base import Describer, ModelLoadError

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


class OrphanFreeScheduler(RQScheduler):
    """RQ's scheduler process, which dies with the worker that forked it.

    RQ forks it and holds ``rq:scheduler-lock:<queue>`` in it; a worker killed by SIGKILL or
    the OOM killer left it running under init, holding the lock, so the next worker started
    no scheduler while retries and scheduled jobs still depended on the orphan. As the decoder
    children do, it asks the kernel for SIGKILL when its parent goes.
    """

    def start(self) -> Any:
        self._parent_pid = os.getpid()  # read in the child: the worker that forked it
        return super().start()

    def work(self) -> None:
        die_with_parent()
        if os.getppid() != self._parent_pid:  # the worker died before the request was made
            return
        super().work()


class PromptStop:
    """Stop within seconds of SIGINT/SIGTERM, not minutes.

    A signal the kernel hands to another thread (redis-py's pub/sub thread, the heartbeat, a
    model's thread pool) runs its Python handler only once the main thread's blocking read
    returns, and RQ waits for a job for its TTL minus 15 s in one read (~400 s by default).
    Ctrl+C on ``make run`` and ``docker stop`` waited that long now and then; a short wait
    bounds it, at a Redis round trip every few seconds per idle worker.
    """

    dequeue_timeout = 5

    def _start_scheduler(
        self,
        burst: bool = False,
        logging_level: str | None = "INFO",
        date_format: str = DEFAULT_LOGGING_DATE_FORMAT,
        log_format: str = DEFAULT_LOGGING_FORMAT,
    ) -> None:
        """RQ's ``Worker._start_scheduler`` (rq 2.x) with :class:`OrphanFreeScheduler`.

        RQ names its scheduler class inside this method, so the method is restated;
        ``tests/queue/test_rq_contract.py`` pins what it relies on.
        """
        self.scheduler = OrphanFreeScheduler(
            self.queues,
            connection=self.connection,
            logging_level=logging_level if logging_level is not None else self.log.level,
            date_format=date_format,
            log_format=log_format,
            serializer=self.serializer,
        )
        self.scheduler.acquire_locks()
        if not self.scheduler.acquired_locks:
            return
        if burst:
            try:
                self.scheduler.register_birth()
                self.scheduler.enqueue_scheduled_jobs()
            finally:
                self.scheduler.release_locks()
                self.scheduler.register_death()
        else:
            self.scheduler.start()


class WebhookWorker(PromptStop, Worker):
    """A plain (forking) RQ worker for webhook deliveries, which load no model."""


class _PooledWebhookWorker(WebhookWorker):
    """One of :class:`WebhookPool`'s workers: it ends with the pool, even one killed by SIGKILL."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        die_with_parent()
        super().__init__(*args, **kwargs)


class WebhookPool(WorkerPool):
    """RQ's worker pool of webhook workers (``imgsvc webhooks``), named ``PREFIX-<id>`` if asked."""

    def __init__(self, queues: list[Queue], connection: Any, count: int, prefix: str | None = None) -> None:
        super().__init__(queues, connection, num_workers=count, worker_class=_PooledWebhookWorker)
        self.prefix = prefix

    def get_worker_process(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return super().get_worker_process(
            f"{self.prefix}-{name[:8]}" if self.prefix else name, *args, **kwargs
        )


class ImgsvcWorker(PromptStop, SimpleWorker):
    #: "job ... result kept for" says nothing a user of imgsvc needs (results live in SQL).
    log_result_lifespan = False

    def __init__(
        self,
        *args: Any,
        app: Flask | None = None,
        describer: Describer | None = None,
        model: str | None = None,
        **kwargs: Any,
    ) -> None:
        """``describer`` lets a caller that already loaded the model (tests, CLI) hand it over.

        ``model``: the model this worker serves (``--model``); None is VISION_MODEL, resolved.
        It is published under the name of its first queue (:mod:`imgsvc.queue.routing`).
        """
        super().__init__(*args, **kwargs)
        self.log = _PerJobLinesAtDebug(self.log)
        self.app = app
        self.describer = describer
        self.model = model
        self.registry: ModelRegistry | None = None
        self.served: ModelEntry | None = None
        self.runtime: tasks.WorkerRuntime | None = None
        #: RQ's finish of the last batch, on a thread of its own (:meth:`settle`).
        self._finisher: ThreadPoolExecutor | None = None
        self._finishing: Future[None] | None = None
        self._heartbeat_stop = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None
        self._next_full_reconcile = 0.0
        #: Whether this is the only live worker on its queue (checked every maintenance round):
        #: only then does it decode the next jobs' images ahead.
        self._alone = False

    # -- start-up ---------------------------------------------------------------
    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        """Load the model before registering: a registered worker is a ready worker."""
        self.load_runtime()
        super().bootstrap(*args, **kwargs)
        self._heartbeat_thread = threading.Thread(target=self._beat, name="imgsvc-heartbeat", daemon=True)
        self._heartbeat_thread.start()
        self._reconcile()

    def load_runtime(self) -> tasks.WorkerRuntime:
        if self.runtime is not None:
            return self.runtime
        if self.app is None:
            from imgsvc import create_app

            self.app = create_app()
        settings = app_settings(self.app)
        # A heartbeat every WORKER_TTL/3 s; silent for WORKER_TTL s = dead to /readyz and
        # the reaper, which every worker runs every WORKER_TTL/3 s (RQ's default is 7 min).
        self.worker_ttl = settings.worker_ttl
        self.maintenance_interval = max(1, settings.worker_ttl // 3)
        self.model = self.model or resolve_model(settings)
        settings = settings.with_(vision_model=self.model)
        started = time.perf_counter()
        describer = self.describer or load_describer(settings)
        log.info(
            "model loaded",
            extra={"model": describer.name, "load_s": round(time.perf_counter() - started, 2)},
        )
        uploads = open_upload_store(settings)
        decoder = DecoderPool.from_settings(settings, describer.input_side)
        self.runtime = tasks.WorkerRuntime(
            settings,
            describer,
            uploads,
            RedisMetrics(self.connection, settings.queue_name),
            self.connection,
            decoder,
            ImageLoader(uploads, decoder, settings.batch_size),
            queue_name=self.queues[0].name,
        )
        decoder.start()
        self.app.extensions["imgsvc.runtime"] = self.runtime
        self.registry = ModelRegistry(job_queue(settings, self.connection), settings.worker_ttl)
        self.served = ModelEntry(
            name=self.model,
            generated_by=describer.name,
            options=tuple(sorted(describer.supported_options)),
            queue=self.queues[0].name,
            worker=self.name,
            components=describer.components,
            missing=describer.missing,
        )
        self.registry.publish(self.served)
        return self.runtime

    # -- the loop ------------------------------------------------------------------
    def execute_job(self, job: RQJob, queue: Queue) -> None:
        """Run ``job`` with the jobs waiting behind it as one batch (see the module docstring)."""
        assert self.app is not None and self.runtime is not None
        settings = self.runtime.settings
        with self.app.app_context():
            taken = [job, *batches.take(self, queue, settings.batch_size - 1, settings.batch_wait_ms)]
            for other in [j for j in taken if not batches.batchable(j)]:
                # Not what imgsvc enqueues (another function, callbacks...): RQ's own path.
                self.perform_job(other, queue, self.prepare_execution(other))
            plain = [j for j in taken if batches.batchable(j)]
            if plain:
                self._run_batch(batches.start(self, queue, plain, peek=settings.batch_size))
            else:
                self.set_state(WorkerStatus.IDLE)

    def _run_batch(self, batch: batches.Batch) -> None:
        runtime = self.runtime
        assert runtime is not None
        settings = runtime.settings
        pipe = self.connection.pipeline()
        rq_jobs = {job.id: job for job in batch.jobs}
        try:
            outcomes = tasks.describe_batch(
                runtime,
                batch.ids,
                can_retry=lambda job_id: rq_jobs[job_id].should_retry,
                deadline=lambda: self.death_penalty_class(
                    batch.timeout, JobTimeoutException, job_id=batch.ids[0]
                ),
                ahead=batch.next_ids if self._alone else (),
                ahead_later=(lambda: batches.peek(batch.queue, settings.batch_size)) if self._alone else None,
                metrics=pipe,
            )
        except Exception as exc:  # the database or Redis failed under the batch: each job fails this try
            log.exception("batch failed", extra={"jobs": len(batch.jobs)})
            pipe.reset()
            outcomes = dict.fromkeys(batch.ids, exc)
        batches.fail(self, batch, {i: o for i, o in outcomes.items() if isinstance(o, Exception)})
        returned = {i: o for i, o in outcomes.items() if not isinstance(o, Exception)}
        self.settle()
        if batch.with_dependents & returned.keys():
            batches.finish(self, batch, returned, pipe)  # RQ's handle_job_success: the rare path, here
            return
        if self._finisher is None:
            self._finisher = ThreadPoolExecutor(1, thread_name_prefix="imgsvc-finish")
        self._finishing = self._finisher.submit(batches.finish, self, batch, returned, pipe, idle=False)

    def settle(self, timeout: float | None = None) -> None:
        """Wait for the last batch's RQ finish (run on the finisher thread); raise what it raised.

        A batch's rows are written and its results published before its RQ finish is handed to
        the finisher, so the worker takes and runs the next batch meanwhile (RQ's finish was a
        seventh of the loop's wall time). Until it is done its jobs stay in RQ's started
        registry under this worker, as a job being run does: a worker killed in between leaves
        them to the reaper, whose retry finds the rows done and skips them.
        """
        finishing, self._finishing = self._finishing, None
        if finishing is not None:
            finishing.result(timeout)

    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None) -> None:
        """RQ's heartbeat (three commands), in one round trip when it is sent on its own.

        RQ's loop beats three times around every dequeue; a beat sent less than a second ago
        (e.g. with the batch's start) has already pushed the worker's expiry WORKER_TTL + 60 s
        away, so those are skipped. A beat with its own timeout or pipeline is always sent.
        """
        if pipeline is not None or timeout is not None:
            return super().heartbeat(timeout, pipeline)
        if self.last_heartbeat is not None and (now() - self.last_heartbeat).total_seconds() < 1:
            return None
        with self.connection.pipeline(transaction=False) as own:
            super().heartbeat(timeout, own)
            own.execute()
        return None

    def set_state(self, state: str, pipeline: Pipeline | None = None) -> None:
        """RQ sets IDLE again before every dequeue: a state Redis already holds is not sent again."""
        if pipeline is None and state == self._state:
            return
        super().set_state(state, pipeline)

    def run_maintenance_tasks(self) -> None:
        # The reaper takes a worker under this very pid for a dead one (it never runs inside a
        # job of its own): the last batch must be finished in RQ before it looks.
        self.settle()
        super().run_maintenance_tasks()
        if self.runtime is not None:
            self._reconcile()

    def _reconcile(self) -> None:
        """Dead workers' jobs every round; every row left behind, and the temp files of killed
        workers on this host, at start-up and every STALE_AFTER/2 s."""
        settings = self.runtime.settings
        try:
            self._alone = [w.name for w in live_workers(self.queues[0], settings.worker_ttl)] == [self.name]
            self.registry.publish(self.served)  # still serving it: the web side keeps knowing the model
        except RedisError:
            self._alone = False
        # Every model's queue, not only this worker's: a model whose workers all died is reaped too.
        queue = self.registry.default_queue
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
                self.runtime.metrics.publish_process("worker")  # its process_* figures on /metrics
            except RedisError as exc:
                log.warning("heartbeat not sent: %s", exc)

    def teardown(self) -> None:
        try:
            self.settle(timeout=30)  # the last batch finished in RQ before the worker registers its death
        except Exception:
            log.exception("the last batch's RQ finish failed; the reaper will finish its jobs")
        if self._finisher is not None:
            self._finisher.shutdown(wait=False)
        self._heartbeat_stop.set()
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join(timeout=5)
        super().teardown()
        if self.runtime is not None:
            self.runtime.loader.close()
            self.runtime.decoder.close()


def main(argv: list[str] | None = None) -> int:
    args = argument_parser().parse_args(argv)

    from imgsvc import create_app

    app = create_app()
    settings = app_settings(app)
    connection = redis_connection(settings)
    model = resolve_model(settings.with_(vision_model=args.model)) if args.model else None
    worker = ImgsvcWorker(
        [worker_queue(settings, connection, model)],
        connection=connection,
        name=args.name,
        app=app,
        model=model,
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


def argument_parser() -> argparse.ArgumentParser:
    """``python worker.py``'s arguments (compose.yaml's worker commands are checked against it)."""
    parser = argparse.ArgumentParser(description="Run an imgsvc worker: load the model once, then take jobs.")
    parser.add_argument("--burst", action="store_true", help="quit when the queue is empty")
    parser.add_argument("--max-jobs", type=int, default=None, help="quit after this many jobs")
    parser.add_argument("--name", default=None, help="worker name shown in rq-dashboard")
    parser.add_argument(
        "--model",
        default=None,
        help="the model to serve, on a queue of its own (default: VISION_MODEL, on the default queue)",
    )
    return parser


def worker_queue(settings: Settings, connection: Redis, model: str | None) -> Queue:
    """The default queue for the deployment's default model (VISION_MODEL), else the model's own."""
    if model is None or model == resolve_model(settings, quiet=True):
        return job_queue(settings, connection)
    return Queue(model_queue_name(settings.queue_name, model), connection=connection)
