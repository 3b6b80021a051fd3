"""gunicorn settings for ``gunicorn -c gunicorn.conf.py wsgi:app``, all from the environment."""

import os

port = os.environ.get("WEB_PORT", "8000")
bind = f"0.0.0.0:{port}"
workers = int(os.environ.get("WEB_WORKERS", "2"))
threads = int(os.environ.get("WEB_THREADS", "4"))
worker_class = "gthread"
# Uploads are streamed to disk and the model runs elsewhere: a request is never long.
timeout = 30
graceful_timeout = 20
keepalive = 5
max_requests = 5000
max_requests_jitter = 500
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
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
