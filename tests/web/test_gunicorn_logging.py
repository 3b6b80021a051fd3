"""gunicorn builds no access-log line while imgsvc's configuration turns its access log off."""

from __future__ import annotations

from gunicorn.config import Config

from imgsvc.web.gunicorn_logging import AccessOffLogger


def config(**settings) -> Config:
    cfg = Config()
    cfg.set("logconfig_dict", {"version": 1, "disable_existing_loggers": False})
    for name, value in settings.items():
        cfg.set(name, value)
    return cfg


def test_with_accesslog_off_no_line_is_built_even_with_a_logconfig_dict():
    logger = AccessOffLogger(config())
    built = []
    logger.atoms = lambda *args: built.append(args) or {}
    logger.access(None, None, {}, None)
    assert not logger.access_log_enabled and built == []


def test_an_accesslog_still_turns_it_on():
    assert AccessOffLogger(config(accesslog="-")).access_log_enabled
