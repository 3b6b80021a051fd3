"""RQ's private and undocumented names that imgsvc relies on, pinned against the installed ``rq``.

``queue/batches.py`` finishes a batch with RQ's own methods written into one pipeline, the
worker and the reaper read RQ's hashes and registries by hand: none of that is public API,
and ``rq==3.0.0`` is pinned for it. An upgrade breaks here, by name, instead of in production.

**When bumping rq**, run these tests and the fault tests, which exercise the same seam under
killed workers and lost jobs::

    python -m pytest -p no:randomly tests/queue/test_rq_contract.py \
        tests/integration/test_faults.py tests/integration/test_liveness.py

A test failing here names the RQ method or attribute whose contract changed; read RQ's new
code for it and update the caller (named in each test's docstring) before the pin.
"""

from __future__ import annotations

import inspect
import os
import socket
from collections.abc import Callable

import pytest
from redis import Redis
from rq import Callback, Queue, SimpleWorker, Worker
from rq.executions import Execution
from rq.job import Job as RQJob
from rq.job import JobStatus
from rq.registry import StartedJobRegistry
from rq.scheduler import RQScheduler
from rq.worker import BaseWorker

from imgsvc.queue.batches import batchable
from imgsvc.queue.connection import DESCRIBE_TASK
from imgsvc.queue.reaper import _worker_is_gone
from imgsvc.queue.worker import ImgsvcWorker, OrphanFreeScheduler, WebhookWorker


def parameters(function: Callable) -> list[str]:
    return [name for name in inspect.signature(function).parameters if name != "self"]


