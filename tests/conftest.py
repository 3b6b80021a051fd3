"""Fixtures shared by every room's tests: settings, a clean Redis DB, the app, models, images."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from redis import Redis

from imgsvc import create_app
from imgsvc.config import Settings
from tests import loopback

os.environ.setdefault("HF_HUB_OFFLINE", "1")
loopback.install()  # no test may open a connection to anything but loopback

TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BLIP of a few hundred KB with random weights, saved like a real checkpoint.

    Building it takes seconds; ``make mutate`` starts a pytest session per mutant, so it sets
    TEST_MODEL_CACHE to keep one copy across sessions (the build is seeded: same weights).
    """
    from imgsvc.vision.tiny import build_tiny_model

    cache = os.environ.get("TEST_MODEL_CACHE")
    if not cache:
        return build_tiny_model("blip", tmp_path_factory.mktemp("models") / "tiny-blip")
    kept = Path(cache) / "tiny-blip"
    if not (kept / "config.json").is_file():
        building = Path(cache) / f"building-{os.getpid()}"
        build_tiny_model("blip", building).rename(kept)
    return kept


@pytest.fixture(scope="session")
def tiny_describer(tiny_model_dir: Path):
    """Loaded once per session through the production loader."""
    from imgsvc.vision import load_describer

    return load_describer(Settings(vision_model=str(tiny_model_dir), max_new_tokens=8))


@pytest.fixture()
def redis_db() -> Iterator[Redis]:
    """The real Redis, on a DB index of its own, emptied before and after each test."""
    connection = Redis.from_url(TEST_REDIS_URL)
    connection.flushdb()
    yield connection
    connection.flushdb()
    connection.close()


@pytest.fixture()
def settings(tmp_path: Path, tiny_model_dir: Path, redis_db: Redis) -> Settings:
    return Settings(
        redis_url=TEST_REDIS_URL,
        database_url=f"sqlite:///{tmp_path / 'test.sqlite'}",
        upload_dir=tmp_path / "uploads",
        vision_model=str(tiny_model_dir),
        max_new_tokens=8,
        task_retry_delay=0,
        stale_after=0,
    )


@pytest.fixture()
def app(settings: Settings):
    app = create_app(settings)
    app.config["TESTING"] = True
    yield app
    from imgsvc.storage.db import db

    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture()
def client(app):
    return app.test_client()


@pytest.fixture()
def run_worker(app, tiny_describer):
    """Run an in-process ImgsvcWorker in burst mode over whatever is queued, with a preloaded model."""
    from imgsvc.queue.worker import ImgsvcWorker

    def run(describer=None, **work_kwargs) -> ImgsvcWorker:
        worker = ImgsvcWorker(
            [app.task_queue], connection=app.redis, app=app, describer=describer or tiny_describer
        )
        worker.work(burst=True, **work_kwargs)
        return worker

    return run


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The test's settings, as the environment of a ``python worker.py`` subprocess."""
    env = {
        "PATH": "/usr/bin:/bin",
        "HF_HUB_OFFLINE": "1",
        "REDIS_URL": settings.redis_url,
        "DATABASE_URL": settings.database_url,
        "UPLOAD_DIR": str(settings.upload_dir),
        "VISION_MODEL": settings.vision_model,
        "MAX_NEW_TOKENS": "5",
        "TORCH_THREADS": "2",
    }
    if "MUTANT_UNDER_TEST" in os.environ:  # under `make mutate`, the worker runs the test's mutant
        env["MUTANT_UNDER_TEST"] = os.environ["MUTANT_UNDER_TEST"]
    return env | extra


def image_bytes(
    fmt: str = "JPEG", size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (200, 30, 40)
) -> bytes:
    img = Image.new("RGB", size, color)
    for x in range(size[0]):  # a gradient, so codecs have something to encode
        img.putpixel((x, x % size[1]), (x * 4 % 256, 255 - x % 256, 90))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture()
def jpeg_bytes() -> bytes:
    return image_bytes("JPEG")


@pytest.fixture()
def png_bytes() -> bytes:
    return image_bytes("PNG")
