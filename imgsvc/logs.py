"""One JSON line per event, so a job can be followed across web and worker by its job_id.

Our own loggers (``imgsvc.*``) and RQ's (``rq.*``) write through the same JSON handler;
gunicorn's own lines use :class:`JsonFormatter` through ``gunicorn.conf.py``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
# RQ colours queue names and job descriptions when its stdout is a terminal.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: The loggers :func:`configure` sends through the JSON handler.
LOGGERS = ("imgsvc", "rq")


class JsonFormatter(logging.Formatter):
    converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": _ANSI.sub("", record.getMessage()),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: str = "INFO") -> None:
    """Idempotent: the app factory runs once per test, and must not stack handlers.

    RQ adds its own plain-text handlers only where a logger has none in its hierarchy,
    so a handler on ``rq`` turns every RQ line into JSON too.
    """
    handler: logging.Handler | None = None
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(level.upper())
        if any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
            continue
        if handler is None:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
        logger.propagate = False
