"""``imgsvc fetch-captioner`` (run by ``make run``): fetch the captioner when the Hub answers, else say so.

The Hub is played by a small HTTP server on 127.0.0.1 that serves the tiny test checkpoint the way
huggingface.co serves a model (``HF_ENDPOINT`` points at it), or that never answers. The command runs
as a real subprocess whose every other destination goes to a loopback proxy that refuses and records
it: nothing here can reach huggingface.co, and each test proves it asked no one else.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pty
import re
import select
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from tqdm import tqdm

from imgsvc.config import PROJECT_ROOT, Settings
from imgsvc.vision import DEFAULT_BUILTIN, resolve_model

REPO = "imgsvc-tests/tiny-blip"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TIMEOUT_S = 2
#: Long enough for a silent Hub to be given up on several times over; the command must end well before.
DEADLINE_S = 120


@dataclass
class FakeHub:
    """The parts of the Hub API that ``model_info`` and ``snapshot_download`` use, for one repo."""

    files: dict[str, bytes]
    requests: list[str] = field(default_factory=list)

    def model_info(self) -> dict:
        siblings = [
            {"rfilename": name, "size": len(data), "blobId": blob(data)} for name, data in self.files.items()
        ]
        return {"id": REPO, "modelId": REPO, "sha": COMMIT, "private": False, "siblings": siblings}

    def tree(self) -> list[dict]:
        return [{"type": "file", "path": n, "size": len(d), "oid": blob(d)} for n, d in self.files.items()]


def blob(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def handler_for(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.answer(send_body=True)

        def do_HEAD(self) -> None:
            self.answer(send_body=False)

        def answer(self, send_body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.requests.append(f"{self.command} {path}")
            headers = {"X-Repo-Commit": COMMIT}
            if path in (f"/api/models/{REPO}", f"/api/models/{REPO}/revision/main"):
                body, status = json.dumps(hub.model_info()).encode(), 200
            elif path == f"/api/models/{REPO}/tree/{COMMIT}":
                body, status = json.dumps(hub.tree()).encode(), 200
            elif path.startswith(prefix := f"/{REPO}/resolve/{COMMIT}/") and path[len(prefix) :] in hub.files:
                body, status = hub.files[path[len(prefix) :]], 200
                headers["ETag"] = f'"{blob(body)}"'
            else:  # as huggingface.co answers for a repo it does not have
                body, status = b'{"error": "Repository not found"}', 404
                headers["X-Error-Code"] = "RepoNotFound"
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    return Handler


@contextlib.contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def hub(tiny_model_dir: Path) -> Iterator[tuple[FakeHub, str]]:
    files = {p.name: p.read_bytes() for p in sorted(tiny_model_dir.iterdir()) if p.is_file()}
    fake = FakeHub(files)
    with serving(handler_for(fake)) as url:
        yield fake, url


@pytest.fixture()
def silent_hub() -> Iterator[str]:
    """Connections are accepted (by the kernel, into the backlog) and never answered: dropped packets."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@dataclass
class Tripwire:
    url: str
    attempts: list[str]


@pytest.fixture()
def elsewhere() -> Iterator[Tripwire]:
    """The proxy for every non-loopback destination: it records the attempt and refuses it."""
    attempts: list[str] = []

    class Refuse(BaseHTTPRequestHandler):
        def do_CONNECT(self) -> None:
            attempts.append(f"{self.command} {self.path}")
            self.send_error(403)

        do_GET = do_HEAD = do_POST = do_CONNECT

        def log_message(self, *args) -> None:
            pass

    with serving(Refuse) as url:
        yield Tripwire(url, attempts)


@dataclass
class Run:
    returncode: int
    #: What a person at the terminal saw (stdout and stderr), with the bars' redraws as separate lines.
    lines: list[str]


def fetch_captioner(tmp_path: Path, endpoint: str, tripwire: Tripwire, **env: str) -> Run:
    """``imgsvc fetch-captioner`` in a terminal of its own (progress bars show only on one), with a
    fresh Hugging Face home, as ``make run`` runs it."""
    environment = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "TERM": "xterm",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_ENDPOINT": endpoint,
        "HTTP_PROXY": tripwire.url,
        "HTTPS_PROXY": tripwire.url,
        "ALL_PROXY": tripwire.url,
        "NO_PROXY": "127.0.0.1,localhost",
        "VISION_MODEL": "auto",
        "CAPTION_MODEL": REPO,
    } | env
    command = [sys.executable, "-m", "imgsvc.cli", "fetch-captioner", "--timeout", str(TIMEOUT_S)]
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        command, cwd=PROJECT_ROOT, env=environment, stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal
    )
    os.close(terminal)
    output = bytearray()
    deadline = time.monotonic() + DEADLINE_S
    try:
        while select.select([controller], [], [], max(0.0, deadline - time.monotonic()))[0]:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the command ended and its terminal closed
                break
            if not chunk:
                break
            output += chunk
        returncode = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        proc.kill()
        os.close(controller)
    text = output.decode(errors="replace").replace("\x1b[A", "")
    return Run(returncode, [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()])


