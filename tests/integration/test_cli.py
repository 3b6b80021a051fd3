"""The ``imgsvc`` command: local describe, submit to a running server, and the failure modes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner
from werkzeug.serving import make_server

from imgsvc.cli import main
from tests.conftest import image_bytes
from tests.image_server import ImageServer, Page
from tests.loopback import SITE_DIR


@pytest.fixture()
def photos(tmp_path):
    paths = []
    for i, fmt in enumerate(("JPEG", "PNG", "WEBP", "PNG")):
        path = tmp_path / f"p{i}.{fmt.lower()}"
        path.write_bytes(image_bytes(fmt, color=(i * 50, 40, 90)))
        paths.append(path)
    return paths


def test_help_everywhere():
    runner = CliRunner()
    for args in ([], ["describe"], ["submit"], ["worker"], ["web"], ["download-model"]):
        result = runner.invoke(main, [*args, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, args


def test_describe_runs_the_model_locally(photos, tiny_model_dir, tiny_describer, monkeypatch):
    monkeypatch.setenv("MAX_NEW_TOKENS", "8")
    result = CliRunner().invoke(
        main, ["describe", "--json", "--model", str(tiny_model_dir), *map(str, photos)]
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["file"] for r in records] == [str(p) for p in photos]
    assert {r["generated_by"] for r in records} == {str(tiny_model_dir)}
    from PIL import Image

    expected = tiny_describer.describe([Image.open(photos[0]).convert("RGB")])[0]
    assert records[0]["image_description"] == expected
    text = CliRunner().invoke(main, ["describe", "--model", str(tiny_model_dir), str(photos[1])])
    assert text.stdout.startswith(f"{photos[1]}: ")


def test_describe_decodes_like_the_worker_and_reports_a_bad_file_alone(
    photos, tmp_path, tiny_model_dir, monkeypatch
):
    monkeypatch.setenv("MAX_NEW_TOKENS", "4")
    monkeypatch.setenv("DECODE_TIMEOUT", "5")
    broken = tmp_path / "broken.png"
    broken.write_bytes(photos[1].read_bytes()[:200])  # the header, then nothing
    result = CliRunner().invoke(
        main,
        ["describe", "--json", "--model", str(tiny_model_dir), str(photos[0]), str(broken), str(photos[3])],
    )
    assert (
        result.exit_code == 1
        and "1 of 3 file(s) could not be described: 1 could not be decoded" in result.output
    )
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["file"] for r in records] == [str(photos[0]), str(broken), str(photos[3])]
    assert "image_description" in records[0] and "image_description" in records[2]
    assert records[1]["error"] == "the file looks like a PNG image but cannot be decoded"


def test_submit_talks_to_a_running_server(app, photos, run_worker):
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        queued = CliRunner().invoke(main, ["submit", "--no-wait", "--url", url, str(photos[0])])
        assert json.loads(queued.stdout)["status"] == "queued"
        run_worker()
        # the same bytes again: answered from the stored result, so --wait returns at once
        done = CliRunner().invoke(main, ["submit", "--url", url, "--timeout", "20", str(photos[0])])
        record = json.loads(done.stdout)
        assert done.exit_code == 0 and record["status"] == "done" and record["cached"] is True
        bad = CliRunner().invoke(main, ["submit", "--url", url, __file__])
        refused = json.loads(bad.stdout)
        assert refused["http_status"] == 415 and refused["error"]["detected"] == "plain text"
        assert bad.exit_code == 1 and "1 of 1 file(s) could not be described" in bad.stderr
        # --model: the server routes by it, and says so when no worker serves it.
        other = CliRunner().invoke(main, ["submit", "--url", url, "--model", "florence", str(photos[1])])
        assert json.loads(other.stdout)["error"]["code"] == "unknown_model" and other.exit_code == 1
    finally:
        server.shutdown()


def test_submit_sends_image_urls_for_the_worker_to_fetch(app, settings, client, run_worker):
    app.config["IMGSVC"] = settings.with_(image_url_allow_private=True)  # the image server is on loopback
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        with ImageServer({"/a.png": Page(body=image_bytes("PNG"))}) as images:
            args = ["submit", "--no-wait", "--url", url, "--image-url", images.url("/a.png")]
            result = CliRunner().invoke(main, [*args, "--image-url", "ftp://example.com/b.png"])
            run_worker()
    finally:
        server.shutdown()
    queued, refused = (json.loads(line) for line in result.stdout.splitlines())
    assert queued["image_url"] == images.url("/a.png") and queued["status"] == "queued"
    assert refused["image_url"] == "ftp://example.com/b.png" and refused["http_status"] == 422
    assert refused["error"]["code"] == "invalid_image_url"
    assert result.exit_code == 1 and "1 of 2 image(s) could not be described" in result.stderr
    assert client.get(f"/api/v1/result/{queued['job_id']}").get_json()["status"] == "done"
    assert CliRunner().invoke(main, ["submit", "--url", url]).exit_code == 2  # neither files nor URLs


def test_submit_sends_the_api_key_a_keyed_server_needs(settings, photos, tiny_describer, monkeypatch):
    from imgsvc import create_app
    from imgsvc.queue.worker import ImgsvcWorker

    monkeypatch.delenv("IMGSVC_API_KEY", raising=False)
    keyed = create_app(settings.with_(api_keys=("right-key",)))
    server = make_server("127.0.0.1", 0, keyed, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        anonymous = CliRunner().invoke(main, ["submit", "--url", url, str(photos[0])])
        assert anonymous.exit_code == 1 and anonymous.output == (
            "Error: the server needs an API key: pass --api-key KEY (or set IMGSVC_API_KEY)\n"
        )
        wrong = CliRunner().invoke(main, ["submit", "--url", url, "--api-key", "wrong", str(photos[0])])
        assert wrong.exit_code == 1 and wrong.output == (
            "Error: the server did not accept the API key: check --api-key (or IMGSVC_API_KEY)\n"
        )
        queued = CliRunner().invoke(
            main, ["submit", "--no-wait", "--url", url, "--api-key", "right-key", str(photos[0])]
        )
        assert queued.exit_code == 0 and json.loads(queued.stdout)["status"] == "queued"
        ImgsvcWorker([keyed.task_queue], connection=keyed.redis, app=keyed, describer=tiny_describer).work(
            burst=True
        )
        # The key from the environment, on the submit and on every result poll (a keyed job is its key's).
        env = {"IMGSVC_API_KEY": "right-key"}
        done = CliRunner().invoke(main, ["submit", "--url", url, "--timeout", "20", str(photos[0])], env=env)
        assert done.exit_code == 0, done.output
        assert json.loads(done.stdout)["status"] == "done"
    finally:
        server.shutdown()


def test_submit_without_a_server_says_so_in_one_line(photos):
    from tests.integration.procs import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = CliRunner().invoke(main, ["submit", "--url", url, str(photos[0])])
    assert result.exit_code == 1
    assert result.output == (
        f"Error: cannot reach the server at {url}: nothing answers there "
        "(start one with `make run`, or pass --url)\n"
    )
    malformed = CliRunner().invoke(main, ["submit", "--url", "localhost:8000", str(photos[0])])
    assert malformed.exit_code == 1 and malformed.output.startswith("Error: cannot use the server URL")
    assert "Traceback" not in result.output + malformed.output


def test_describe_reports_each_bad_file_by_its_name_and_describes_the_rest(photos, tiny_model_dir, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("milk, bread, eggs\n")
    files = [str(photos[0]), str(notes), str(photos[1])]

    text = CliRunner().invoke(main, ["describe", "--model", str(tiny_model_dir), *files])
    assert text.exit_code == 1 and isinstance(text.exception, SystemExit)  # an exit status, no traceback
    lines = text.stdout.splitlines()
    assert [line.split(": ")[0] for line in lines] == files
    assert lines[1] == (
        f"{notes}: error: the file is plain text; accepted formats are JPEG, PNG, WebP, GIF, BMP and TIFF"
    )
    # Issue 22: a text file is not an image, and the summary says so ("could not be decoded" misled).
    assert text.stderr.splitlines()[-1] == "Error: 1 of 3 file(s) could not be described: 1 not an image"


def test_python_dash_m_imgsvc_is_the_imgsvc_command():
    proc = subprocess.run(
        [sys.executable, "-m", "imgsvc", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: imgsvc [OPTIONS] COMMAND")
    assert "describe" in proc.stdout and "submit" in proc.stdout


def test_download_model_fails_fast_without_the_hub():
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_HUB_OFFLINE")}
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "imgsvc.cli", "download-model", "Salesforce/blip-image-captioning-base"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "Hugging Face Hub" in proc.stderr
    assert time.monotonic() - started < 30


def test_submit_waits_out_a_rate_limit_and_loses_no_job(settings, photos, tiny_describer):
    # Issue 22: with RATE_LIMIT=5/second and 24 files, every file was reported failed, and the
    # accepted jobs' ids were never printed (their polls got 429 and were dropped).
    from imgsvc import create_app
    from imgsvc.queue.worker import ImgsvcWorker

    limited = create_app(settings.with_(rate_limit="2/second"))
    server = make_server("127.0.0.1", 0, limited, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    files = [str(path) for path in photos]  # 4 files at 2 a second: 429s on the way
    try:
        queued = CliRunner().invoke(main, ["submit", "--no-wait", "--url", url, "--timeout", "30", *files])
        assert queued.exit_code == 0, queued.output
        records = [json.loads(line) for line in queued.stdout.splitlines()]
        assert [r["file"] for r in records] == files and all(r["job_id"] for r in records)
        ImgsvcWorker(
            [limited.task_queue], connection=limited.redis, app=limited, describer=tiny_describer
        ).work(burst=True)
        # Again, waiting: submits (answered from the stored results) and result polls are limited alike.
        done = CliRunner().invoke(main, ["submit", "--url", url, "--timeout", "30", *files])
        assert done.exit_code == 0, done.output
        results = [json.loads(line) for line in done.stdout.splitlines()]
        assert sorted(r["file"] for r in results) == sorted(files)
        assert all(r["status"] == "done" and r["job_id"] for r in results)
    finally:
        server.shutdown()


@pytest.mark.parametrize("command", ["worker", "webhooks"])
def test_workers_say_in_one_line_that_redis_does_not_answer(command):
    from tests.integration.procs import free_port

    proc = subprocess.run(
        [sys.executable, "-m", "imgsvc", command],
        env={
            "PATH": "/usr/bin:/bin",
            "HF_HUB_OFFLINE": "1",
            "REDIS_URL": f"redis://u:pw@127.0.0.1:{free_port()}/0",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    (line,) = proc.stderr.splitlines()  # no traceback
    assert line.startswith("Error: Redis does not answer at redis://127.0.0.1:") and "REDIS_URL" in line
    assert "pw" not in line


def test_web_starts_from_the_venv_without_an_activated_venv(tmp_path):
    # `.venv/bin/imgsvc web` with nothing of the venv on PATH used to fail: gunicorn not found.
    from tests.integration.procs import free_port, wait_until
    from tests.integration.test_make_run import get

    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "WEB_PORT": str(port),
        "WEB_WORKERS": "1",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
        "UPLOAD_DIR": str(tmp_path / "uploads"),
        "PYTHONPATH": str(SITE_DIR),  # the suite's loopback-only fence (tests/loopback.py)
    }
    web = subprocess.Popen(
        [sys.executable, "-m", "imgsvc", "web"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        assert wait_until(lambda: get(f"http://127.0.0.1:{port}/healthz")[0] == 200, timeout=60), web.poll()
    finally:
        web.terminate()
        web.wait(timeout=30)
