"""rq-dashboard mounted at /rq, behind HTTP basic auth when credentials are configured.

rq-dashboard ships no authentication; an open dashboard lets anyone delete or requeue jobs.
"""

from __future__ import annotations

import hmac

from flask import Flask, Response, request

from imgsvc.config import Settings


def mount_dashboard(app: Flask, settings: Settings) -> None:
    import rq_dashboard

    app.config.from_object(rq_dashboard.default_settings)
    app.config["RQ_DASHBOARD_REDIS_URL"] = settings.redis_url
    rq_dashboard.web.setup_rq_connection(app)
    app.register_blueprint(rq_dashboard.blueprint, url_prefix="/rq")

    if settings.rq_dashboard_username and settings.rq_dashboard_password:
        expected = (settings.rq_dashboard_username, settings.rq_dashboard_password)

        @app.before_request
        def _require_basic_auth() -> Response | None:
            if request.blueprint != "rq_dashboard":
                return None
            auth = request.authorization
            if auth and _same(auth.username, expected[0]) and _same(auth.password, expected[1]):
                return None
            return Response(
                "authentication required", 401, {"WWW-Authenticate": 'Basic realm="imgsvc rq-dashboard"'}
            )


def _same(given: str | None, expected: str) -> bool:
    return hmac.compare_digest((given or "").encode(), expected.encode())
