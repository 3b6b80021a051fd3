"""Log lines: readable by a person by default, JSON for a collector, routine chatter at DEBUG."""

from __future__ import annotations

import json
import logging

import pytest

from imgsvc import logs


class Captured:
    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys, self.text = capsys, ""

    def getvalue(self) -> str:
        self.text += self.capsys.readouterr().err
        return self.text


@pytest.fixture()
def captured(monkeypatch, capsys):
    """imgsvc's and RQ's loggers without handlers, to be configured by the test (onto its stderr).

    Levels go back through ``setLevel``, which also clears the loggers' caches of enabled levels;
    ``rq.worker``'s own level (an RQ worker earlier in the session sets one) is left to ``rq``'s.
    """
    levels = {name: logging.getLogger(name).level for name in (*logs.LOGGERS, "rq.worker")}
    for name in logs.LOGGERS:
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "handlers", [])
        monkeypatch.setattr(logger, "propagate", logger.propagate)
    logging.getLogger("rq.worker").setLevel(logging.NOTSET)
    yield Captured(capsys)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_the_default_is_one_readable_line_per_event_with_its_fields(captured, monkeypatch):
    monkeypatch.delenv("LOG_FORMAT", raising=False)
    logs.configure("INFO")
    logging.getLogger("imgsvc.jobs").info("job done", extra={"job_id": "ab12", "duration_ms": 41})
    (line,) = captured.getvalue().splitlines()
    assert line.endswith(" INFO    imgsvc.jobs: job done job_id=ab12 duration_ms=41")
    assert not line.startswith("{")


def test_log_format_json_writes_one_object_per_line(captured):
    logs.configure("INFO", "json")
    logging.getLogger("imgsvc.jobs").info("job done", extra={"job_id": "ab12"})
    record = json.loads(captured.getvalue())
    assert record["logger"] == "imgsvc.jobs" and record["event"] == "job done" and record["job_id"] == "ab12"


def test_a_later_call_switches_the_format_without_a_second_handler(captured):
    logs.configure("INFO", "json")
    logs.configure("INFO", "text")
    logging.getLogger("imgsvc.web").info("request")
    assert len(captured.getvalue().splitlines()) == 1 and "imgsvc.web: request" in captured.getvalue()


def test_rqs_registry_cleaning_is_debug_chatter(captured):
    logs.configure("INFO", "text")
    rq = logging.getLogger("rq.worker")
    rq.info("Worker %s: cleaning registries for queue: %s", "w1", "imgsvc-webhooks")
    rq.info("Worker %s: started with PID %d", "w1", 42)
    assert captured.getvalue().count("\n") == 1 and "started with PID 42" in captured.getvalue()
    logs.configure("DEBUG", "text")
    rq.info("Worker %s: cleaning registries for queue: %s", "w1", "imgsvc-webhooks")
    assert "DEBUG   rq.worker: Worker w1: cleaning registries" in captured.getvalue()


def test_status_polls_and_health_checks_are_debug_and_changes_info(captured, tmp_path):
    from imgsvc import create_app
    from imgsvc.config import Settings

    app = create_app(
        Settings.from_env({}, database_url=f"sqlite:///{tmp_path / 'db.sqlite'}", log_format="text")
    )
    client = app.test_client()
    unknown = "0" * 32
    client.get("/healthz")
    client.get(f"/api/v1/status/{unknown}")
    client.get(f"/api/v1/result/{unknown}")
    client.delete(f"/api/v1/jobs/{unknown}")
    lines = [line for line in captured.getvalue().splitlines() if "imgsvc.web: request" in line]
    assert len(lines) == 1 and "method=DELETE" in lines[0]  # the polls said nothing at INFO
    logging.getLogger("imgsvc").setLevel("DEBUG")
    client.get("/healthz")
    assert "DEBUG   imgsvc.web: request method=GET path=/healthz status=200" in captured.getvalue()
