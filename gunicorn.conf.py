"""gunicorn settings for ``gunicorn -c gunicorn.conf.py wsgi:app``, all from the environment."""

import os

bind = f"0.0.0.0:{os.environ.get('WEB_PORT', '8000')}"
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
