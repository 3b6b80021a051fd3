"""Liveness and readiness for load balancers and orchestrators."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError
from sqlalchemy import text

from imgsvc.config import app_settings
from imgsvc.metrics import registry_for
from imgsvc.queue.connection import live_workers, running_model
from imgsvc.storage.db import db

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """The process answers; says nothing about its dependencies on purpose."""
    return jsonify({"status": "ok"})


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text format; workers' figures arrive through Redis."""
    settings = app_settings()
    registry = registry_for(current_app.metrics, current_app.task_queue, settings.worker_ttl)
    # content_type, not mimetype: the constant already carries its charset, and Flask would add another.
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Ready = database, Redis and at least one live worker (model loaded, heartbeat fresh)."""
    checks: dict[str, object] = {}
    ok = True
    try:
        db.session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
        ok = False
    try:
        current_app.redis.ping()
        checks["redis"] = "ok"
        workers = live_workers(current_app.task_queue, app_settings().worker_ttl)
        checks["workers"] = len(workers)
        checks["queue_depth"] = current_app.task_queue.count
        model = running_model(current_app.redis, app_settings())
        checks["model"] = model["name"] if model else None
        if model and "components" in model:
            # A composed describer (the offline scene one): what runs, and what it runs without.
            checks["model_components"] = {"running": model["components"], "missing": model["missing"]}
        if not workers:
            ok = False
    except RedisError as exc:
        checks["redis"] = f"error: {type(exc).__name__}"
        checks["workers"] = 0
        ok = False
    body = {"status": "ready" if ok else "not ready", "checks": checks}
    return jsonify(body), 200 if ok else 503
