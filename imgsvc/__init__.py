"""imgsvc: an asynchronous image-description service (Flask + RQ + transformers)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgsvc.config import SETTINGS_KEY, Settings

if TYPE_CHECKING:  # the vision side imports this package too, and must not pull in Flask
    from flask import Flask


def create_app(settings: Settings | None = None, **overrides: Any) -> Flask:
    """Build the web app; the worker builds the same app once and keeps it for its life.

    Nothing connects at build time: Redis and the database are reached on first use,
    so the app starts even while they are still coming up.
    """
    from flask import Flask
    from werkzeug.middleware.proxy_fix import ProxyFix

    from imgsvc import logs
    from imgsvc.metrics import RedisMetrics
    from imgsvc.queue.changes import install_change_feed
    from imgsvc.queue.connection import job_queue, redis_connection
    from imgsvc.queue.reaper import reap_command
    from imgsvc.storage import db
    from imgsvc.storage.retention import prune_command
    from imgsvc.storage.stores import open_upload_store
    from imgsvc.storage.uploads import init_uploads_command
    from imgsvc.web import register_web
    from imgsvc.web.auth import init_rate_limits

    settings = settings or Settings.from_env()
    if overrides:
        settings = settings.with_(**overrides)
    logs.configure(settings.log_level, settings.log_format)

    app = Flask(__name__, instance_relative_config=True)
    if settings.trusted_proxies:  # the client's address, scheme and host as the proxies saw them
        hops = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)
    app.config.update(
        **{SETTINGS_KEY: settings},
        SECRET_KEY=settings.secret_key,
        SQLALCHEMY_DATABASE_URI=settings.sqlalchemy_url,
        # hide_parameters: SQL errors reach logs, and their parameters are users' data
        # (callback URLs, owner hashes, descriptions). A pre-ping (a round trip per request)
        # finds server connections that dropped; a SQLite file has none to drop.
        SQLALCHEMY_ENGINE_OPTIONS={
            "pool_pre_ping": not settings.sqlalchemy_url.startswith("sqlite"),
            "hide_parameters": True,
        },
        # Multipart framing adds a little; the exact file limit is enforced while streaming.
        MAX_CONTENT_LENGTH=settings.max_file_size + 64 * 1024,
    )
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)

    app.json.sort_keys = False  # keep each response in the order its code builds it
    app.redis = redis_connection(settings)
    app.task_queue = job_queue(settings, app.redis)
    app.uploads = open_upload_store(settings)
    app.metrics = RedisMetrics(app.redis, settings.queue_name)

    db.init_app(app)
    install_change_feed()
    init_rate_limits(app, settings)
    app.cli.add_command(reap_command)
    app.cli.add_command(prune_command)
    app.cli.add_command(init_uploads_command)
    register_web(app)
    return app
