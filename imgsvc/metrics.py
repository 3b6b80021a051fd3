"""Prometheus metrics kept in Redis, so workers on any machine report to one /metrics.

prometheus_client's multiprocess mode needs a shared directory; the workers share
only Redis, so counters and histogram buckets live in one Redis hash per metric and
the web side renders them in the Prometheus text format on request.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError
from rq import Queue

from imgsvc.queue.connection import live_workers
from imgsvc.queue.routing import ModelRegistry

BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
HISTOGRAMS = {
    "job_duration_seconds": "Time from a worker claiming a job to its result being stored.",
    "inference_seconds": "Model time per image (a batched pass is divided among its images).",
}


class RedisMetrics:
    def __init__(self, connection: Redis, namespace: str) -> None:
        self.connection = connection
        self.prefix = f"imgsvc:metrics:{namespace}"

    def count(self, outcome: str) -> None:
        self.record(outcome)

    def observe(self, histogram: str, seconds: float) -> None:
        self.record(None, **{histogram: seconds})

    def record(
        self,
        outcome: str | None,
        *,
        count: int = 1,
        pipeline: Pipeline | None = None,
        **observations: float | Sequence[float],
    ) -> None:
        """``count`` jobs' outcome and their histogram observations (one value, or one per job)
        in one round trip, or in the caller's ``pipeline``: this runs once per batch."""
        with self.connection.pipeline(transaction=False) as own:
            pipe = own if pipeline is None else pipeline
            if outcome:
                pipe.hincrby(f"{self.prefix}:jobs", outcome, count)
            for histogram, values in observations.items():
                key = f"{self.prefix}:{histogram}"
                seconds = [values] if isinstance(values, (int, float)) else list(values)
                buckets: dict[str, int] = {}
                for value in seconds:
                    index = bisect.bisect_left(BUCKETS, value)
                    bucket = str(BUCKETS[index]) if index < len(BUCKETS) else "+Inf"
                    buckets[bucket] = buckets.get(bucket, 0) + 1
                for bucket, hits in buckets.items():
                    pipe.hincrby(key, bucket, hits)
                if seconds:
                    pipe.hincrbyfloat(key, "sum", sum(seconds))
            if pipeline is None:
                own.execute()

    def read(self) -> tuple[dict[str, int], dict[str, dict[str, float]]]:
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.hgetall(f"{self.prefix}:jobs")
            for name in HISTOGRAMS:
                pipe.hgetall(f"{self.prefix}:{name}")
            counters, *histograms = pipe.execute()
        decode = lambda raw: {k.decode(): float(v) for k, v in raw.items()}  # noqa: E731
        return (
            {k: int(v) for k, v in decode(counters).items()},
            {name: decode(raw) for name, raw in zip(HISTOGRAMS, histograms, strict=True)},
        )


class _QueueCollector(Collector):
    def __init__(self, metrics: RedisMetrics, queue: Queue, worker_ttl: int) -> None:
        self.metrics = metrics
        self.queue = queue
        self.worker_ttl = worker_ttl

    def collect(self) -> Iterable:
        """With Redis down, say so (``imgsvc_redis_up 0``) instead of failing the scrape."""
        try:
            counters, histograms = self.metrics.read()
            registry = ModelRegistry(self.queue, self.worker_ttl)
            queues = registry.queues()
            models = registry.served(depths=True)
            # Live workers, as /readyz counts them: a SIGKILLed one stays registered a while.
            depth = sum(queue.count for queue in queues)
            workers = len({w.name for queue in queues for w in live_workers(queue, self.worker_ttl)})
        except RedisError:
            yield GaugeMetricFamily("imgsvc_redis_up", "Whether Redis answered this scrape.", value=0)
            return
        yield GaugeMetricFamily("imgsvc_redis_up", "Whether Redis answered this scrape.", value=1)
        jobs = CounterMetricFamily("imgsvc_jobs", "Jobs by outcome.", labels=["outcome"])
        for outcome in ("submitted", "done", "failed", "retried", "cached"):
            jobs.add_metric([outcome], counters.get(outcome, 0))
        yield jobs
        yield GaugeMetricFamily("imgsvc_queue_depth", "Jobs waiting, in every model's queue.", value=depth)
        live = "Workers on any model's queue with a fresh heartbeat."
        yield GaugeMetricFamily("imgsvc_workers", live, value=workers)
        per_model = "Jobs waiting in the model's queue."
        model_depth = GaugeMetricFamily("imgsvc_model_queue_depth", per_model, labels=["model"])
        model_workers = GaugeMetricFamily(
            "imgsvc_model_workers", "Live workers serving the model.", labels=["model"]
        )
        for model in models:
            model_depth.add_metric([model.name], model.queue_depth)
            model_workers.add_metric([model.name], model.workers)
        yield model_depth
        yield model_workers
        for name, doc in HISTOGRAMS.items():
            raw = histograms[name]
            cumulative, running = [], 0.0
            for bound in (*map(str, BUCKETS), "+Inf"):
                running += raw.get(bound, 0)
                cumulative.append((bound, running))
            yield HistogramMetricFamily(
                f"imgsvc_{name}", doc, buckets=cumulative, sum_value=raw.get("sum", 0.0)
            )


def registry_for(metrics: RedisMetrics, queue: Queue, worker_ttl: int) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_QueueCollector(metrics, queue, worker_ttl))
    return registry