def test_when_the_hub_answers_the_size_is_shown_then_the_captioner_downloaded(
    hub, elsewhere, tmp_path, monkeypatch
):
    fake, url = hub
    run = fetch_captioner(tmp_path, url, elsewhere)
    assert run.returncode == 0, run.lines
    size = tqdm.format_sizeof(sum(len(data) for data in fake.files.values()), "B")
    assert run.lines[0] == (
        f"Downloading the captioner {REPO} ({size} in {len(fake.files)} files) into the Hugging Face "
        "cache, once; FETCH_CAPTIONER=off skips this."
    )
    # then huggingface_hub's own progress bars, counting up to the size announced
    bars = run.lines[1:-1]
    assert any(line.startswith(f"Fetching {len(fake.files)} files: 100%") for line in bars)
    assert any(
        line.startswith("Download complete") and line.endswith(size.removesuffix("B") + "B") for line in bars
    )
    assert run.lines[-1].startswith(f"Captioner {REPO} is ready at ") and "will use it" in run.lines[-1]
    snapshot = tmp_path / "hf" / "hub" / "models--imgsvc-tests--tiny-blip" / "snapshots" / COMMIT
    assert {p.name: p.read_bytes() for p in snapshot.iterdir()} == fake.files
    assert elsewhere.attempts == []

    # and now VISION_MODEL=auto picks the captioner, without the network
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    assert resolve_model(Settings(caption_model=REPO)) == REPO

    # the next start finds it there and asks the Hub nothing
    fake.requests.clear()
    again = fetch_captioner(tmp_path, url, elsewhere)
    assert (again.returncode, again.lines, fake.requests) == (0, [], [])


def test_a_silent_hub_is_given_up_on_with_one_line(silent_hub, elsewhere, tmp_path):
    run = fetch_captioner(tmp_path, silent_hub, elsewhere)  # ends long before DEADLINE_S, or fails
    assert run.returncode == 0
    (line,) = run.lines
    assert line.startswith(f"The Hugging Face Hub did not answer (ReadTimeout, {TIMEOUT_S} s timeout);")
    assert f"VISION_MODEL=auto will use the offline describer {DEFAULT_BUILTIN}." in line
    assert elsewhere.attempts == []


def test_a_model_the_hub_does_not_have_is_reported_as_such(hub, elsewhere, tmp_path):
    fake, url = hub
    run = fetch_captioner(tmp_path, url, elsewhere, CAPTION_MODEL="imgsvc-tests/no-such-model")
    assert run.returncode == 0
    assert run.lines == [
        "Not fetching the captioner: no model 'imgsvc-tests/no-such-model' on the Hugging Face Hub (or it is "
        f"private); VISION_MODEL=auto will use the offline describer {DEFAULT_BUILTIN}."
    ]
    assert fake.requests[-1] == "GET /api/models/imgsvc-tests/no-such-model"  # asked once, then nothing
    assert elsewhere.attempts == []


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({"HF_HUB_OFFLINE": "1"}, ["HF_HUB_OFFLINE is set, so the Hub was not asked for the captioner"]),
        ({"FETCH_CAPTIONER": "off"}, []),
        ({"CAPTION_MODEL": "/nowhere/blip"}, ["Captioner /nowhere/blip is not a model directory"]),
        ({"VISION_MODEL": "builtin"}, []),
    ],
)
def test_no_probe_when_offline_turned_off_or_not_auto(hub, elsewhere, tmp_path, env, said):
    fake, url = hub
    run = fetch_captioner(tmp_path, url, elsewhere, **env)
    assert run.returncode == 0
    assert [line[: len(prefix)] for line, prefix in zip(run.lines, said, strict=True)] == said
    assert fake.requests == [] and elsewhere.attempts == []
    assert not (tmp_path / "hf" / "hub").exists()


def test_make_run_fetches_before_the_workers_start():
    serve = (PROJECT_ROOT / "scripts" / "serve.sh").read_text()
    assert serve.index("imgsvc fetch-captioner") < serve.index("python worker.py")
