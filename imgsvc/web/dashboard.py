"""rq-dashboard at /rq, only behind HTTP basic auth and a same-origin check.

rq-dashboard ships no authentication and no CSRF protection, and it can empty queues,
delete and requeue jobs, and list every key's job ids. So it is never open by accident:
without RQ_DASHBOARD_USERNAME and RQ_DASHBOARD_PASSWORD it is not mounted at all (404),
and API keys change nothing about that. With them, every request needs the credentials,
and a request that changes state must also come from a page of this very host (its
Origin, or else its Referer, names our host): a browser that remembers the credentials
cannot be made to empty a queue by another site's form or image tag.

Wrong credentials are counted per client address in the rate limits' Redis storage (the one
Flask-Limiter uses for the API): after FAILED_LOGINS in a minute the address gets 429, even with
the right password, so the password cannot be guessed at request speed, nor confirmed by a
different answer. A request with no credentials at all (a browser's first visit) is not counted.
"""

from __future__ import annotations

import hmac
import math
import time
from typing import NoReturn
from urllib.parse import urlsplit

from flask import Flask, request
from flask_limiter.util import get_remote_address
from limits import parse
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter

from imgsvc.config import Settings
from imgsvc.errors import Forbidden, NotFound, TooManyRequests, Unauthorized
from imgsvc.web.auth import LIMITS_STORAGE_OPTIONS, limits_prefix

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: rq-dashboard views that change state even on GET (``/requeue/<queue>`` answers GET too).
STATE_CHANGING_VIEWS = frozenset({"rq_dashboard.requeue_all"})
#: Wrong username/password pairs one client address may send before it must wait.
FAILED_LOGINS = parse("10/minute")


class DashboardAuthRequired(Unauthorized):
    headers = {"WWW-Authenticate": 'Basic realm="imgsvc rq-dashboard"'}


#: What /rq answers (404) while the dashboard is off, instead of a 404 that says "check your spelling".
DASHBOARD_OFF = (
    "the rq-dashboard is off: set RQ_DASHBOARD_USERNAME and RQ_DASHBOARD_PASSWORD to mount it at /rq "
    "(behind basic auth)"
)


def _say_the_dashboard_is_off(app: Flask) -> None:
    def dashboard_off(path: str = "") -> NoReturn:
        raise NotFound(DASHBOARD_OFF)

    for rule in ("/rq", "/rq/", "/rq/<path:path>"):
        app.add_url_rule(
            rule, "dashboard_off", dashboard_off, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]
        )


def mount_dashboard(app: Flask, settings: Settings) -> bool:
    """Mount rq-dashboard at /rq when credentials are configured; say whether it was."""
    if not (settings.rq_dashboard_username and settings.rq_dashboard_password):
        _say_the_dashboard_is_off(app)
        return False
    import rq_dashboard

    app.config.from_object(rq_dashboard.default_settings)
    app.config["RQ_DASHBOARD_REDIS_URL"] = settings.redis_url
    rq_dashboard.web.setup_rq_connection(app)
    app.register_blueprint(rq_dashboard.blueprint, url_prefix="/rq")
    expected = (settings.rq_dashboard_username, settings.rq_dashboard_password)
    # The storage and key prefix of the API's limits, so every process shares the count.
    failures = FixedWindowRateLimiter(storage_from_string(settings.redis_url, **LIMITS_STORAGE_OPTIONS))
    prefix = limits_prefix(settings)

    @app.before_request
    def _guard_dashboard() -> None:
        if request.blueprint != "rq_dashboard":
            return
        client = (prefix, "dashboard-login-failures", get_remote_address())
        if not failures.test(FAILED_LOGINS, *client):
            reset = failures.get_window_stats(FAILED_LOGINS, *client).reset_time
            raise TooManyRequests(
                "too many failed dashboard logins from this address; try again later",
                retry_after=max(1, math.ceil(reset - time.time())),
            )
        auth = request.authorization
        if not (auth and _same(auth.username, expected[0]) and _same(auth.password, expected[1])):
            if auth is not None:
                failures.hit(FAILED_LOGINS, *client)
            raise DashboardAuthRequired("the dashboard needs its username and password (basic auth)")
        changes_state = request.method not in SAFE_METHODS or request.endpoint in STATE_CHANGING_VIEWS
        if changes_state and not same_origin():
            raise Forbidden("cross-site request refused: Origin or Referer must name this host")

    return True


def same_origin() -> bool:
    """The request's Origin (or, lacking one, its Referer) names the host it was sent to."""
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if not source or source == "null":
        return False
    try:
        parts = urlsplit(source)
    except ValueError:
        return False
    return parts.scheme in {"http", "https"} and parts.netloc.lower() == request.host.lower()


def _same(given: str | None, expected: str) -> bool:
    return hmac.compare_digest((given or "").encode(), expected.encode())


def create_dashboard_app() -> Flask:
    """Just the guarded dashboard, for compose's dashboard service (gunicorn on :9181).

    Refuses to build without credentials, so the service cannot start open.
    """
    from imgsvc.web import no_sniffing, register_errors

    settings = Settings.from_env()
    app = Flask(__name__)
    if not mount_dashboard(app, settings):
        raise SystemExit("set RQ_DASHBOARD_USERNAME and RQ_DASHBOARD_PASSWORD to run the dashboard")
    register_errors(app)
    app.after_request(no_sniffing)
    return app
