"""Fixtures shared by every room's tests: settings, a clean Redis DB, the app, models, images,
and a real S3 server (SeaweedFS on loopback)."""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from PIL import Image
from redis import Redis

from imgsvc import create_app
from imgsvc.config import Settings
from tests import loopback

os.environ.setdefault("HF_HUB_OFFLINE", "1")
loopback.install()  # no test may open a connection to anything but loopback


def _per_process(url: str) -> str:
    """Under pytest-xdist each process gets a Redis DB of its own: gw0 the given one, gw1 the one
    below it, and so on (every test empties its DB)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):
        return url
    parts = urlsplit(url)
    db = int(parts.path.lstrip("/") or 0) - int(worker[2:])
    if db < 0:
        raise RuntimeError(f"{url}: too few Redis DBs below it for {worker}")
    return urlunsplit(parts._replace(path=f"/{db}"))


TEST_REDIS_URL = _per_process(os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15"))
#: The tests create a schema of their own in this database and drop only that.
TEST_POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
#: Set in the test Redis DB while the suite owns it. A DB that holds keys but not this one
#: belongs to someone else, and the suite refuses to run rather than empty it.
OWNER_KEY = "imgsvc-tests:owner"
OWNER_NOTE = b"imgsvc's test suite owns this Redis DB and empties it before every test"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BLIP of a few hundred KB with random weights, saved like a real checkpoint.

    Building it takes seconds; ``make mutate`` starts a pytest session per mutant, so it sets
    TEST_MODEL_CACHE to keep one copy across sessions (the build is seeded: same weights).
    """
    from imgsvc.vision.testing_utils import build_tiny_model

    cache = os.environ.get("TEST_MODEL_CACHE")
    if not cache:
        return build_tiny_model("blip", tmp_path_factory.mktemp("models") / "tiny-blip")
    kept = Path(cache) / "tiny-blip"
    if not (kept / "config.json").is_file():
        building = Path(cache) / f"building-{os.getpid()}"
        build_tiny_model("blip", building).rename(kept)
    return kept


@pytest.fixture(scope="session")
def tiny_florence2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight Florence-2 of the real classes, with a real processor and a BPE trained here."""
    from imgsvc.vision.testing_utils import build_tiny_florence2

    return build_tiny_florence2(tmp_path_factory.mktemp("models") / "tiny-florence2")


@pytest.fixture(scope="session")
def tiny_smolvlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight SmolVLM of the real classes; its processor config names SmolVLMProcessor."""
    from imgsvc.vision.testing_utils import build_tiny_smolvlm

    return build_tiny_smolvlm(tmp_path_factory.mktemp("models") / "tiny-smolvlm")


