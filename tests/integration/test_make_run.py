"""``make run`` as a newcomer runs it: in a terminal, with a ``.env``, the venv not activated, Ctrl+C.

The real Makefile and scripts run from a checkout made of links to this one (so the test's ``.env``
is its own), with the test's Redis DB, a temporary database and the tiny model; the terminal is a
real pseudo-terminal, so Ctrl+C is the SIGINT a person's terminal sends to the whole foreground group.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pty
import re
import signal
import subprocess
import threading
import urllib.request
from pathlib import Path

import pytest

from imgsvc.config import PROJECT_ROOT
from tests.conftest import image_bytes
from tests.integration.procs import free_port, wait_until
from tests.loopback import SITE_DIR

#: LOG_FORMAT=text: "12:03:07 INFO    imgsvc.jobs: job done job_id=... duration_ms=41".
TEXT_LINE = re.compile(
    r"\d\d:\d\d:\d\d (?:DEBUG|INFO|WARNING|ERROR|CRITICAL) +(?P<logger>[\w.]+): (?P<event>.*)"
)

LINKED = (
    "Makefile",
    "scripts",
    "gunicorn.conf.py",
    "wsgi.py",
    "worker.py",
    "requirements.txt",
    "pyproject.toml",
)
# `make run` installs requirements.txt only, which has no python-dotenv (the dev tools pull it in):
# this stands in for its absence, the case in which Flask prints its "Install python-dotenv" tip.
NO_DOTENV = 'raise ImportError("python-dotenv is not installed where make run installs")\n'


def checkout(tmp_path: Path) -> Path:
    """Links to the project's files, and a .venv whose install stamp says "nothing to install"."""
    root = tmp_path / "checkout"
    root.mkdir()
    for name in LINKED:
        (root / name).symlink_to(PROJECT_ROOT / name)
    (root / ".venv").mkdir()
    (root / ".venv" / "bin").symlink_to(PROJECT_ROOT / ".venv" / "bin")
    stamp = subprocess.run(
        "sha256sum requirements.txt requirements.txt pyproject.toml | sha256sum | cut -c1-16",
        shell=True,
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (root / ".venv" / f".installed-{stamp}").touch()
    return root


class Terminal:
    """A command on a pseudo-terminal of its own; everything it prints is collected."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: make, in a new session with this terminal as its own
            try:
                os.chdir(cwd)
                os.execvpe(argv[0], argv, env)
            finally:
                os._exit(127)
        self.output = io.BytesIO()
        self.status: int | None = None
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        with contextlib.suppress(OSError):  # EIO once the last process on the terminal is gone
            while chunk := os.read(self.fd, 65536):
                self.output.write(chunk)

    def press_ctrl_c(self) -> None:
        os.write(self.fd, b"\x03")

    def wait(self, timeout: float) -> bool:
        def ended() -> bool:
            if self.status is None:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.status = status
            return self.status is not None

        return wait_until(ended, timeout, interval=0.2)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.wait(10)

    def text(self) -> str:
        self.reader.join(timeout=5)
        return self.output.getvalue().decode(errors="replace").replace("\r\n", "\n")


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def post_image(url: str, data: bytes) -> dict:
    boundary = "imgsvc-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="cat.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket in LISTEN state on ``port`` (IPv4), read from /proc: no traffic."""
    addresses = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        host, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:
            addresses.add(".".join(str(int(host[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return addresses


def processes_in(directory: Path) -> list[str]:
    """Command lines of the processes whose working directory is ``directory`` (read from /proc)."""
    found = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and (proc / "cwd").resolve() == directory.resolve():
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
    return found


def test_make_run_in_a_terminal(settings, tiny_model_dir, tmp_path):
    root = checkout(tmp_path)
    port = free_port()
    # No Redis answers there: make run starts one, and must stop it again with the rest.
    redis_port = free_port()
    (root / ".env").write_text(
        f"REDIS_URL=redis://127.0.0.1:{redis_port}/0\n"
        f"DATABASE_URL={settings.database_url}\n"
        f"UPLOAD_DIR={settings.upload_dir}\n"
        f"WEB_PORT={port}\nWEB_WORKERS=1\n"
        f"VISION_MODEL={tiny_model_dir}\nMAX_NEW_TOKENS=5\nTORCH_THREADS=1\n"
    )
    shim = tmp_path / "shim" / "dotenv"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text(NO_DOTENV)
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",  # no venv on it: nobody activated anything
        "HOME": str(tmp_path),  # gunicorn puts its control socket under ~/.gunicorn
        "TERM": "dumb",
        "HF_HUB_OFFLINE": "1",
        # the dotenv stand-in, and the suite's loopback-only fence (tests/loopback.py)
        "PYTHONPATH": os.pathsep.join([str(shim.parent), str(SITE_DIR), str(PROJECT_ROOT)]),
    }
    base = f"http://127.0.0.1:{port}"
    terminal = Terminal(["make", "run"], root, env)
    try:
        if not wait_until(lambda: get(f"{base}/readyz")[0] == 200, timeout=120, interval=0.5):
            pytest.fail(f"make run never became ready:\n{terminal.text()[-4000:]}")
        # 16: a development run listens on loopback only (checked in /proc, without sending anything).
        assert listening_addresses(port) == {"127.0.0.1"}

        job_id = post_image(f"{base}/api/v1/submit", image_bytes("PNG"))["job_id"]
        assert wait_until(lambda: b'"done"' in get(f"{base}/api/v1/status/{job_id}")[1], timeout=60)
        assert get(f"{base}/docs/")[0] == 200

        terminal.press_ctrl_c()
        assert terminal.wait(timeout=60), f"still running 60 s after Ctrl+C:\n{terminal.text()[-4000:]}"
    finally:
        terminal.kill()
    output = terminal.text()

    # 17: Ctrl+C ends it quietly: make is interrupted like its recipe, and prints no "Error".
    assert os.WIFSIGNALED(terminal.status) and os.WTERMSIG(terminal.status) == signal.SIGINT, output[-3000:]
    assert listening_addresses(port) == set()
    # 6: everything it started is gone: the Redis, the workers, gunicorn, no watchdog left behind.
    assert listening_addresses(redis_port) == set()
    assert processes_in(root) == []
    # It said what it will run in three lines at most, before any process logged anything.
    first_lines = output[: output.index("\n", output.index("Ctrl+C stops all"))].split("\n")
    assert len([line for line in first_lines if line.startswith("imgsvc: ")]) <= 3, first_lines
    assert "started here, stopped with the rest" in output and "stopped the redis-server" in output
    # 12: .env is loaded by the script, and Flask has nothing to say about it.
    assert "Tip:" not in output and "dotenv" not in output

    # 13 and issue 22's log flood: every line is a readable log line (LOG_FORMAT=text, the default),
    # except the script's own (they say "imgsvc: ..."); status polls are not among them (DEBUG).
    records = []
    for line in output.split("\n"):
        line = line.removeprefix("^C")  # the terminal's echo of Ctrl+C
        if not line or line.startswith("imgsvc: "):
            continue
        parsed = TEXT_LINE.match(line)
        if parsed is None:  # make's "make: *** [Makefile:4: run] Error 1" would land here too
            pytest.fail(f"not a log line: {line!r}\n{output[-3000:]}")
        records.append({"logger": parsed["logger"], "event": parsed["event"]})
    loggers = {record["logger"] for record in records}
    assert {"gunicorn.error", "rq.worker", "imgsvc.web", "imgsvc.jobs"} <= loggers
    assert any(r["event"].startswith(f"Listening at: {base} (") for r in records)
    assert any(r["event"] == "*** Listening on imgsvc-webhooks..." for r in records)  # the webhook worker
    # One line per request that changes something (gunicorn's access log is off), one per job event.
    requests = [
        r["event"] for r in records if r["logger"] == "imgsvc.web" and r["event"].startswith("request ")
    ]
    (submit,) = [event for event in requests if "path=/api/v1/submit " in event]
    assert (
        submit.startswith("request method=POST path=/api/v1/submit status=202 ")
        and f"job_id={job_id}" in submit
    )
    assert not [event for event in requests if "path=/readyz" in event or "path=/api/v1/status/" in event]
    about_the_job = [r for r in records if f"job_id={job_id}" in r["event"] and r["logger"] == "imgsvc.jobs"]
    assert [r["event"].split(" job_id=")[0] for r in about_the_job] == ["job processing", "job done"]
    assert "imgsvc: stopped" in output
