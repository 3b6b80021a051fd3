"""Real processes for the fault tests: worker subprocesses, a throw-away redis-server, polling.

Run as ``python -m tests.integration.procs [worker args]`` it is ``python worker.py`` whose
model sleeps DESCRIBE_DELAY seconds per forward pass, so a test can kill it mid-job.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from imgsvc.config import PROJECT_ROOT
from imgsvc.vision.base import Describer, Description


def wait_until(condition: Callable[[], object], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``condition`` until it is truthy or ``timeout`` seconds pass; never waits longer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())


def start_worker(env: dict[str, str], *args: str, delay: float = 0.0, log: Path) -> subprocess.Popen:
    """``python worker.py`` (or its slowed-down twin) in a process group of its own.

    The group lets :func:`kill_group` take down RQ's forked scheduler with the worker.
    """
    if delay:
        command = [sys.executable, "-m", "tests.integration.procs", *args]
        env = env | {"DESCRIBE_DELAY": str(delay)}
    else:
        command = [sys.executable, "worker.py", *args]
    with log.open("ab") as out:
        return subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def kill_group(proc: subprocess.Popen, sig: signal.Signals = signal.SIGKILL) -> None:
    """Signal the process's whole group (it leads one), then reap it so its pid is really gone."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    proc.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A private redis-server with an append-only file, so a SIGKILL loses nothing acknowledged."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        command = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
        command += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.directory)]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = Redis.from_url(self.url, socket_connect_timeout=0.5)
        try:
            if not wait_until(lambda: self._answers(client), timeout=10):
                raise RuntimeError(f"redis-server on port {self.port} did not start")
        finally:
            client.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    @staticmethod
    def _answers(client: Redis) -> bool:
        try:
            return bool(client.ping())
        except RedisError:
            return False


class SlowDescriber(Describer):
    """The real model, plus a sleep per forward pass: a job long enough to be interrupted."""

    def __init__(self, inner: Describer, delay: float) -> None:
        self.inner = inner
        self.delay = delay
        self.name = inner.name
        self.supported_options = inner.supported_options

    def describe_full(self, images: Sequence, options: Mapping[str, Any] | None = None) -> list[Description]:
        time.sleep(self.delay)
        return self.inner.describe_full(images, options)


def main(argv: list[str] | None = None) -> int:
    from imgsvc.queue import worker

    delay = float(os.environ["DESCRIBE_DELAY"])
    load = worker.load_describer
    worker.load_describer = lambda settings: SlowDescriber(load(settings), delay)
    return worker.main(argv)


if __name__ == "__main__":
    sys.exit(main())
