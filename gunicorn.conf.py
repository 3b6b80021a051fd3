"""gunicorn settings for ``gunicorn -c gunicorn.conf.py wsgi:app``, all from the environment."""

import os

# Defaults as in imgsvc.config.Settings: loopback unless WEB_HOST says otherwise (the image sets 0.0.0.0).
_host = os.environ.get("WEB_HOST") or "127.0.0.1"
port = os.environ.get("WEB_PORT") or "8000"
bind = f"[{_host}]:{port}" if ":" in _host else f"{_host}:{port}"
workers = int(os.environ.get("WEB_WORKERS", "2"))
threads = int(os.environ.get("WEB_THREADS", "4"))
# gthread, except that a request head is gathered without holding a thread, and one not in
# within WEB_HEADER_TIMEOUT seconds is dropped: slowloris straight at gunicorn (make run).
worker_class = "imgsvc.web.gunicorn_worker.HeadFirstWorker"
# Uploads are streamed to disk and the model runs elsewhere: a request is never long.
timeout = 30
graceful_timeout = 20
keepalive = 5
max_requests = 5000
max_requests_jitter = 500
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
# No access log: the app logs every request itself, once, with its job_id (imgsvc/web); and no
# access-log line built per request for nobody (gunicorn builds one whenever logconfig_dict is set).
accesslog = None
logger_class = "imgsvc.web.gunicorn_logging.AccessOffLogger"
errorlog = "-"
# gunicorn's own lines (start-up, worker exits, timeouts) in LOG_FORMAT, like every other process's.
_formatter = "imgsvc.logs." + ("JsonFormatter" if os.environ.get("LOG_FORMAT") == "json" else "TextFormatter")
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"console": {"()": _formatter}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "console", "stream": "ext://sys.stderr"}
    },
    "root": {"level": "WARNING", "handlers": ["console"]},
    "loggers": {
        "gunicorn.error": {"level": loglevel.upper(), "handlers": ["console"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": False},
    },
}
# Werkzeug spools uploads over 500 KB to a temp file here instead of RAM.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
# gunicorn 25.1+ opens a control socket (for gunicornc) at one path per user by default
# ($XDG_RUNTIME_DIR/gunicorn.ctl or ~/.gunicorn/gunicorn.ctl): a second instance on the host
# would replace the first one's socket and delete it on exit. One per instance and port instead,
# in Flask's instance folder (a volume in the image): gunicornc -s instance/gunicorn-8000.ctl
control_socket = os.path.join(os.path.dirname(os.path.abspath(__file__)), "instance", f"gunicorn-{port}.ctl")


def post_worker_init(worker):
    """The app is loaded: freeze what exists (gc.freeze), so the garbage collector's passes during
    requests scan only what requests allocate, not the ~100,000 objects of Flask, SQLAlchemy and
    the app (about 5 % of a submit's CPU otherwise)."""
    import gc

    gc.freeze()
    # Request counts and process figures reach Redis (and /metrics) even while this process is idle.
    # Only imgsvc's app counts them: compose's dashboard service runs another app with this file.
    http_metrics = getattr(worker.wsgi, "extensions", {}).get("imgsvc.http_metrics")
    if http_metrics is not None:
        http_metrics.start()
