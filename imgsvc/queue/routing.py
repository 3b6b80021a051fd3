"""Several models in one deployment: which models the workers serve, and which queue a job goes to.

A queue per model. The deployment's default model is the one the workers on the default queue
(RQ_QUEUE) run, so ``python worker.py`` and ``rq worker -w imgsvc.queue.worker.ImgsvcWorker imgsvc``
keep serving it; a worker started with ``--model NAME`` serves ``NAME`` on a queue of its own
(:func:`model_queue_name`), unless ``NAME`` is the deployment's default model.

Each worker publishes what it serves (:class:`ModelEntry`: the model's name, what its results say
in ``generated_by``, the per-job options it takes, its queue) in one Redis hash per deployment,
at start-up and every maintenance round, so the web side learns it without importing torch.
Whether a worker is alive is RQ's own heartbeat, as /readyz and the reaper judge it; an entry
stays "known" for :data:`FORGET_AFTER` after its worker was last seen, which is what tells a
model that is down (503, retry later) from a name that was never served here (400).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta

from redis import Redis
from rq import Queue, Worker
from rq.utils import now, utcparse

from imgsvc.errors import BadRequest, ServiceUnavailable

#: How long a model stays known after its last worker was last seen: a model whose workers are
#: down for less is "unavailable" (503), one silent for longer is "unknown" (400).
FORGET_AFTER = 24 * 3600
#: Characters a model queue's name keeps as they are; the rest become ``-`` (rq-dashboard puts
#: queue names into URL paths, where a ``/`` of a Hub id would break its routes).
_QUEUE_SAFE = re.compile(r"[^A-Za-z0-9_.:-]+")
MAX_MODEL_NAME = 255


class UnknownModel(BadRequest):
    """No worker of this deployment has served the model (within FORGET_AFTER): 400."""

    code = "unknown_model"


class ModelUnavailable(ServiceUnavailable):
    """The model is known here, but no live worker serves it now: 503, retry later."""

    code = "model_unavailable"
    headers = {"Retry-After": "30"}


def model_queue_name(default_queue: str, model: str) -> str:
    """The queue of a model other than the default: ``imgsvc.builtin:scene``,
    ``imgsvc.Salesforce-blip-image-captioning-base-1a2b3c4d`` (a hash when characters were
    replaced, so two names never share a queue)."""
    slug = _QUEUE_SAFE.sub("-", model).strip("-")[:80]
    if slug != model:
        slug = f"{slug}-{hashlib.sha256(model.encode()).hexdigest()[:8]}"
    return f"{default_queue}.{slug}"


@dataclass(frozen=True)
class ModelEntry:
    """What one worker serves, as it publishes it."""

    #: The name jobs choose it by (``model``): the VISION_MODEL or ``--model`` value, resolved.
    name: str
    #: What its results report in ``generated_by`` (the key dedupe compares).
    generated_by: str
    #: Per-job option names it takes (``max_length``, ``prompt``, ...).
    options: tuple[str, ...]
    queue: str
    #: The RQ worker that published it; its heartbeat says whether the entry is live.
    worker: str
    #: When the worker last published it (seconds since the epoch).
    seen: float = 0.0
    #: A composed describer's models that run, and those it runs without (for /readyz).
    components: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> ModelEntry | None:
        try:
            data = json.loads(raw)
            return cls(
                name=str(data["name"]),
                generated_by=str(data["generated_by"]),
                options=tuple(sorted(data.get("options", ()))),
                queue=str(data["queue"]),
                worker=str(data["worker"]),
                seen=float(data.get("seen", 0.0)),
                components=tuple(data.get("components", ())),
                missing=tuple(data.get("missing", ())),
            )
        except (ValueError, KeyError, TypeError):
            return None  # written by something else: not a model this deployment can route to


@dataclass(frozen=True)
class ServedModel:
    """One model as ``GET /api/v1/models`` lists it: its entries merged, with live workers counted."""

    name: str
    generated_by: str
    options: tuple[str, ...]
    queue: str
    default: bool
    #: Live workers serving it now (fresh RQ heartbeat).
    workers: int
    #: Jobs waiting in its queue.
    queue_depth: int = 0
    components: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "default": self.default,
            "workers": self.workers,
            "queue_depth": self.queue_depth,
            "options": list(self.options),
            "generated_by": self.generated_by,
        }


@dataclass(frozen=True)
class Route:
    """Where a job goes: the queue, and the model served there (None: no worker has said yet)."""

    queue: Queue
    model: ServedModel | None
    #: The default queue's jobs are kept in the row as ``queue = None``.
    is_default: bool = True


@dataclass
class ModelRegistry:
    """The models of the deployment whose default queue is ``default_queue``."""

    default_queue: Queue
    worker_ttl: int
    _queues: dict[str, Queue] = field(default_factory=dict, repr=False)

    @property
    def connection(self) -> Redis:
        return self.default_queue.connection

    @property
    def key(self) -> str:
        return f"imgsvc:models:{self.default_queue.name}"

    def queue(self, name: str | None) -> Queue:
        """The RQ queue called ``name`` (None: the default), on the same connection."""
        if name is None or name == self.default_queue.name:
            return self.default_queue
        if name not in self._queues:
            self._queues[name] = Queue(name, connection=self.connection)
        return self._queues[name]

    # -- the worker's side --------------------------------------------------------------------------
    def publish(self, entry: ModelEntry) -> None:
        """Say (again) what ``entry.worker`` serves; entries silent for FORGET_AFTER go."""
        entry = replace(entry, seen=time.time())
        forgotten = [e.worker for e in self._read(keep_forgotten=True) if e.seen < entry.seen - FORGET_AFTER]
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.hset(self.key, entry.worker, entry.to_json())
            if forgotten:
                pipe.hdel(self.key, *forgotten)
            pipe.execute()

    # -- the web's side ----------------------------------------------------------------------------
    def entries(self) -> list[ModelEntry]:
        """Every entry seen within FORGET_AFTER, newest first."""
        return self._read(keep_forgotten=False)

    def _read(self, *, keep_forgotten: bool) -> list[ModelEntry]:
        cutoff = time.time() - FORGET_AFTER
        entries = [ModelEntry.from_json(raw) for raw in self.connection.hvals(self.key)]
        kept = [e for e in entries if e is not None and (keep_forgotten or e.seen >= cutoff)]
        return sorted(kept, key=lambda e: e.seen, reverse=True)

    def live_workers(self, names: list[str]) -> set[str]:
        """Those of ``names`` whose RQ worker sent a heartbeat within WORKER_TTL and has not died:
        the liveness /readyz and the reaper use, read for all of them in one round trip."""
        if not names:
            return set()
        fresh_since = now() - timedelta(seconds=self.worker_ttl)
        with self.connection.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hmget(Worker.redis_worker_namespace_prefix + name, "last_heartbeat", "death")
            replies = pipe.execute()
        live = set()
        for name, (beat, death) in zip(names, replies, strict=True):
            if beat is not None and death is None and utcparse(beat.decode()) >= fresh_since:
                live.add(name)
        return live

    def served(self, *, depths: bool = False) -> list[ServedModel]:
        """Each known model once, the default first, with its live workers (and queue depth)."""
        entries = self.entries()
        live = self.live_workers(list(dict.fromkeys(e.worker for e in entries)))
        default = self._default_name(entries, live)
        by_name: dict[str, list[ModelEntry]] = {}
        for entry in entries:
            by_name.setdefault(entry.name, []).append(entry)
        models = []
        for name, group in by_name.items():
            alive = [e for e in group if e.worker in live]
            newest = (alive or group)[0]  # what the newest live worker says it takes
            models.append(
                ServedModel(
                    name=name,
                    generated_by=newest.generated_by,
                    options=newest.options,
                    queue=self.default_queue.name if name == default else newest.queue,
                    default=name == default,
                    workers=len({e.worker for e in alive}),
                    components=newest.components,
                    missing=newest.missing,
                )
            )
        models.sort(key=lambda m: (not m.default, m.name))
        if depths and models:
            with self.connection.pipeline(transaction=False) as pipe:
                for model in models:
                    pipe.llen(self.queue(model.queue).key)
                counts = pipe.execute()
            models = [replace(m, queue_depth=count) for m, count in zip(models, counts, strict=True)]
        return models

    def _default_name(self, entries: list[ModelEntry], live: set[str]) -> str | None:
        """What the default queue's workers run: the newest live one's model, else the newest's."""
        on_default = [e for e in entries if e.queue == self.default_queue.name]
        alive = [e for e in on_default if e.worker in live]
        return (alive or on_default)[0].name if on_default else None

    def default_model(self) -> ServedModel | None:
        """The default queue's model, live or not (dedupe and the options check need only its word)."""
        entries = [e for e in self.entries() if e.queue == self.default_queue.name]
        if len({e.name for e in entries}) > 1:  # a change of model under way: ask who is alive
            return next((m for m in self.served() if m.default), None)
        if not entries:
            return None
        newest = entries[0]
        return ServedModel(
            newest.name,
            newest.generated_by,
            newest.options,
            self.default_queue.name,
            default=True,
            workers=0,  # not counted: one round trip fewer on every submit
            components=newest.components,
            missing=newest.missing,
        )

    def route(self, model: str | None, default: DefaultModelCache | None = None) -> Route:
        """The queue a job for ``model`` goes to (None: the default queue, whoever serves it,
        as ``default`` remembers it if given).

        A named model must be served by a live worker now: one never served here is a 400
        (:class:`UnknownModel`), one whose workers are all down a 503 (:class:`ModelUnavailable`);
        both name the models that are served.
        """
        if model is None:
            return Route(self.default_queue, default.get(self) if default else self.default_model())
        models = self.served()
        chosen = next((m for m in models if m.name == model), None)
        if chosen is not None and chosen.workers:
            return Route(self.queue(chosen.queue), chosen, is_default=chosen.queue == self.default_queue.name)
        served = [m.name for m in models if m.workers]
        listed = f"models served now: {', '.join(served)}" if served else "no model is served now"
        if chosen is None:
            raise UnknownModel(
                f"no model of that name is served here ({listed}); GET /api/v1/models lists them",
                served=served,
            )
        raise ModelUnavailable(
            f"no live worker serves the model {chosen.name} now; retry shortly ({listed})",
            model=chosen.name,
            served=served,
        )

    def queues(self) -> list[Queue]:
        """The default queue, then every known model's queue: what the reaper and /metrics go over."""
        names = dict.fromkeys([self.default_queue.name, *sorted({e.queue for e in self.entries()})])
        return [self.queue(name) for name in names]


class DefaultModelCache:
    """The default queue's model as :meth:`ModelRegistry.default_model` last said, for up to
    ``seconds``: every submit needs it (for dedupe and the options check), while a change of
    the served model is rare, and a job's ``generated_by`` always tells what ran. One per web
    process; nothing is kept while no worker has said what it serves."""

    def __init__(self, seconds: float = 1.0) -> None:
        self.seconds = seconds
        self._kept: tuple[float, str, ServedModel] | None = None

    def get(self, registry: ModelRegistry) -> ServedModel | None:
        kept, now = self._kept, time.monotonic()  # one read of the tuple: threads share the cache
        if kept is not None and kept[1] == registry.key and now - kept[0] < self.seconds:
            return kept[2]
        model = registry.default_model()
        self._kept = None if model is None else (now, registry.key, model)
        return model

    def forget(self) -> None:
        self._kept = None
