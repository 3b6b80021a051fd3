"""Prometheus metrics kept in Redis, so workers on any machine report to one /metrics.

prometheus_client's multiprocess mode needs a shared directory; the workers share
only Redis, so counters and histogram buckets live in one Redis hash per metric and
the web side renders them in the Prometheus text format on request.

HTTP requests are counted the same way, by method, route template (never the raw path,
which holds job ids) and status: each web process adds its counts to Redis at most every
FLUSH_INTERVAL seconds, with the next request (one round trip every few seconds, not one
per request) and, under gunicorn, from a thread (so an idle process's figures stay fresh).
Every web and worker process also publishes its own ``process_*`` figures there, labelled
with its role, host and pid.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry
from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError
from rq import Queue

from imgsvc.queue.connection import live_workers

log = logging.getLogger("imgsvc.metrics")

BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
HISTOGRAMS = {
    "job_duration_seconds": "Time from a worker claiming a job to its result being stored.",
    "inference_seconds": "Model time per image (a batched pass is divided among its images).",
}


#: Latency buckets of the HTTP histogram (Prometheus's defaults, which suit a web request).
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
#: Methods counted under their own name; any other a client invents counts as "other".
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: How often a web process adds its request counts (and its process figures) to Redis.
FLUSH_INTERVAL = 2.0
#: A process that has not published its figures for this long is gone and no longer shown.
PROCESS_SILENCE = 60.0
#: The process_* figures, with their Prometheus type (prometheus_client's ProcessCollector).
PROCESS_METRICS = {
    "process_cpu_seconds_total": "counter",
    "process_virtual_memory_bytes": "gauge",
    "process_resident_memory_bytes": "gauge",
    "process_start_time_seconds": "gauge",
    "process_open_fds": "gauge",
    "process_max_fds": "gauge",
}
_SEP = "\t"  # between the labels of a hash field: no method, route template or status holds a tab


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

    def publish_process(self, role: str, pipeline: Pipeline | None = None) -> None:
        """This process's own ``process_*`` figures, under its role, host and pid."""
        samples = {
            sample.name: sample.value
            for family in ProcessCollector(registry=None).collect()
            for sample in family.samples
        }
        field = _SEP.join((role, socket.gethostname(), str(os.getpid())))
        value = json.dumps({"at": time.time(), "samples": samples})
        (pipeline or self.connection).hset(f"{self.prefix}:processes", field, value)

    def add_http(self, requests: Counter, buckets: Counter, seconds: Counter, pipeline: Pipeline) -> None:
        """Add one process's request counts: (method, route, status), (method, route, bucket) and
        (method, route) -> total seconds."""
        for key, value in (
            (f"{self.prefix}:http_requests", requests),
            (f"{self.prefix}:http_buckets", buckets),
        ):
            for labels, count in value.items():
                pipeline.hincrby(key, _SEP.join(labels), count)
        for labels, total in seconds.items():
            pipeline.hincrbyfloat(f"{self.prefix}:http_seconds", _SEP.join(labels), total)

    def read_http(self) -> tuple[dict[tuple[str, ...], float], ...]:
        """Request counts, bucket counts, seconds and the live processes' figures, in one round trip."""
        with self.connection.pipeline(transaction=False) as pipe:
            for name in ("http_requests", "http_buckets", "http_seconds", "processes"):
                pipe.hgetall(f"{self.prefix}:{name}")
            *http, processes = pipe.execute()
        tables = tuple({tuple(k.decode().split(_SEP)): float(v) for k, v in raw.items()} for raw in http)
        now, live, gone = time.time(), {}, []
        for field, raw in processes.items():
            entry = json.loads(raw)
            if now - entry["at"] > PROCESS_SILENCE:
                gone.append(field)
            else:
                live[tuple(field.decode().split(_SEP))] = entry["samples"]
        if gone:
            self.connection.hdel(f"{self.prefix}:processes", *gone)
        return (*tables, live)


