"""gunicorn's logger, without an access-log line built for every request that nobody writes.

imgsvc turns gunicorn's access log off (``accesslog = None``: the app logs every request once,
with its job id) but configures gunicorn's own lines through ``logconfig_dict``, and gunicorn
takes any ``logconfig_dict`` to mean "access log on": it then builds the line's atoms for every
request and hands them to a logger with no handler (about 2 % of a submit's CPU).
"""

from __future__ import annotations

from gunicorn.glogging import Logger


class AccessOffLogger(Logger):
    """gunicorn's logger; its access log is on only where ``accesslog`` names a place for it."""

    @property
    def access_log_enabled(self) -> bool:
        return bool(self.cfg.accesslog)
