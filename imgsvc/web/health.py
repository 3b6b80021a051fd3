"""Liveness and readiness for load balancers and orchestrators, and metrics for operators.

Who may read what: ``/healthz`` and the status of ``/readyz`` (ready or not, 200 or 503) are
open, because probes carry no secret. The internals (``/metrics``, and ``/readyz``'s ``checks``:
the model, the queue depth, the workers) are open only on a deployment without API_KEYS and
METRICS_TOKEN; with either set they need ``Authorization: Bearer METRICS_TOKEN``. An API key
does not open them: clients are not operators.
"""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, current_app, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError
from sqlalchemy import text

from imgsvc.config import app_settings
from imgsvc.errors import Unauthorized
from imgsvc.metrics import registry_for
from imgsvc.queue.connection import live_workers, running_model
from imgsvc.storage.db import db
from imgsvc.web.auth import presented_key

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """The process answers; says nothing about its dependencies on purpose."""
    return jsonify({"status": "ok"})


def operator() -> bool:
    """Whether this request may see the service's internals (see the module's docstring)."""
    settings = app_settings()
    if not settings.metrics_token:
        return not settings.api_keys
    given = presented_key()
    # Compare bytes: compare_digest refuses str with non-ASCII characters.
    return given is not None and hmac.compare_digest(given.encode(), settings.metrics_token.encode())


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text format; workers' figures arrive through Redis."""
    settings = app_settings()
    if not operator():
        raise Unauthorized(
            "metrics need METRICS_TOKEN (Authorization: Bearer TOKEN)"
            + ("" if settings.metrics_token else "; this deployment has API keys and no METRICS_TOKEN set")
        )
    current_app.extensions["imgsvc.http_metrics"].flush()  # this process's own counts, up to now
    registry = registry_for(current_app.metrics, current_app.task_queue, settings.worker_ttl)
    # content_type, not mimetype: the constant already carries its charset, and Flask would add another.
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Ready = database, Redis and at least one live worker (model loaded, heartbeat fresh).

    The status is for anyone; the ``checks`` only for an :func:`operator`.
    """
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
    body: dict[str, object] = {"status": "ready" if ok else "not ready"}
    if operator():
        body["checks"] = checks
    return jsonify(body), 200 if ok else 503
