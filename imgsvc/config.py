"""Every setting of imgsvc, typed, read once from the environment.

The web app, the worker and the CLI all build a :class:`Settings` from the same
variables, so one ``.env`` file configures the whole deployment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:  # the vision side imports this module too, and must not pull in Flask
    from flask import Flask

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CAPTION_MODEL = "Salesforce/blip-image-captioning-base"


class ConfigError(ValueError):
    """A setting has a value that cannot be used."""


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"not a boolean: {value!r}")


def _list(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


#: Settings for which zero or less means nothing sensible.
POSITIVE = (
    "max_file_size",
    "job_timeout",
    "max_image_pixels",
    "max_image_frames",
    "header_check_ms",
    "batch_size",
    "decode_timeout",
    "decode_memory_mb",
    "worker_ttl",
    "web_threads",
    "max_new_tokens",
    "max_answer_tokens",
    "webhook_timeout",
    "webhook_workers",
    "webhook_per_host",
    "s3_timeout",
    "s3_cooldown",
    "web_header_timeout",
    "image_url_connect_timeout",
    "image_url_timeout",
)


@dataclass(frozen=True)
class Settings:
    """Defaults are the embedded, single-machine setup; production overrides via env."""

    # web
    # Loopback by default: a development run is not reachable from the network (images use 0.0.0.0).
    web_host: str = field(default="127.0.0.1", metadata={"env": "WEB_HOST"})
    web_port: int = field(default=8000, metadata={"env": "WEB_PORT"})
    web_workers: int = field(default=2, metadata={"env": "WEB_WORKERS"})
    #: gunicorn's threads per web worker (gunicorn.conf.py reads the same variable); a request
    #: that waits (``Prefer: wait``, an event stream) holds one, and all but two may wait at once.
    web_threads: int = field(default=4, metadata={"env": "WEB_THREADS"})
    #: The longest ``Prefer: wait=N`` honoured, in seconds; a longer one is cut to this.
    max_wait: int = field(default=60, metadata={"env": "MAX_WAIT"})
    #: A request's line and headers must be in within this many seconds (read by gunicorn's worker).
    web_header_timeout: int = field(default=10, metadata={"env": "WEB_HEADER_TIMEOUT"})
    max_file_size: int = field(default=10 * 1024 * 1024, metadata={"env": "MAX_FILE_SIZE"})
    max_batch_files: int = field(default=20, metadata={"env": "MAX_BATCH_FILES"})
    #: Multipart parts per request, files and fields together; 0 = MAX_BATCH_FILES + 5 (the fields).
    max_form_parts: int = field(default=0, metadata={"env": "MAX_FORM_PARTS"})
    max_image_pixels: int = field(default=40_000_000, metadata={"env": "MAX_IMAGE_PIXELS"})
    max_image_frames: int = field(default=1000, metadata={"env": "MAX_IMAGE_FRAMES"})
    #: Wall-clock for the header check of all the files of one request together (a real file: ms).
    header_check_ms: int = field(default=2000, metadata={"env": "HEADER_CHECK_MS"})
    #: A local directory (a Path), or object storage as an ``s3://BUCKET/PREFIX`` URL (a str).
    upload_dir: Path | str = field(default=PROJECT_ROOT / "uploads", metadata={"env": "UPLOAD_DIR"})
    #: Where uploads are staged and object-store downloads land when UPLOAD_DIR is s3://: a
    #: directory of imgsvc's own (made 0700), never the shared system temp directory, since
    #: workers and ``flask prune`` delete the stale ``.upload-*``/``.download-*`` files in it.
    #: S3 mode: a submit's PUT gets one try and this many seconds in all, then a 503.
    s3_timeout: int = field(default=5, metadata={"env": "S3_TIMEOUT"})
    #: S3 mode: after the store failed, submits answer 503 at once for this many seconds.
    s3_cooldown: int = field(default=30, metadata={"env": "S3_COOLDOWN"})
    staging_dir: Path = field(default=PROJECT_ROOT / "instance" / "staging", metadata={"env": "STAGING_DIR"})
    secret_key: str = field(default="dev-not-secret", metadata={"env": "SECRET_KEY"})
    rq_dashboard_username: str = field(default="", metadata={"env": "RQ_DASHBOARD_USERNAME"})
    rq_dashboard_password: str = field(default="", metadata={"env": "RQ_DASHBOARD_PASSWORD"})
    api_keys: tuple[str, ...] = field(default=(), metadata={"env": "API_KEYS"})
    rate_limit: str = field(default="", metadata={"env": "RATE_LIMIT"})
    #: Bearer token for /metrics and /readyz's checks; required for them once API_KEYS is set.
    metrics_token: str = field(default="", metadata={"env": "METRICS_TOKEN"})
    #: Jobs and uploaded bytes a day per API key (per address without one); 0 = no quota.
    quota_jobs_per_day: int = field(default=0, metadata={"env": "QUOTA_JOBS_PER_DAY"})
    quota_bytes_per_day: int = field(default=0, metadata={"env": "QUOTA_BYTES_PER_DAY"})
    trusted_proxies: int = field(default=0, metadata={"env": "TRUSTED_PROXIES"})
    webhook_secret: str = field(default="", metadata={"env": "WEBHOOK_SECRET"})
    webhook_allow_private: bool = field(default=False, metadata={"env": "WEBHOOK_ALLOW_PRIVATE"})
    #: One delivery attempt, connect to headers, in seconds (a receiver that drips is cut here).
    webhook_timeout: int = field(default=15, metadata={"env": "WEBHOOK_TIMEOUT"})
    #: Deliveries ``imgsvc webhooks`` runs side by side (one worker process each).
    webhook_workers: int = field(default=4, metadata={"env": "WEBHOOK_WORKERS"})
    #: Deliveries to one host and port queued or running at once; the rest wait their turn.
    webhook_per_host: int = field(default=2, metadata={"env": "WEBHOOK_PER_HOST"})
    #: An ``image_url`` job's fetch (by the worker): seconds for one connect, and for the whole
    #: fetch (every redirect, connect and byte of the body) before it fails as ``fetch_failed``.
    image_url_connect_timeout: int = field(default=5, metadata={"env": "IMAGE_URL_CONNECT_TIMEOUT"})
    image_url_timeout: int = field(default=30, metadata={"env": "IMAGE_URL_TIMEOUT"})
    #: Lets ``image_url`` reach loopback and private addresses: development and tests only. Apart
    #: from WEBHOOK_ALLOW_PRIVATE, so a local webhook receiver never opens the worker's own network.
    image_url_allow_private: bool = field(default=False, metadata={"env": "IMAGE_URL_ALLOW_PRIVATE"})
    # storage
    database_url: str = field(default="", metadata={"env": "DATABASE_URL"})
    # queue
    redis_url: str = field(default="redis://localhost:6379/0", metadata={"env": "REDIS_URL"})
    queue_name: str = field(default="imgsvc", metadata={"env": "RQ_QUEUE"})
    webhook_queue_name: str = field(default="imgsvc-webhooks", metadata={"env": "WEBHOOK_QUEUE"})
    task_max_retries: int = field(default=3, metadata={"env": "TASK_MAX_RETRIES"})
    task_retry_delay: int = field(default=60, metadata={"env": "TASK_RETRY_DELAY"})
    job_timeout: int = field(default=300, metadata={"env": "JOB_TIMEOUT"})
    result_ttl: int = field(default=7 * 24 * 3600, metadata={"env": "RESULT_TTL"})
    upload_retention: int = field(default=7 * 24 * 3600, metadata={"env": "UPLOAD_RETENTION"})
    worker_count: int = field(default=1, metadata={"env": "WORKER_COUNT"})
    batch_size: int = field(default=1, metadata={"env": "BATCH_SIZE"})
    batch_wait_ms: int = field(default=0, metadata={"env": "BATCH_WAIT_MS"})
    stale_after: int = field(default=600, metadata={"env": "STALE_AFTER"})
    worker_ttl: int = field(default=30, metadata={"env": "WORKER_TTL"})
    # vision
    vision_model: str = field(default="auto", metadata={"env": "VISION_MODEL"})
    caption_model: str = field(default=DEFAULT_CAPTION_MODEL, metadata={"env": "CAPTION_MODEL"})
    fetch_captioner: str = field(default="auto", metadata={"env": "FETCH_CAPTIONER"})
    device: str = field(default="auto", metadata={"env": "DEVICE"})
    # Half precision is what a GPU runs a captioner at; a CPU has no fast float16 path.
    dtype: str = field(default="auto", metadata={"env": "DTYPE"})
    max_new_tokens: int = field(default=30, metadata={"env": "MAX_NEW_TOKENS"})
    # Long answers: Florence-2's detailed captions, objects and text, a chat VLM's answer to a prompt.
    max_answer_tokens: int = field(default=256, metadata={"env": "MAX_ANSWER_TOKENS"})
    quantize: str = field(default="", metadata={"env": "QUANTIZE"})
    max_image_side: int = field(default=1024, metadata={"env": "MAX_IMAGE_SIDE"})
    decode_timeout: int = field(default=10, metadata={"env": "DECODE_TIMEOUT"})
    decode_memory_mb: int = field(default=1024, metadata={"env": "DECODE_MEMORY_MB"})
    decode_processes: int = field(default=0, metadata={"env": "DECODE_PROCESSES"})
    ocr: str = field(default="auto", metadata={"env": "OCR"})
    models_dir: Path = field(default=PROJECT_ROOT / "instance" / "models", metadata={"env": "MODELS_DIR"})
    torch_threads: int = field(default=0, metadata={"env": "TORCH_THREADS"})
    log_level: str = field(default="INFO", metadata={"env": "LOG_LEVEL"})
    # text for a person at a terminal (make run); json for a log collector (compose's production profile).
    log_format: str = field(default="text", metadata={"env": "LOG_FORMAT"})

    def __post_init__(self) -> None:
        # Settings(upload_dir="some/dir") is a directory, exactly as UPLOAD_DIR=some/dir is.
        if isinstance(self.upload_dir, str) and "://" not in self.upload_dir:
            object.__setattr__(self, "upload_dir", Path(self.upload_dir))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every field from its env variable; ``overrides`` win (tests use them)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is None or raw == "":
                continue
            values[f.name] = _convert(f.type, raw, f.metadata["env"])
        settings = cls(**values)
        return settings.with_(**overrides) if overrides else settings.validated()

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes).validated()

    def validated(self) -> Settings:
        for name in POSITIVE:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name.upper()} must be positive")
        if self.task_max_retries < 0 or self.task_retry_delay < 0:
            raise ConfigError("TASK_MAX_RETRIES and TASK_RETRY_DELAY must be >= 0")
        if self.max_wait < 0:
            raise ConfigError("MAX_WAIT must be >= 0 (0: Prefer: wait is never applied)")
        if self.quota_jobs_per_day < 0 or self.quota_bytes_per_day < 0:
            raise ConfigError("QUOTA_JOBS_PER_DAY and QUOTA_BYTES_PER_DAY must be >= 0 (0: no quota)")
        if self.max_form_parts < 0:
            raise ConfigError("MAX_FORM_PARTS must be >= 0 (0: MAX_BATCH_FILES + 5)")
        if self.trusted_proxies < 0:
            raise ConfigError("TRUSTED_PROXIES must be >= 0")
        if self.decode_processes < 0:
            raise ConfigError("DECODE_PROCESSES must be >= 0 (0: one per 4 cores a worker has, at most 4)")
        if self.log_format not in {"text", "json"}:
            raise ConfigError("LOG_FORMAT must be text or json")
        if self.ocr not in {"auto", "on", "off"}:
            raise ConfigError("OCR must be auto, on or off")
        if self.fetch_captioner not in {"auto", "off"}:
            raise ConfigError("FETCH_CAPTIONER must be auto or off")
        if self.dtype not in {"auto", "float32", "float16", "bfloat16"}:
            raise ConfigError("DTYPE must be auto, float32, float16 or bfloat16")
        if self.quantize not in {"", "int8"}:
            raise ConfigError("QUANTIZE must be empty or int8")
        if isinstance(self.upload_dir, str):
            parse_s3_url(self.upload_dir)
        return self

    @property
    def form_parts_limit(self) -> int:
        """MAX_FORM_PARTS, or room for a full batch and every form field (MAX_BATCH_FILES + 5)."""
        return self.max_form_parts or self.max_batch_files + 5

    @property
    def sqlalchemy_url(self) -> str:
        """DATABASE_URL, or a SQLite file under instance/ (flaskr's convention)."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{PROJECT_ROOT / 'instance' / 'imgsvc.sqlite'}"


def _convert(kind: Any, raw: str, env: str) -> Any:
    kind = str(kind)
    try:
        if kind == "int":
            return int(raw)
        if kind == "bool":
            return _bool(raw)
        if kind == "Path":
            return Path(raw).expanduser().resolve()
        if kind == "Path | str":
            return raw if "://" in raw else Path(raw).expanduser().resolve()
        if kind == "tuple[str, ...]":
            return _list(raw)
    except ValueError as exc:
        raise ConfigError(f"{env}={raw!r}: {exc}") from exc
    return raw


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ("bucket", "some/prefix/"); the prefix may be empty.

    s3:// is the only URL UPLOAD_DIR takes: any other scheme would silently become a local dir.
    """
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(f"UPLOAD_DIR must be a directory or s3://BUCKET/PREFIX, not {url!r}")
    prefix = parts.path.strip("/")
    return parts.netloc, f"{prefix}/" if prefix else ""


#: Where ``create_app`` keeps the :class:`Settings` in ``app.config``.
SETTINGS_KEY = "IMGSVC"


def app_settings(app: Flask | None = None) -> Settings:
    """The :class:`Settings` of ``app``, else of the current app (a request, a CLI command or the
    worker's app context): the one way in, typed, instead of ``current_app.config[...]``."""
    if app is None:
        from flask import current_app  # here, not at the top: see the TYPE_CHECKING import

        app = current_app
    return app.config[SETTINGS_KEY]
