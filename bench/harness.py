"""What the benchmarks share: models built once under bench/out/, sample photos, a whole
service wired to a scratch Redis DB and SQLite file, and tables that print ratios.

Every bench compares against a baseline measured in the same run, because the machines
they run on are noisy: the ratio is the figure, the absolute times are context.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from imgsvc.config import PROJECT_ROOT, Settings
from imgsvc.vision.base import Describer, Description

if TYPE_CHECKING:
    from flask import Flask
    from redis import Redis

    from imgsvc.queue.worker import ImgsvcWorker
    from imgsvc.vision.captioners.captioner import TransformersCaptioner

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

OUT = PROJECT_ROOT / "bench" / "out"
#: A Redis DB index of the benches' own; the test suite uses 15 and flushes it.
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")
#: Where the benches' captioners run: the CPU unless ``DEVICE`` says otherwise (``DEVICE=cuda``),
#: in ``DTYPE`` as for the worker (``auto``: float16 on CUDA).
DEVICE = os.environ.get("DEVICE") or "cpu"
DTYPE = os.environ.get("DTYPE") or "auto"
#: Both sides of a comparison generate exactly this many tokens, so they do the same work.
TOKENS = 20
MODEL_DIRS = {"tiny": "tiny-blip", "blip-base": "blip-base"}
#: Names the code a cached model was built by: a change to the builder rebuilds it.
STAMP = "built-by.txt"


# -- models ---------------------------------------------------------------------------------
def model_dir(size: str) -> Path:
    """The random-weight BLIP of ``size`` ("tiny" or "blip-base"), built on first use and kept."""
    path = OUT / MODEL_DIRS[size]
    stamp = f"{size} {_builder_digest()}\n"
    if (path / STAMP).is_file() and (path / STAMP).read_text() == stamp:  # written last: a whole build
        return path
    from imgsvc.vision.testing_utils import build_tiny_model

    print(f"building the {size} model into {path} (once) ...", flush=True)
    started = time.perf_counter()
    OUT.mkdir(parents=True, exist_ok=True)
    # Built aside and renamed, so an interrupted build never looks like a finished one.
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=OUT))
    try:
        build_tiny_model("blip", staging, size=size)
        (staging / STAMP).write_text(stamp)
        shutil.rmtree(path, ignore_errors=True)
        staging.rename(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"built in {time.perf_counter() - started:.1f} s", flush=True)
    return path


def _builder_digest() -> str:
    import hashlib

    from imgsvc.vision import testing_utils

    return hashlib.sha256(Path(testing_utils.__file__).read_bytes()).hexdigest()[:16]


def load_captioner(size: str, *, quantize: str | None = None, tokens: int = TOKENS) -> TransformersCaptioner:
    """Through the production loader, generating exactly ``tokens`` tokens per image, on ``DEVICE``."""
    import torch

    from imgsvc.vision.captioners.captioner import TransformersCaptioner

    torch.set_num_threads(os.cpu_count() or 1)  # what one worker on this machine gets (TORCH_THREADS=0)
    return TransformersCaptioner.load(
        str(model_dir(size)),
        device=DEVICE,
        dtype=DTYPE,
        max_new_tokens=tokens,
        min_new_tokens=tokens,
        quantize=quantize,
        local_files_only=True,
    )


class TimedDescriber(Describer):
    """Wraps a describer and adds up the time spent inside it: the model's share of a run."""

    def __init__(self, inner: Describer) -> None:
        self.inner = inner
        self.name = inner.name
        self.supported_options = inner.supported_options
        self.seconds = 0.0
        self.calls = 0
        self.images = 0

    def describe_full(
        self, images: Sequence[Image.Image], options: Mapping[str, Any] | None = None
    ) -> list[Description]:
        started = time.perf_counter()
        try:
            return self.inner.describe_full(images, options)
        finally:
            self.seconds += time.perf_counter() - started
            self.calls += 1
            self.images += len(images)

    def reset(self) -> None:
        self.seconds, self.calls, self.images = 0.0, 0, 0


