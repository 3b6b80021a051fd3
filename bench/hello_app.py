"""The baseline of bench/api_load.py: a bare Flask app run under imgsvc's own gunicorn config.

``POST /api/v1/submit`` parses the same multipart upload, as any upload endpoint must, and
answers at once; the difference to imgsvc's submit is imgsvc's own work (sniffing, storing,
the SQL row, the enqueue, logs and metrics).

    gunicorn -c gunicorn.conf.py bench.hello_app:app
"""

from __future__ import annotations

from flask import Flask, request

app = Flask(__name__)


@app.get("/")
def hello() -> dict[str, str]:
    return {"hello": "world"}


@app.post("/api/v1/submit")
def submit() -> tuple[dict[str, int], int]:
    return {"bytes": len(request.files["file"].read())}, 202
