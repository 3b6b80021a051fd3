"""Submit under load: requests/s and p50/p99 latency of POST /api/v1/submit with a ~100 KB JPEG.

    python -m bench.api_load [--rates 200] [--seconds 10] [--kb 100] [--quick]

Both servers run as ``gunicorn -c gunicorn.conf.py`` (the production config: gthread,
WEB_WORKERS=2 x WEB_THREADS=4, access log on), bound to 127.0.0.1 on a free port:
imgsvc (``wsgi:app``, on the benches' Redis DB and a temporary SQLite file and upload
dir; no worker, jobs just queue) and, as the baseline in the same run, a bare Flask app
that parses the same upload (``bench.hello_app:app``).

The load is open-loop: request i is due at i/rate seconds whatever the answers do, sent
by a pool of threads on keep-alive connections (one the server's keep-alive timeout closed
is sent again once, and counted); latency counts from the due time, so a server that falls
behind shows it (no coordinated omission). Bounded: rate x seconds
requests, each with a 10 s timeout. CPU per request is the gunicorn workers' CPU time
(from /proc) divided by the requests they answered.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from bench import harness
from bench.harness import goal, percentile, stop_group, table
from imgsvc.config import PROJECT_ROOT

TIMEOUT = 10.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class LoadResult:
    sent: int
    ok: int
    errors: dict[str, int]
    latencies: list[float]  # seconds from the due time, answered requests only
    seconds: float  # first due time -> last answer
    cpu_seconds: float  # gunicorn workers' CPU over the run

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


def multipart(data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="photo.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(master: int) -> float:
    """utime + stime of the gunicorn workers: the children of ``master``."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == master:  # fields[1] is the ppid
                total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


@contextlib.contextmanager
def gunicorn(app: str, env: dict[str, str], log: Path, ready_path: str) -> Iterator[tuple[int, int]]:
    """``gunicorn -c gunicorn.conf.py APP`` on loopback; yields (port, master pid) once it answers."""
    port = free_port()
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}", app],
            cwd=PROJECT_ROOT,
            env=env | {"WEB_PORT": str(port)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn {app} did not start; its log:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                connection.request("GET", ready_path)
                if connection.getresponse().status == 200:
                    break
            time.sleep(0.1)
        yield port, process.pid
    finally:
        stop_group(process)


def open_loop(port: int, master: int, jpeg: bytes, rate: float, seconds: float) -> LoadResult:
    count = max(1, round(rate * seconds))
    local = threading.local()

    def connection() -> http.client.HTTPConnection:
        if getattr(local, "connection", None) is None:
            local.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        return local.connection

    retried: list[int] = []  # list.append is atomic: a counter the threads can share

    def one(due: float) -> tuple[str, float, float]:
        body, content_type = multipart(jpeg)  # a fresh boundary per request, as real clients send
        for attempt in range(2):
            conn = connection()
            reused = conn.sock is not None
            try:
                conn.request("POST", "/api/v1/submit", body, {"Content-Type": content_type})
                response = conn.getresponse()
                response.read()
                outcome = "ok" if response.status == 202 else f"HTTP {response.status}"
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                local.connection = None
                stale = isinstance(
                    exc, (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected)
                )
                if stale and reused and attempt == 0:
                    # The server closed an idle keep-alive connection (keepalive = 5 s): what
                    # every HTTP client does, send again on a new one.
                    retried.append(1)
                    continue
                outcome = type(exc).__name__
            break
        done = time.perf_counter()
        return outcome, done - due, done

    # Enough threads that the client never runs out at the target rate and 10 s timeouts.
    threads = min(256, max(16, int(rate * 0.25)))
    with ThreadPoolExecutor(threads, thread_name_prefix="load") as pool:
        cpu_before = cpu_seconds(master)
        start = time.perf_counter() + 0.1
        futures = []
        for i in range(count):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(one, due))
        wait(futures, timeout=TIMEOUT + 5)
        results = [f.result() for f in futures if f.done()]
        cpu = cpu_seconds(master) - cpu_before
    errors: dict[str, int] = {}
    for outcome, _, _ in results:
        if outcome != "ok":
            errors[outcome] = errors.get(outcome, 0) + 1
    unanswered = count - len(results)
    if unanswered:
        errors["unanswered"] = unanswered
    if retried:
        errors["stale keep-alive, sent again"] = len(retried)
    answered = [r for r in results if r[0] == "ok"]
    last = max((r[2] for r in results), default=start)
    return LoadResult(count, len(answered), errors, [r[1] for r in answered], last - start, cpu)


def warm_up(port: int, jpeg: bytes, requests: int = 20) -> None:
    """First requests import lazily and open connections in each gunicorn worker."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    for _ in range(requests):
        body, content_type = multipart(jpeg)
        connection.request("POST", "/api/v1/submit", body, {"Content-Type": content_type})
        connection.getresponse().read()
    connection.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rates", default="200", help="target requests/s, comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="load duration per rate and server")
    parser.add_argument("--kb", type=int, default=100, help="JPEG size")
    parser.add_argument("--quick", action="store_true", help="20 req/s for 2 s (a smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rates, args.seconds = "20", 2.0
    rates = [float(r) for r in args.rates.split(",")]

    jpeg = harness.jpeg_of_size(args.kb * 1024)
    harness.header(
        "api_load: imgsvc submit vs bare Flask, same gunicorn config",
        jpeg_kb=len(jpeg) // 1024,
        web_workers=os.environ.get("WEB_WORKERS", "2"),
        web_threads=os.environ.get("WEB_THREADS", "4"),
    )
    rows = []
    p99_at: dict[float, float] = {}
    with harness.scratch_service() as service:
        env = service.environment()
        servers = {"bare Flask": ("bench.hello_app:app", "/"), "imgsvc": ("wsgi:app", "/healthz")}
        for rate in rates:
            for name, (app, ready) in servers.items():
                with gunicorn(app, env, service.workdir / "gunicorn.log", ready) as (port, master):
                    warm_up(port, jpeg)
                    result = open_loop(port, master, jpeg, rate, args.seconds)
                lat = result.latencies or [float("nan")]
                if name == "imgsvc":
                    p99_at[rate] = percentile(lat, 99)
                rows.append([
                    name, f"{rate:g}", result.sent, f"{result.rate:.1f}",
                    f"{percentile(lat, 50) * 1000:.1f}", f"{percentile(lat, 99) * 1000:.1f}",
                    f"{max(lat) * 1000:.1f}", f"{result.cpu_seconds / max(1, result.ok) * 1000:.2f}",
                    ", ".join(f"{k} x{v}" for k, v in result.errors.items()) or "-",
                ])  # fmt: skip
                print(f"  {name} at {rate:g} req/s: done", flush=True)
        queued = service.app.task_queue.count
    print()
    table(
        ["server", "target/s", "sent", "answered/s", "p50 ms", "p99 ms", "max ms", "CPU ms/req", "errors"],
        rows,
    )
    print(
        f"\n{queued} jobs were left queued in {harness.REDIS_URL} (no worker); deleted with the run's keys."
    )
    print()
    for rate, p99 in p99_at.items():
        goal(f"imgsvc p99 submit < 25 ms at {rate:g} req/s", p99 < 0.025, f"{p99 * 1000:.1f} ms", rate >= 200)


if __name__ == "__main__":
    main()