# -- images ---------------------------------------------------------------------------------
def photos(count: int) -> list[bytes]:
    """``count`` distinct JPEGs made from scikit-image's sample photos.

    Each one differs in a few pixels from the others, so the service's dedupe cache
    never answers one of them from another's result.
    """
    from skimage import data

    sources = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.stereo_motorcycle()[0]]
    result = []
    for i in range(count):
        image = Image.fromarray(sources[i % len(sources)])
        for x in range(16):  # the index, written in the top row as black/white pixels
            image.putpixel((x, 0), (255, 255, 255) if (i >> x) & 1 else (0, 0, 0))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        result.append(buffer.getvalue())
    return result


def decoded(jpeg: bytes) -> Image.Image:
    """What the worker hands the model for these bytes (same downscale and EXIF handling)."""
    from imgsvc.decoding import load_for_model

    with tempfile.NamedTemporaryFile(suffix=".jpg") as file:
        file.write(jpeg)
        file.flush()
        settings = Settings()
        return load_for_model(Path(file.name), settings.max_image_pixels, settings.max_image_side)


def jpeg_of_size(target_bytes: int) -> bytes:
    """A noisy photo-like JPEG of about ``target_bytes`` (for upload benches)."""
    import numpy as np

    rng = np.random.default_rng(0)
    side = 64
    while True:
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
        if buffer.tell() >= target_bytes:
            return buffer.getvalue()
        side += 16


# -- the service ----------------------------------------------------------------------------
def redis_keys(connection: Redis) -> set[bytes]:
    return set(connection.scan_iter(count=1000))


@contextmanager
def scratch_redis() -> Iterator[Redis]:
    """The benches' Redis DB; every key created meanwhile is deleted afterwards."""
    from redis import Redis
    from redis.exceptions import RedisError

    connection = Redis.from_url(REDIS_URL)
    try:
        before = redis_keys(connection)
    except RedisError as exc:
        raise SystemExit(f"Redis is needed at {REDIS_URL} (set BENCH_REDIS_URL): {exc}") from exc
    try:
        yield connection
    finally:
        created = redis_keys(connection) - before
        if created:
            connection.delete(*created)
        connection.close()


def quiet_logs() -> None:
    """Production log level (INFO, so formatting costs stay in), written to /dev/null."""
    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    imgsvc_logger = logging.getLogger("imgsvc")
    for handler in imgsvc_logger.handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(devnull)
    for name in ("rq.worker", "rq.job"):  # rq adds stdout handlers only where none exist
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(logging.StreamHandler(devnull))
        logger.propagate = False


