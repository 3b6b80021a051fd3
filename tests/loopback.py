"""The suite's network fence: a Python process may open connections to loopback only.

Installed for the pytest process (``tests/conftest.py``) and, through ``tests/loopback_site``
on PYTHONPATH, for the servers and workers the security suite starts, so a delivery to a
public host would fail at ``connect()`` even if a test let one through. (DNS lookups and C
clients such as psycopg2 do not pass through this hook; tests never give them other hosts.)
"""

from __future__ import annotations

import ipaddress
import sys

from imgsvc.config import PROJECT_ROOT

#: prepend to a subprocess's PYTHONPATH to fence it in too
SITE_DIR = PROJECT_ROOT / "tests" / "loopback_site"
_installed = False


def _loopback_only(event: str, args: tuple) -> None:
    if event != "socket.connect":
        return
    address = args[1]
    if not isinstance(address, tuple):
        return  # a Unix socket path
    host = str(address[0])
    try:
        allowed = ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        allowed = host == "localhost"
    if not allowed:
        raise ConnectionRefusedError(f"tests may connect to loopback only, not to {host}")


def install() -> None:
    """Idempotent: audit hooks cannot be removed, so add this one once per process."""
    global _installed
    if not _installed:
        sys.addaudithook(_loopback_only)
        _installed = True