@pytest.fixture(scope="session")
def tiny_describer(tiny_model_dir: Path):
    """Loaded once per session through the production loader."""
    from imgsvc.vision import load_describer

    return load_describer(Settings(vision_model=str(tiny_model_dir), max_new_tokens=8))


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """MODELS_DIR (else the default ``instance/models``) with the detector weights in it.

    Fails rather than skips when they are missing: the detector tests are real tests, and CI runs
    ``imgsvc fetch-models`` before the suite.
    """
    from imgsvc.vision.scene.weights import missing_components

    path = Path(os.environ.get("MODELS_DIR") or Settings().models_dir)
    missing = missing_components(path)
    if missing:
        pytest.fail(
            f"detector weights missing from {path} for: {', '.join(missing)}. "
            "Run `imgsvc fetch-models` (or set MODELS_DIR to where they are).",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def scene_describer(models_dir: Path):
    """The default offline describer with every component, loaded once per session."""
    from imgsvc.vision.scene.describer import SceneDescriber

    return SceneDescriber.load(models_dir, ocr="auto")


def foreign_keys(connection: Redis) -> int:
    """How many keys the DB holds that the suite did not write (0 for an empty or owned DB)."""
    size = connection.dbsize()
    return 0 if size == 0 or connection.get(OWNER_KEY) == OWNER_NOTE else size


def empty_owned_db(connection: Redis) -> None:
    """Everything goes, except the mark that the DB is the suite's (one transaction)."""
    with connection.pipeline(transaction=True) as pipe:
        pipe.flushdb()
        pipe.set(OWNER_KEY, OWNER_NOTE)
        pipe.execute()


@pytest.fixture(scope="session")
def owned_redis() -> Iterator[Redis]:
    """The test Redis DB, once checked to be empty or the suite's own.

    It is left holding only the owner mark, so a late write by a process a test started
    cannot make the next run take the suite's own DB for someone else's.
    """
    connection = Redis.from_url(TEST_REDIS_URL)
    if count := foreign_keys(connection):
        pytest.exit(
            f"{TEST_REDIS_URL} holds {count} key(s) that the tests did not write, and the tests "
            "empty the DB they use: refusing to run. Point TEST_REDIS_URL at an empty Redis DB, "
            "or empty this one yourself if nothing in it matters.",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )
    empty_owned_db(connection)
    yield connection
    empty_owned_db(connection)
    connection.close()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """One SeaweedFS for the whole session: every test that needs S3 shares it (a few seconds to start)."""
    from tests.integration.procs import SeaweedFS

    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    yield server
    server.stop()


@pytest.fixture()
def s3_upload_dir(s3_server, monkeypatch: pytest.MonkeyPatch) -> str:
    """UPLOAD_DIR for object storage: a prefix of this test's own in the server's bucket, with
    boto3 pointed at the server the way production points it, by the standard AWS variables."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return f"s3://{s3_server.BUCKET}/{uuid.uuid4().hex}"


@pytest.fixture()
def redis_db(owned_redis: Redis) -> Iterator[Redis]:
    """The real Redis, on the suite's own DB index, emptied before and after each test."""
    empty_owned_db(owned_redis)
    yield owned_redis
    empty_owned_db(owned_redis)


@pytest.fixture()
def postgres_url() -> Iterator[str]:
    """TEST_POSTGRES_URL, narrowed to a schema of the test's own, dropped afterwards.

    Whatever else that database holds (even a ``jobs`` table) is never touched, and tests in
    parallel processes (``make test`` runs two) never share a table.
    """
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    schema = f"imgsvc_test_{uuid.uuid4().hex[:12]}"
    engine = create_engine(TEST_POSTGRES_URL)
    try:
        with engine.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    except OperationalError as exc:
        engine.dispose()
        # Like the browser and nginx tests: skip, saying why, where PostgreSQL is absent; CI sets
        # TEST_POSTGRES_REQUIRED so that these tests can never go missing there unnoticed.
        if os.environ.get("TEST_POSTGRES_REQUIRED"):
            raise
        where = make_url(TEST_POSTGRES_URL).render_as_string(hide_password=True)
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        pytest.skip(
            f"needs PostgreSQL at {where} (database test, trust auth: see the README; "
            f"or TEST_POSTGRES_URL): {reason}"
        )
    try:
        url = make_url(TEST_POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with engine.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


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
    if watcher := app.extensions.get("imgsvc.watcher"):
        watcher.close()
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


def open_rgb(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


@pytest.fixture(scope="session")
def scan_bomb() -> bytes:
    """The security review's 1.8 MB progressive JPEG: one AC scan repeated 20,000 times (42 s to decode)."""
    from bench.bombs import progressive_scan_bomb

    return progressive_scan_bomb(6000, 20_000)


@pytest.fixture(scope="session")
def webp_bomb() -> bytes:
    """The review's 70 KB WebP with a 6300x6300 canvas (612 MB to decode in the web process)."""
    from bench.bombs import webp_canvas_bomb

    return webp_canvas_bomb()


@pytest.fixture()
def jpeg_bytes() -> bytes:
    return image_bytes("JPEG")


@pytest.fixture()
def png_bytes() -> bytes:
    return image_bytes("PNG")


# -- the security suite's tally, reported once per run (tests/security/tally.py) ---------------------
def pytest_sessionfinish(session: pytest.Session) -> None:
    """In a pytest-xdist worker: hand this process's tally to the controller, which reports it."""
    from tests.security.tally import TALLY

    output = getattr(session.config, "workeroutput", None)
    if output is not None and TALLY.statuses:
        output["security_tally"] = TALLY.summary()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """pytest-xdist's controller, as each worker ends: its tally joins the run's."""
    from tests.security.tally import TALLY

    part = getattr(node, "workeroutput", {}).get("security_tally")
    if part:
        TALLY.merge(part)


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return  # a pytest-xdist worker: the controller reports
    from tests.security.tally import TALLY

    if line := TALLY.report():
        terminalreporter.write_line(line)
