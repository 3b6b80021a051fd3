"""The security suite's harness: a real deployment on loopback, an attacker that keeps count.

A :class:`Stack` is what production runs: gunicorn with ``gunicorn.conf.py`` on a free port of
127.0.0.1, optionally ``python worker.py`` (the tiny test model) and ``rq worker`` for webhooks,
on SQLite and this suite's Redis DB. Every process it starts carries the loopback-only fence
(``tests/loopback.py``). The :class:`Tally` counts hostile requests and every 5xx; it is printed
at the end of the run and written to ``tests/artifacts/security-tally.json``.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from redis import Redis
from rq import Queue, Worker

from imgsvc.config import PROJECT_ROOT
from tests.conftest import TEST_REDIS_URL
from tests.integration.procs import free_port, kill_group, wait_until
from tests.loopback import SITE_DIR
from tests.security.tally import TALLY, Tally


@pytest.fixture(scope="session")
def tally() -> Tally:
    return TALLY


@pytest.fixture(autouse=True)
def no_unexpected_5xx(tally: Tally) -> Iterator[None]:
    """Whatever a test attacked with, the server never answered with a 500."""
    before = len(tally.unexpected_5xx)
    yield
    assert tally.unexpected_5xx[before:] == []


class Attacker:
    """HTTP to one stack; every answer goes into the tally. Never follows redirects or proxies."""

    def __init__(self, base_url: str, tally: Tally) -> None:
        self.base_url = base_url
        self.tally = tally
        self.session = requests.Session()
        self.session.trust_env = False  # no proxy from the environment: loopback, directly

    def send(
        self, method: str, path: str, *, hostile: bool = True, expect_503: bool = False, **kwargs
    ) -> requests.Response:
        kwargs.setdefault("timeout", 60)
        kwargs.setdefault("allow_redirects", False)
        response = self.session.request(method, self.base_url + path, **kwargs)
        self.tally.record(f"{method} {path}", response.status_code, hostile=hostile, expect_503=expect_503)
        return response

    def submit(self, image: bytes, *, key: str | None = None, hostile: bool = True, **fields: str):
        headers = {"X-API-Key": key} if key else {}
        return self.send(
            "POST",
            "/api/v1/submit",
            files={"file": ("x.jpg", image, "image/jpeg")},
            data=fields,
            headers=headers,
            hostile=hostile,
        )

    def raw(self, request: bytes, *, hostile: bool = True) -> int:
        """Bytes straight onto the socket, for what an HTTP library would refuse to send."""
        host, port = self.base_url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(request)
            status = int(sock.makefile("rb").readline().split()[1])
        self.tally.record(request.split(b"\r\n")[0].decode("latin-1"), status, hostile=hostile)
        return status


@dataclass
class Stack:
    """One deployment: gunicorn, and optionally a describe worker and a webhook worker."""

    name: str
    directory: Path
    env: dict[str, str]
    port: int
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def database(self) -> Path:
        return Path(self.env["DATABASE_URL"].removeprefix("sqlite:///"))

    def log(self, name: str) -> Path:
        return self.directory / f"{name}.log"

    def spawn(self, name: str, command: list[str]) -> None:
        with self.log(name).open("ab") as out:
            self.procs.append(
                subprocess.Popen(
                    command,
                    cwd=PROJECT_ROOT,
                    env=self.env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own group, so stopping it takes its children too
                )
            )

    def start_web(self) -> None:
        command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"]
        self.spawn("web", [*command, "--bind", f"127.0.0.1:{self.port}", "wsgi:app"])
        self.wait_for("web", lambda: self._answers("/healthz"))

    def start_worker(self) -> None:
        self.spawn("worker", [sys.executable, "worker.py"])
        self.wait_for("worker", lambda: self._answers("/readyz"))

    def start_webhook_worker(self) -> None:
        """What production runs: ``imgsvc webhooks`` (WEBHOOK_WORKERS RQ workers, with the scheduler)."""
        queue = self.env["WEBHOOK_QUEUE"]
        self.spawn("webhooks", [str(Path(sys.executable).parent / "imgsvc"), "webhooks"])
        redis = Redis.from_url(TEST_REDIS_URL)
        self.wait_for("webhooks", lambda: Worker.all(queue=Queue(queue, connection=redis)))

    def wait_for(self, name: str, ready, timeout: float = 120) -> None:
        if not wait_until(ready, timeout=timeout, interval=0.2):
            raise RuntimeError(f"{self.name} {name} did not start:\n{self.log(name).read_text()[-3000:]}")

    def _answers(self, path: str) -> bool:
        try:
            return requests.get(self.url + path, timeout=5).status_code == 200
        except requests.ConnectionError:
            return False

    def rows(self, where: str = "1=1", *args: object) -> list[sqlite3.Row]:
        with sqlite3.connect(self.database) as connection:
            connection.row_factory = sqlite3.Row
            return connection.execute(f"SELECT * FROM jobs WHERE {where}", args).fetchall()

    def wait_for_job(self, job_id: str, timeout: float = 120) -> sqlite3.Row:
        """Polls the database, not the API, so waiting spends no rate limit."""
        if not wait_until(lambda: self.rows("id = ? AND status IN ('done', 'failed')", job_id), timeout):
            raise AssertionError(f"job {job_id} never finished:\n{self.log('worker').read_text()[-3000:]}")
        (row,) = self.rows("id = ?", job_id)
        return row

    def stop(self) -> None:
        """SIGTERM each group; one still busy 10 s later (a worker mid-job) is killed, so that no
        process outlives its test and takes the next test's jobs from the same queue name."""
        for proc in reversed(self.procs):
            try:
                kill_group(proc, signal.SIGTERM)
            except subprocess.TimeoutExpired:
                kill_group(proc, signal.SIGKILL)

    def unhandled_errors(self) -> list[str]:
        """Lines where the app logged an unexpected exception (its one 500 path)."""
        text = self.log("web").read_text(errors="replace")
        return [line for line in text.splitlines() if '"unhandled error"' in line]


def make_stack(name: str, directory: Path, model_dir: Path, **env: str) -> Stack:
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(directory),  # anything that defaults to ~ stays in the test's folder
        "PYTHONPATH": f"{SITE_DIR}{os.pathsep}{PROJECT_ROOT}",  # the loopback-only fence
        "HF_HUB_OFFLINE": "1",
        "WEB_PORT": str(port),
        "WEB_WORKERS": "1",
        "WEB_THREADS": "4",
        "REDIS_URL": TEST_REDIS_URL,
        "DATABASE_URL": f"sqlite:///{directory / 'imgsvc.sqlite'}",
        "UPLOAD_DIR": str(directory / "uploads"),
        "RQ_QUEUE": f"sec-{name}",
        "WEBHOOK_QUEUE": f"sec-{name}-webhooks",
        "VISION_MODEL": str(model_dir),
        "MAX_NEW_TOKENS": "5",
        "TORCH_THREADS": "1",
        "TASK_RETRY_DELAY": "0",
        "SECRET_KEY": "security-suite",
        "WEBHOOK_SECRET": "security-suite",
        "LOG_FORMAT": "json",  # the tests read the processes' logs as JSON lines
    }
    return Stack(name, directory, base | env, port)
