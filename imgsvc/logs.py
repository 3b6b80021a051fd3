"""One line per event, with its job_id, so a job can be followed across web and worker.

``LOG_FORMAT=text`` (the default, for a person at a terminal) writes ``time level logger: event``
and the fields as ``key=value``; ``LOG_FORMAT=json`` (compose's production profile) one JSON object
per line. Our own loggers (``imgsvc.*``) and RQ's (``rq.*``) write through the same handler;
gunicorn's own lines use the same formatters through ``gunicorn.conf.py``.
"""

from __future__ import annotations

import json
import logging
import os
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


class TextFormatter(logging.Formatter):
    """For a person: ``12:03:07 INFO  imgsvc.jobs: job done job_id=... duration_ms=41``."""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in _STANDARD)
        line = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} {record.name}: "
        line += _ANSI.sub("", record.getMessage()) + (f" {fields}" if fields else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


#: RQ's routine bookkeeping, said at INFO every few seconds by an idle worker: DEBUG here.
_ROUTINE_RQ = ("Worker %s: cleaning registries", "Worker %s: cleaning group registries")


class _RoutineToDebug(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("rq") and str(record.msg).startswith(_ROUTINE_RQ):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def formatter(log_format: str | None = None) -> logging.Formatter:
    """The formatter LOG_FORMAT names (read from the environment when not given)."""
    chosen = log_format or os.environ.get("LOG_FORMAT") or "text"
    return JsonFormatter() if chosen == "json" else TextFormatter()


def configure(level: str = "INFO", log_format: str | None = None) -> None:
    """Idempotent: the app factory runs once per test, and must not stack handlers.

    RQ adds its own plain-text handlers only where a logger has none in its hierarchy,
    so a handler on ``rq`` turns every RQ line into this format too.
    """
    # A line that cannot be written is dropped, not reported with a traceback on stderr: RQ's
    # worker pool logs from its SIGINT handler, which can interrupt this handler mid-write (a
    # reentrant write to stderr) and then printed "--- Logging error ---" among the log lines.
    logging.raiseExceptions = False
    handler: logging.Handler | None = None
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(level.upper())
        ours = [h for h in logger.handlers if any(isinstance(f, _RoutineToDebug) for f in h.filters)]
        if ours:
            for existing in ours:  # a later call may name another format: the last one wins
                existing.setFormatter(formatter(log_format))
            continue
        if handler is None:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(formatter(log_format))
            handler.addFilter(_RoutineToDebug())
        logger.addHandler(handler)
        logger.propagate = False