class HttpMetrics:
    """This web process's request counts, added to Redis every FLUSH_INTERVAL seconds.

    A request bumps counters in memory; the first request after FLUSH_INTERVAL also adds them
    to Redis, with the process's own figures. :meth:`start` (gunicorn's ``post_worker_init``)
    adds a thread that flushes on the same beat while no request comes.
    """

    def __init__(self, metrics: RedisMetrics, interval: float = FLUSH_INTERVAL) -> None:
        self.metrics = metrics
        self.interval = interval
        self._lock = threading.Lock()
        self._requests: Counter = Counter()
        self._buckets: Counter = Counter()
        self._seconds: Counter = Counter()
        self._flushed = time.monotonic()

    def start(self) -> threading.Thread:
        """Flush from a daemon thread too, for the life of this process."""
        thread = threading.Thread(target=self._run, name="imgsvc-http-metrics", daemon=True)
        thread.start()
        return thread

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in HTTP_METHODS else "other"
        index = bisect.bisect_left(HTTP_BUCKETS, seconds)
        bucket = str(HTTP_BUCKETS[index]) if index < len(HTTP_BUCKETS) else "+Inf"
        with self._lock:
            self._requests[method, route, str(status)] += 1
            self._buckets[method, route, bucket] += 1
            self._seconds[method, route] += seconds
            due = time.monotonic() - self._flushed >= self.interval
        if due:
            self.flush()

    def flush(self) -> None:
        """Add what was counted since the last flush to Redis; kept for the next try if Redis fails."""
        with self._lock:
            self._flushed = time.monotonic()
            taken = self._requests, self._buckets, self._seconds
            self._requests, self._buckets, self._seconds = Counter(), Counter(), Counter()
        try:
            with self.metrics.connection.pipeline(transaction=False) as pipe:
                if any(taken):
                    self.metrics.add_http(*taken, pipeline=pipe)
                self.metrics.publish_process("web", pipeline=pipe)
                pipe.execute()
        except RedisError as exc:
            log.warning("request metrics not flushed: %s", exc)
            with self._lock:
                self._requests.update(taken[0])
                self._buckets.update(taken[1])
                self._seconds.update(taken[2])

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            if time.monotonic() - self._flushed >= self.interval:
                self.flush()


class _QueueCollector(Collector):
    def __init__(self, metrics: RedisMetrics, queue: Queue, worker_ttl: int) -> None:
        self.metrics = metrics
        self.queue = queue
        self.worker_ttl = worker_ttl

    def collect(self) -> Iterable:
        """With Redis down, say so (``imgsvc_redis_up 0``) instead of failing the scrape."""
        try:
            counters, histograms = self.metrics.read()
            # Live workers, as /readyz counts them: a SIGKILLed one stays registered a while.
            depth, workers = self.queue.count, len(live_workers(self.queue, self.worker_ttl))
        except RedisError:
            yield GaugeMetricFamily("imgsvc_redis_up", "Whether Redis answered this scrape.", value=0)
            return
        yield GaugeMetricFamily("imgsvc_redis_up", "Whether Redis answered this scrape.", value=1)
        jobs = CounterMetricFamily("imgsvc_jobs", "Jobs by outcome.", labels=["outcome"])
        for outcome in ("submitted", "done", "failed", "retried", "cached"):
            jobs.add_metric([outcome], counters.get(outcome, 0))
        yield jobs
        yield GaugeMetricFamily("imgsvc_queue_depth", "Jobs waiting in the queue.", value=depth)
        live = "Workers on the queue with a fresh heartbeat."
        yield GaugeMetricFamily("imgsvc_workers", live, value=workers)
        for name, doc in HISTOGRAMS.items():
            raw = histograms[name]
            cumulative, running = [], 0.0
            for bound in (*map(str, BUCKETS), "+Inf"):
                running += raw.get(bound, 0)
                cumulative.append((bound, running))
            yield HistogramMetricFamily(
                f"imgsvc_{name}", doc, buckets=cumulative, sum_value=raw.get("sum", 0.0)
            )
        yield from _http_families(*self.metrics.read_http())


def _http_families(
    requests: dict[tuple[str, ...], float],
    buckets: dict[tuple[str, ...], float],
    seconds: dict[tuple[str, ...], float],
    processes: dict[tuple[str, ...], dict[str, float]],
) -> Iterable:
    counter = CounterMetricFamily(
        "imgsvc_http_requests",
        "HTTP requests answered, by method, route template and status, summed over every web process.",
        labels=["method", "route", "status"],
    )
    for labels, count in sorted(requests.items()):
        counter.add_metric(list(labels), count)
    yield counter
    histogram = HistogramMetricFamily(
        "imgsvc_http_request_duration_seconds",
        "Time to answer an HTTP request, by method and route template.",
        labels=["method", "route"],
    )
    for method, route in sorted(seconds):
        cumulative, running = [], 0.0
        for bound in (*map(str, HTTP_BUCKETS), "+Inf"):
            running += buckets.get((method, route, bound), 0)
            cumulative.append((bound, running))
        histogram.add_metric([method, route], cumulative, sum_value=seconds[method, route])
    yield histogram
    for name, kind in PROCESS_METRICS.items():
        family_type = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
        family = family_type(
            name.removesuffix("_total") if kind == "counter" else name,
            f"{name} of each imgsvc process (prometheus_client's process collector).",
            labels=["role", "host", "pid"],
        )
        for labels, samples in sorted(processes.items()):
            if name in samples:
                family.add_metric(list(labels), samples[name])
        yield family


def registry_for(metrics: RedisMetrics, queue: Queue, worker_ttl: int) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_QueueCollector(metrics, queue, worker_ttl))
    return registry
