"""The private gunicorn names imgsvc's web worker relies on (see imgsvc/web/gunicorn_worker.py)."""

from __future__ import annotations

import inspect
import socket

from gunicorn.http.parser import RequestParser
from gunicorn.workers import gthread

from imgsvc.config import PROJECT_ROOT
from imgsvc.web.gunicorn_worker import HeadFirstWorker


def test_gthread_still_defers_and_its_parser_still_unreads():
    assert "result is _DEFER" in inspect.getsource(gthread.ThreadWorker.finish_request)
    assert "conn.initialized" in inspect.getsource(gthread.ThreadWorker.handle)
    left, right = socket.socketpair()
    with left, right:
        parser = RequestParser(type("Cfg", (), {})(), left, ("127.0.0.1", 1))
        parser.unreader.unread(b"GET / HTTP/1.1\r\n")
        assert parser.unreader.read() == b"GET / HTTP/1.1\r\n"  # no read from the socket


def test_gunicorn_conf_runs_the_head_first_worker():
    text = (PROJECT_ROOT / "gunicorn.conf.py").read_text()
    assert 'worker_class = "imgsvc.web.gunicorn_worker.HeadFirstWorker"' in text
    assert issubclass(HeadFirstWorker, gthread.ThreadWorker)


def test_the_dashboard_service_boots_with_the_shared_gunicorn_conf(monkeypatch):
    """compose's dashboard runs gunicorn (reading gunicorn.conf.py) on the standalone dashboard app,
    which counts no HTTP metrics: booting its worker must not fail (the container check caught it)."""
    import runpy
    import types

    from imgsvc.web.dashboard import create_dashboard_app

    monkeypatch.setenv("RQ_DASHBOARD_USERNAME", "ops")
    monkeypatch.setenv("RQ_DASHBOARD_PASSWORD", "a long enough password")
    conf = runpy.run_path(str(PROJECT_ROOT / "gunicorn.conf.py"))
    dashboard = create_dashboard_app()
    conf["post_worker_init"](types.SimpleNamespace(wsgi=dashboard))  # no KeyError
