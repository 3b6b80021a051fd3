"""RQ's private names that imgsvc relies on: a bump of ``rq`` that changes one fails here first.

When one of these fails, read the new RQ code of that name and mend the restated copy in
imgsvc (the docstring of each copy says where it lives).
"""

from __future__ import annotations

import inspect

from rq.scheduler import RQScheduler
from rq.worker import Worker

from imgsvc.queue.worker import ImgsvcWorker, OrphanFreeScheduler, WebhookWorker


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