@dataclass
class Service:
    """The whole service in this process: Flask app (test client), real Redis, SQLite, worker."""

    app: Flask
    settings: Settings
    describer: Describer | None
    workdir: Path
    submitted: list[str] = field(default_factory=list)

    @property
    def client(self) -> Any:
        return self.app.test_client()

    def submit(self, data: bytes, client: Any = None) -> dict[str, Any]:
        response = (client or self.client).post(
            "/api/v1/submit",
            data={"file": (io.BytesIO(data), "photo.jpg", "image/jpeg")},
            content_type="multipart/form-data",
        )
        if response.status_code != 202:
            raise RuntimeError(f"submit answered {response.status_code}: {response.get_data(as_text=True)}")
        body = response.get_json()
        self.submitted.append(body["job_id"])
        return body

    def result(self, job_id: str, client: Any = None) -> tuple[int, dict[str, Any]]:
        response = (client or self.client).get(f"/api/v1/result/{job_id}")
        return response.status_code, response.get_json()

    def wait_result(self, job_id: str, client: Any = None, timeout: float = 60) -> dict[str, Any]:
        """Poll every 5 ms until the job's result is there (a worker process is running it)."""
        started = time.perf_counter()
        while (answer := self.result(job_id, client))[0] != 200:
            if time.perf_counter() - started > timeout:
                raise TimeoutError(f"job {job_id} not done within {timeout:.0f} s: {answer}")
            time.sleep(0.005)
        return answer[1]

    def worker(self, **settings_changes: Any) -> ImgsvcWorker:
        """An in-process worker holding the preloaded describer; ``settings_changes`` e.g. batch_size."""
        from imgsvc.queue.worker import ImgsvcWorker

        if settings_changes:
            self.settings = self.settings.with_(**settings_changes)
            self.app.config["IMGSVC"] = self.settings
        worker = ImgsvcWorker(
            [self.app.task_queue],
            connection=self.app.redis,
            app=self.app,
            describer=self.describer,
            name=f"bench-{uuid.uuid4().hex[:8]}",
        )
        return worker

    def work(self, **settings_changes: Any) -> ImgsvcWorker:
        """Run a worker in burst mode over whatever is queued."""
        worker = self.worker(**settings_changes)
        worker.work(burst=True, logging_level="INFO")
        return worker

    def environment(self) -> dict[str, str]:
        """The environment that gives a worker.py or gunicorn process this same service."""
        s = self.settings
        return os.environ | {
            "REDIS_URL": s.redis_url,
            "DATABASE_URL": s.database_url,
            "UPLOAD_DIR": str(s.upload_dir),
            "RQ_QUEUE": s.queue_name,
            "VISION_MODEL": s.vision_model,
            "MAX_NEW_TOKENS": str(s.max_new_tokens),
            "BATCH_SIZE": str(s.batch_size),
            "TASK_RETRY_DELAY": str(s.task_retry_delay),
            "LOG_LEVEL": s.log_level,
        }


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group (gunicorn's or RQ's warm shutdown), SIGKILL after 30 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextmanager
def worker_process(service: Service) -> Iterator[subprocess.Popen]:
    """``python worker.py`` for ``service``, as in production; yields once it waits on the queue."""
    from rq import Worker

    log_path = service.workdir / "worker.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "worker.py"],
            cwd=PROJECT_ROOT,
            env=service.environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its RQ scheduler child goes with it
        )
    try:
        deadline = time.monotonic() + 120
        while not any(w.get_state() == "idle" for w in Worker.all(queue=service.app.task_queue)):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker.py did not start; its log:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.05)
        yield process
    finally:
        stop_group(process)


@contextmanager
def scratch_service(describer: Describer | None = None, **settings: Any) -> Iterator[Service]:
    """A service on the benches' Redis DB and a temporary SQLite file and upload dir (or the
    ``upload_dir`` given, e.g. an s3:// URL)."""
    from imgsvc import create_app
    from imgsvc.storage.db import db

    with scratch_redis(), tempfile.TemporaryDirectory(prefix="imgsvc-bench-") as tmp:
        defaults: dict[str, Any] = {"upload_dir": Path(tmp) / "uploads", "task_retry_delay": 0}
        config = Settings(
            redis_url=REDIS_URL,
            database_url=f"sqlite:///{Path(tmp) / 'bench.sqlite'}",
            queue_name=f"bench-{uuid.uuid4().hex[:8]}",
            **(defaults | settings),
        )
        app = create_app(config)
        quiet_logs()
        try:
            yield Service(app, config, describer, Path(tmp))
        finally:
            with app.app_context():
                db.session.remove()
                db.engine.dispose()


# -- numbers and tables ---------------------------------------------------------------------
def timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); honest for small samples."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """An aligned text table: first column left-aligned, the rest right-aligned."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        first, *rest = row
        return "  ".join(
            [first.ljust(widths[0]), *(c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))]
        )

    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))


def goal(label: str, met: bool, detail: str, applies: bool = True) -> None:
    """One line per goal; ``applies=False`` where the run measures another setup (a --quick smoke run)."""
    verdict = ("MET   " if met else "MISSED") if applies else "n/a   "
    print(f"goal {verdict} {label}: {detail}" + ("" if applies else " (not the goal's setup)"))


def header(title: str, **context: Any) -> None:
    facts: dict[str, Any] = {"cpus": os.cpu_count()}
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        facts["torch threads"] = torch.get_num_threads()
        if torch.cuda.is_available() and DEVICE.startswith("cuda"):
            facts["device"] = torch.cuda.get_device_name()
            facts["dtype"] = DTYPE
    facts |= context
    print(f"\n== {title} ==  " + "  ".join(f"{k}={v}" for k, v in facts.items()), flush=True)