#: Every RQ method imgsvc calls or overrides outside RQ's documented API, and the parameters
#: (in order) it passes or receives. Callers: queue/batches.py, queue/worker.py, queue/reaper.py.
SIGNATURES: list[tuple[type, str, list[str]]] = [
    (RQJob, "_handle_success", ["result_ttl", "pipeline", "worker_name", "execution_id",
                                "execution_started_at", "execution_ended_at"]),
    (BaseWorker, "_finalize_failure", ["job", "queue", "execution", "exc_info"]),
    (RQJob, "prepare_for_execution", ["worker_name", "pipeline"]),
    (RQJob, "heartbeat", ["timestamp", "ttl", "pipeline", "xx"]),
    (RQJob, "cleanup", ["ttl", "pipeline", "remove_from_queue"]),
    (RQJob, "get_result_ttl", ["default_ttl"]),
    (RQJob, "fetch_many", ["job_ids", "connection", "serializer"]),
    (BaseWorker, "prepare_execution", ["job"]),
    (BaseWorker, "perform_job", ["job", "queue", "execution"]),
    (BaseWorker, "execute_job", ["job", "queue"]),
    (BaseWorker, "cleanup_execution", ["job", "pipeline", "execution"]),
    (BaseWorker, "get_heartbeat_ttl", ["job", "working_time"]),
    (BaseWorker, "increment_successful_job_count", ["pipeline"]),
    (BaseWorker, "increment_total_working_time", ["job_execution_time", "pipeline"]),
    (BaseWorker, "handle_job_success", ["job", "queue", "started_job_registry", "execution"]),
    (BaseWorker, "get_redis_server_version", []),
    (BaseWorker, "set_state", ["state", "pipeline"]),
    (BaseWorker, "heartbeat", ["timeout", "pipeline"]),
    (BaseWorker, "run_maintenance_tasks", []),
    (BaseWorker, "teardown", []),
    (Execution, "create", ["job", "ttl", "pipeline", "worker_name"]),
    (Execution, "__init__", ["id", "job_id", "connection", "worker_name"]),
    (StartedJobRegistry, "get_job_and_execution_ids", ["start", "end", "desc", "cleanup"]),
    (StartedJobRegistry, "add_execution", ["execution", "pipeline", "ttl", "xx"]),
    (StartedJobRegistry, "cleanup", ["timestamp", "exception_handlers"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("owner", "name", "expected"), SIGNATURES, ids=[f"{o.__name__}.{n}" for o, n, _ in SIGNATURES]
)
def test_rq_method_keeps_the_signature_imgsvc_calls(owner: type, name: str, expected: list[str]):
    assert parameters(getattr(owner, name)) == expected


def test_job_and_worker_attributes_read_by_imgsvc_exist():
    """batches.py reads these on every job it takes and sets ``_result``/``_status`` before finishing."""
    job = RQJob(id="contract", connection=Redis())  # no round trip: nothing is fetched
    for name in ("_success_callback_name", "_failure_callback_name", "_stopped_callback_name",
                 "_result", "_status", "repeats_left", "webhooks", "redis_server_version",
                 "has_rate_limit", "success_callback_timeout", "dependents_key"):  # fmt: skip
        assert hasattr(job, name), name
    assert isinstance(Queue.DEFAULT_TIMEOUT, int)
    for name in ("executions", "death_penalty_class", "last_heartbeat", "serializer", "default_result_ttl"):
        assert hasattr(SimpleWorker([Queue("contract", connection=Redis())]), name), name


@pytest.fixture()
def queue(redis_db: Redis) -> Queue:
    return Queue("contract", connection=redis_db)


def test_callback_names_are_what_batchable_checks(queue: Queue):
    """batches.batchable: a job with an RQ callback goes RQ's per-job way, so the names must be set."""
    plain = queue.enqueue(DESCRIBE_TASK, "x")
    called_back = queue.enqueue(DESCRIBE_TASK, "y", on_failure=Callback("builtins.print"))

    assert RQJob.fetch(called_back.id, connection=queue.connection)._failure_callback_name == "builtins.print"
    assert (batchable(plain), batchable(called_back)) == (True, False)


def test_handle_success_stores_the_result_set_in_underscore_result(queue: Queue):
    """batches.finish sets ``job._result``/``job._status`` and calls ``job._handle_success`` in a pipeline."""
    job = queue.enqueue("builtins.len", "abc")
    job._result = {"job_id": job.id}
    job._status = JobStatus.FINISHED
    with queue.connection.pipeline() as pipe:
        job._handle_success(60, pipeline=pipe, worker_name="contract-worker", execution_id="e1")
        pipe.execute()

    fetched = RQJob.fetch(job.id, connection=queue.connection)
    assert fetched.get_status() == JobStatus.FINISHED
    assert fetched.return_value() == {"job_id": job.id}
    assert job.id in queue.finished_job_registry


def test_finalize_failure_puts_the_job_in_the_failed_registry(queue: Queue):
    """batches.fail hands a failed job of a batch to ``worker._finalize_failure``: retries, else failed."""
    job = queue.enqueue("builtins.len", "abc")
    worker = SimpleWorker([queue], connection=queue.connection)
    execution = worker.prepare_execution(job)
    try:
        raise RuntimeError("contract")
    except RuntimeError as exc:
        worker._finalize_failure(job, queue, execution, (type(exc), exc, exc.__traceback__))

    assert RQJob.fetch(job.id, connection=queue.connection).get_status() == JobStatus.FAILED
    assert job.id in queue.failed_job_registry
    assert job.id not in queue.started_job_registry


def test_execution_hash_names_its_worker_and_the_started_registry_lists_it(queue: Queue):
    """reaper.started_jobs reads ``worker_name`` from RQ's execution hash, by key, for each started run."""
    job = queue.enqueue("builtins.len", "abc")
    with queue.connection.pipeline() as pipe:
        execution = Execution.create(job, 60, pipeline=pipe, worker_name="contract-worker")
        pipe.execute()

    entries = queue.started_job_registry.get_job_and_execution_ids(cleanup=False)
    assert entries == [(job.id, execution.id)]
    key = Execution(execution.id, job.id, connection=queue.connection).key
    assert queue.connection.hget(key, "worker_name") == b"contract-worker"


def test_expiring_a_run_lets_registry_cleanup_treat_the_job_as_abandoned(queue: Queue):
    """reaper._abandon: ``add_execution(ttl=0, xx=True)`` then ``cleanup()`` fails a job with no retries."""
    job = queue.enqueue("builtins.len", "abc")
    registry = queue.started_job_registry
    with queue.connection.pipeline() as pipe:
        execution = Execution.create(job, 600, pipeline=pipe, worker_name="gone")
        job.prepare_for_execution("gone", pipeline=pipe)  # STARTED, as batches.start leaves it
        pipe.execute()
    with queue.connection.pipeline() as pipe:
        registry.add_execution(execution, pipe, ttl=0, xx=True)
        pipe.execute()
    registry.cleanup()

    assert registry.get_job_and_execution_ids(cleanup=False) == []
    assert RQJob.fetch(job.id, connection=queue.connection).get_status() == JobStatus.FAILED
    assert job.id in queue.failed_job_registry


def test_worker_hash_fields_read_by_the_reaper(queue: Queue):
    """reaper._worker_is_gone reads ``rq:worker:<name>`` fields hostname, pid, death, last_heartbeat."""
    worker = SimpleWorker([queue], connection=queue.connection)
    worker.register_birth()
    worker.heartbeat()
    key = Worker.redis_worker_namespace_prefix + worker.name
    assert key == f"rq:worker:{worker.name}"
    hostname, pid, death, beat = queue.connection.hmget(key, "hostname", "pid", "death", "last_heartbeat")
    assert (hostname.decode(), int(pid), death) == (socket.gethostname(), os.getpid(), None)
    assert beat is not None
    # this very process counts as gone (see _worker_is_gone); a live pid on this host does not
    queue.connection.hset(key, "pid", os.getppid())
    assert not _worker_is_gone(queue.connection, worker.name, 60)
    worker.register_death()
    assert _worker_is_gone(queue.connection, worker.name, 60)


def test_intermediate_list_is_where_rq_dequeue_moves_jobs(queue: Queue):
    """batches.take LMOVEs to ``queue.intermediate_queue.key`` as RQ's dequeue does; the reaper
    removes from it."""
    job = queue.enqueue("builtins.len", "abc")
    SimpleWorker([queue], connection=queue.connection).dequeue_job_and_maintain_ttl(timeout=None)

    intermediate = queue.intermediate_queue
    assert queue.connection.lrange(intermediate.key, 0, -1) == [job.id.encode()]
    intermediate.remove(job.id)
    assert queue.connection.llen(intermediate.key) == 0


# -- the scheduler that dies with its worker (issue 23 row 7) --------------------------------
def test_rq_starts_its_scheduler_the_way_imgsvc_restates_it():
    source = inspect.getsource(Worker._start_scheduler)
    for step in ("RQScheduler(", "acquire_locks()", "acquired_locks", "register_birth()", ".start()"):
        assert step in source, step
    # The forked child runs ``work()``; ``start()`` runs in the worker before the fork.
    assert "ForkProcess(target=run" in inspect.getsource(RQScheduler.start)
    assert "scheduler.work()" in inspect.getsource(inspect.getmodule(RQScheduler).run)


def test_both_workers_start_the_scheduler_that_dies_with_them():
    for worker in (ImgsvcWorker, WebhookWorker):
        assert "OrphanFreeScheduler(" in inspect.getsource(worker._start_scheduler)
    assert issubclass(OrphanFreeScheduler, RQScheduler)
