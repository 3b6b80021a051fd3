"""The production front: a real nginx, rendered from deploy/nginx.conf.template, before a real gunicorn.

The security review's slowloris (16 sockets sending headers with Content-Length: 1000000,
then a byte every few seconds) kept /healthz from answering for a whole minute, because
gunicorn faced the clients itself. And behind a proxy every client has the proxy's address,
so a per-client rate limit is one bucket for everybody unless TRUSTED_PROXIES says how many
X-Forwarded-For hops to believe.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from imgsvc.config import PROJECT_ROOT, Settings
from tests.conftest import TEST_REDIS_URL, empty_owned_db
from tests.integration.procs import NGINX, free_port, kill_group, start_nginx, wait_until

needs_nginx = pytest.mark.skipif(
    not os.access(NGINX, os.X_OK), reason="nginx is not installed (.ci/run installs it with apt)"
)
RATE_LIMIT = "3/minute"


@dataclass
class Front:
    proxy_port: int
    tmp: Path


@pytest.fixture(scope="module")
def front(tmp_path_factory, owned_redis) -> Iterator[Front]:
    tmp = tmp_path_factory.mktemp("front")
    empty_owned_db(owned_redis)  # the suite's DB, checked and marked as its own
    web_port, proxy_port = free_port(), free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HF_HUB_OFFLINE": "1",
        "REDIS_URL": TEST_REDIS_URL,
        "DATABASE_URL": f"sqlite:///{tmp / 'web.sqlite'}",
        "UPLOAD_DIR": str(tmp / "uploads"),
        "RATE_LIMIT": RATE_LIMIT,
        "TRUSTED_PROXIES": "1",
        "WEB_WORKERS": "1",  # 4 threads: 16 slow clients would hold every one without the proxy
        "LOG_LEVEL": "WARNING",
    }
    command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{web_port}"]
    command += ["--no-control-socket", "wsgi:app"]
    web_log = (tmp / "web.log").open("wb")
    web = subprocess.Popen(
        command, cwd=PROJECT_ROOT, env=env, stdout=web_log, stderr=subprocess.STDOUT, start_new_session=True
    )

    nginx = start_nginx(tmp, proxy_port, web_port)
    try:
        up = wait_until(lambda: get(proxy_port, "/healthz") == 200, timeout=60, interval=0.2)
        assert up, (tmp / "web.log").read_text()[-3000:] + (tmp / "error.log").read_text()[-3000:]
        yield Front(proxy_port, tmp)
    finally:
        kill_group(nginx, signal.SIGTERM)
        kill_group(web, signal.SIGTERM)
        web_log.close()


def get(port: int, path: str, source: str = "127.0.0.1", headers: dict[str, str] | None = None) -> int | None:
    """One GET from the ``source`` loopback address; None when nothing answers within 15 s."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15, source_address=(source, 0))
    try:
        connection.request("GET", path, headers=headers or {})
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()


@needs_nginx
def test_slow_clients_do_not_starve_the_app_behind_the_proxy(front):
    slow: list[socket.socket] = []
    try:
        for _ in range(16):
            sock = socket.create_connection(("127.0.0.1", front.proxy_port), timeout=5)
            sock.sendall(
                b"POST /api/v1/submit HTTP/1.1\r\nHost: imgsvc\r\n"
                b"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 1000000\r\n\r\n"
            )
            slow.append(sock)
        answers = []
        for _ in range(4):  # a byte from every slow client every 2 s, and /healthz meanwhile
            for sock in slow:
                sock.sendall(b"-")
            answers.append(get(front.proxy_port, "/healthz"))
            time.sleep(2)
        assert answers == [200] * 4
    finally:
        for sock in slow:
            sock.close()


@needs_nginx
def test_the_rate_limit_counts_each_client_behind_the_proxy(front):
    first = [get(front.proxy_port, "/api/v1/jobs", source="127.0.0.2") for _ in range(4)]
    assert first == [200, 200, 200, 429]
    forged = {"X-Forwarded-For": "198.51.100.23"}  # a header is no new address: same client, same bucket
    assert get(front.proxy_port, "/api/v1/jobs", source="127.0.0.2", headers=forged) == 429
    # Another client has a bucket of its own: the limiter sees clients, not the proxy.
    assert get(front.proxy_port, "/api/v1/jobs", source="127.0.0.3") == 200


@needs_nginx
def test_a_body_over_the_limit_is_refused_by_the_proxy_as_json(front):
    connection = http.client.HTTPConnection("127.0.0.1", front.proxy_port, timeout=15)
    try:
        connection.putrequest("POST", "/api/v1/submit")
        connection.putheader("Content-Type", "multipart/form-data; boundary=x")
        connection.putheader("Content-Length", str(Settings().max_file_size + 65536 + 1))
        connection.endheaders()
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    assert response.status == 413 and response.getheader("Content-Type") == "application/json"
    # The app's own words for a file over the limit (imgsvc.storage.uploads.file_too_large).
    assert json.loads(body)["error"] == {
        "code": "file_too_large",
        "message": "this file is larger than the limit of 10 MB",
        "status": 413,
    }


@pytest.mark.parametrize(("hops", "seen"), [(0, "10.0.0.9"), (1, "192.0.2.1"), (2, "203.0.113.5")])
def test_trusted_proxies_says_how_many_forwarded_hops_to_believe(settings, redis_db, hops, seen):
    """Without TRUSTED_PROXIES a client cannot choose its own address by sending a header."""
    from flask import request

    from imgsvc import create_app

    app = create_app(settings.with_(trusted_proxies=hops))
    app.add_url_rule("/whoami", "whoami", lambda: request.remote_addr)
    response = app.test_client().get(
        "/whoami",
        headers={"X-Forwarded-For": "203.0.113.5, 192.0.2.1"},
        environ_base={"REMOTE_ADDR": "10.0.0.9"},
    )
    assert response.get_data(as_text=True) == seen
